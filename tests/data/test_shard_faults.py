"""Issue #8 items 7 and 8 at the loader level: bad shards and bad samples on real shard folders.

Strict mode fails naming the shard (and sample); tolerant mode skips, counts (loader.stats, for TensorBoard)
and still gives every rank the same number of batches; past max_bad_fraction it stops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dstrain.config import UserError
from dstrain.data import MLMMasker, ShardError, ShardSet, build_eval_loader, build_loader
from tests.data.helpers import replace_sample


@pytest.fixture
def shards(tmp_path, tiny_shards_dir) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(tiny_shards_dir, d)
    return d


def truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def flip_byte(p: Path) -> None:
    """Same size, one byte of token data changed: only the checksum can tell."""
    data = bytearray(p.read_bytes())
    data[2048] ^= 0xFF
    p.write_bytes(bytes(data))


def loader(s, rank=0, world=1, workers=0, B=8):
    return build_loader(s, micro_batch_size=B, rank=rank, world_size=world, num_workers=workers, seed=0,
                        masker=MLMMasker.for_shards(s))


@pytest.mark.parametrize("damage,why", [(truncate, "truncated"), (flip_byte, "sha256 .* does not match"),
                                        (lambda p: p.write_bytes(b""), "empty"), (lambda p: p.unlink(), "missing")])
def test_strict_open_names_the_bad_shard(shards, damage, why):
    damage(shards / "train-000003.tar")
    with pytest.raises(ShardError, match=rf"shard .*train-000003.tar: .*{why}.*strict=False") as e:
        ShardSet.open(shards)
    assert e.value.shard == "train-000003.tar"


def test_checksum_checked_while_streaming_when_not_verified_up_front(shards):
    """Huge splits are hashed as they stream (verify=False here): the error still names the shard,
    with no worker traceback, whichever worker read it."""
    flip_byte(shards / "train-000005.tar")
    s = ShardSet.open(shards, verify=False)
    with pytest.raises(ShardError, match=r"^shard .*train-000005.tar: sha256 does not match the manifest"):
        list(loader(s, workers=2))


def test_tolerant_mode_skips_counts_and_keeps_ranks_equal(shards):
    truncate(shards / "train-000002.tar")
    s = ShardSet.open(shards, strict=False, max_bad_fraction=0.2)
    assert list(s.bad_shards) == ["train-000002.tar"] and len(s.shards) == 9
    lens = []
    for rank in range(2):
        ld = loader(s, rank=rank, world=2, workers=2)
        got = list(ld)
        lens.append((len(ld), len(got)))
        assert ld.stats["bad_shards"] == 1 and ld.stats["bad_shard_names"] == ["train-000002.tar"]
    assert lens[0] == lens[1] and lens[0][0] == lens[0][1] > 0


def test_tolerant_mode_streaming_skip_refills_batches(shards):
    """A shard found bad only while streaming: skipped, counted, and its reader refills from its good
    shards so this rank still yields len(loader) batches (no rank is left waiting in a collective)."""
    flip_byte(shards / "train-000004.tar")
    s = ShardSet.open(shards, strict=False, max_bad_fraction=0.2, verify=False)
    assert not s.bad_shards
    ld = loader(s, world=1, workers=2)
    got = list(ld)
    assert len(got) == len(ld)
    assert ld.stats["bad_shards"] == 1 and ld.stats["refill_batches"] > 0


def test_tolerant_mode_aborts_past_the_threshold(shards):
    for i in (1, 4, 7):
        truncate(shards / f"train-00000{i}.tar")
    with pytest.raises(UserError, match=r"3 of 10 shards are bad, more than max_bad_fraction 0.2: train-000001.tar"):
        ShardSet.open(shards, strict=False, max_bad_fraction=0.2)
    # found while streaming: the loader stops too
    for i in (1, 4, 7):
        shutil.copy(shards / "train-000000.tar", shards / f"train-00000{i}.tar")  # right size, wrong bytes
    s = ShardSet.open(shards, strict=False, max_bad_fraction=0.2, verify=False)
    with pytest.raises(UserError, match="shards are bad, more than max_bad_fraction 0.2"):
        list(loader(s, workers=0))


def test_more_readers_than_shards_explains_the_fix(shards):
    s = ShardSet.open(shards)
    with pytest.raises(UserError, match=r"10 usable shard\(s\), but 3 rank\(s\) x 4 loader worker\(s\) = 12 readers.*"
                                        r"smaller --samples_per_shard"):
        loader(s, world=3, workers=4)


@pytest.mark.parametrize("ids,why", [(np.array([2, 77, 5000, 3], np.uint16), "token id 5000 is outside the vocabulary"),
                                     (np.zeros(0, np.uint16), "empty sequence")])
def test_bad_sample_names_shard_and_key(shards, ids, why):
    key = replace_sample(shards, "train-000006.tar", 7, ids)
    s = ShardSet.open(shards)
    with pytest.raises(ShardError, match=rf"shard .*train-000006.tar sample {key}: {why}"):
        list(loader(s, workers=2))
    # tolerant: the sample is skipped and counted, the rest of the shard is used
    s = ShardSet.open(shards, strict=False)
    ld = loader(s, workers=0)
    assert len(list(ld)) == len(ld)
    assert ld.stats["bad_samples"] == 1 and ld.stats["bad_shards"] == 0


def test_bad_val_sample_fails_eval_loader_too(shards):
    key = replace_sample(shards, "val-000000.tar", 0, np.array([2, 65000, 3], np.uint16))
    v = ShardSet.open(shards, split="val")
    with pytest.raises(ShardError, match=rf"val-000000.tar sample {key}: token id 65000"):
        list(build_eval_loader(v, micro_batch_size=4, rank=0, world_size=1, masker=MLMMasker.for_shards(v)))
