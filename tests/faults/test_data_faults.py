"""Cases 7 and 8 through the trainer, 2 ranks (tests/data covers every kind of damage at the loader level):
a shard that fails its checksum, tolerant mode skipping and counting, the bad-shard threshold, more readers
than shards, and samples with out-of-vocabulary ids or no tokens. Strict mode names the shard (and sample)
and every rank exits; tolerant mode counts what it skipped in TensorBoard."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dstrain.data import ShardSet, build_loader
from tests.data.helpers import replace_sample
from tests.faults.conftest import EXIT_BOUND_S, Job, distill_args, run_job, scalars


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def shards_of_rank(shards: Path, rank: int, seed: int = 7) -> list[str]:
    """Train shards the trainer's rank reads in epoch 0 (2 ranks, no loader workers)."""
    s = ShardSet.open(shards, strict=False, max_bad_fraction=1.0)
    ld = build_loader(s, micro_batch_size=4, rank=rank, world_size=2, num_workers=0, seed=seed, masker=None)
    return [e["name"] for e in ld.plan(0).assign[rank]]


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """The tiny corpus in ~48 train shards of 20: one bad shard is 2%, under the trainer's 5% threshold."""
    from data_prep.build_shards import build_shards

    from tests.conftest import TINY_MAX_SEQ_LEN, TINY_SHARD_PLAYS

    out = tmp_path_factory.mktemp("many_shards") / "shards"
    build_shards(inputs=TINY_SHARD_PLAYS, tokenizer=str(tiny_tokenizer_dir), out_dir=str(out),
                 max_seq_len=TINY_MAX_SEQ_LEN, samples_per_shard=20, val_fraction=0.1, seed=0, num_workers=1,
                 progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _clean_failure(log: str, out: Path) -> None:
    assert log.count("dstrain: error:") >= 1, log[-3000:]  # a rank still starting may be stopped by the launcher first
    assert "Traceback" not in log
    assert not out.exists()  # refused before anything was written


def test_case7_strict_checksum_mismatch_names_the_shard(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    shards = _copy(tiny_shards_dir, tmp_path / "shards")
    p = shards / "train-000003.tar"
    data = bytearray(p.read_bytes())
    data[2048] ^= 0xFF  # same size: only the checksum can tell
    p.write_bytes(bytes(data))
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, shards, out), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert f"shard {p}: sha256 " in log and "does not match the manifest" in log and "--strict_data false" in log
    _clean_failure(log, out)


def test_case7_tolerant_skips_and_counts_in_tensorboard(tmp_path, tiny_teacher_dir, many_shards):
    """--strict_data false: a truncated shard, an out-of-vocabulary sample (in a shard rank 0 reads) and an
    empty sample (in one rank 1 reads) are skipped; the run finishes; TensorBoard counts 1 bad shard and 2
    bad samples (over all ranks)."""
    shards = _copy(many_shards, tmp_path / "shards")
    truncate(shards / "train-000011.tar")
    r0 = [n for n in shards_of_rank(shards, 0) if n != "train-000011.tar"][0]
    r1 = [n for n in shards_of_rank(shards, 1) if n != "train-000011.tar"][0]
    k0 = replace_sample(shards, r0, 3, np.array([2, 9999, 3], np.uint16))
    k1 = replace_sample(shards, r1, 5, np.zeros(0, np.uint16))
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, shards, out, max_steps=3, strict_data="false"), tmp_path / "log.txt")
    log = job.output()
    assert "skipping bad shard" in log and "train-000011.tar" in log
    assert f"{r0} sample {k0}: token id 9999 is outside the vocabulary" in log
    assert f"{r1} sample {k1}: empty sequence" in log
    sc = scalars(out)
    assert sc["data/bad_shards"][3] == 1
    assert sc["data/bad_samples"][3] == 2, sc["data/bad_samples"]


def test_case7_tolerant_aborts_past_the_threshold(tmp_path, tiny_teacher_dir, many_shards):
    shards = _copy(many_shards, tmp_path / "shards")
    n = len(list(shards.glob("train-*.tar")))
    for i in (1, 2, 3):
        truncate(shards / f"train-00000{i}.tar")
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, shards, out, strict_data="false"), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert f"3 of {n} shards are bad, more than max_bad_fraction 0.05" in log and "train-000002.tar" in log
    _clean_failure(log, out)


def test_case7_more_readers_than_shards(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, num_workers=6), tmp_path / "log.txt",
                  expect_rc=2)
    log = job.output()
    assert "10 usable shard(s), but 2 rank(s) x 6 loader worker(s) = 12 readers" in log
    assert log.count("dstrain: error:") >= 1 and "Traceback" not in log
    assert not (out / "checkpoints").exists()


def test_case8_out_of_vocabulary_id_names_shard_and_sample_and_no_rank_waits(tmp_path, tiny_teacher_dir,
                                                                               tiny_shards_dir):
    """A sample with an id >= the vocabulary, in a shard only rank 1 reads: rank 1 stops with a message naming
    the shard and the sample (never an embedding index error); rank 0, left waiting in a collective, goes too."""
    shards = _copy(tiny_shards_dir, tmp_path / "shards")
    name = shards_of_rank(shards, 1)[0]
    key = replace_sample(shards, name, 7, np.array([2, 77, 5000, 3], np.uint16))
    out = tmp_path / "run"
    job = Job(distill_args(tiny_teacher_dir, shards, out), tmp_path / "log.txt", fresh=True)  # the launcher stops rank 0
    rc = job.wait(timeout=EXIT_BOUND_S + 240)
    log = job.output()
    assert rc == 2, log[-3000:]
    assert f"dstrain: error: shard {shards / name} sample {key}: token id 5000 is outside the vocabulary" in log
    assert "IndexError" not in log and "index out of range" not in log and "device-side" not in log
    assert job.ranks_gone()
    assert not (out / "checkpoints").exists()
