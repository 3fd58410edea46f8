"""MLMMasker: the statistics of dynamic masking over many batches, and what it must never touch."""

from __future__ import annotations

import numpy as np
import torch

from dstrain.data import IGNORE_INDEX, MLMMasker, ShardSet, build_loader

V, PAD, UNK, CLS, SEP, MASK = 1000, 0, 1, 2, 3, 4


def make_batch(gen, B=32, L=64):
    """Real tokens in [5, V), [CLS] ... [SEP], then padding of random length."""
    ids = torch.randint(5, V, (B, L), generator=gen)
    lens = torch.randint(8, L + 1, (B,), generator=gen)
    ids[:, 0] = CLS
    for b in range(B):
        ids[b, lens[b] - 1] = SEP
        ids[b, lens[b]:] = PAD
    return ids


def test_rates_15_percent_and_80_10_10_over_many_batches():
    m = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK])
    gen = torch.Generator().manual_seed(0)
    n_real = n_sel = n_mask = n_rand = n_keep = 0
    for _ in range(200):
        ids = make_batch(gen)
        out, labels = m(ids, gen)
        real = ids >= 5
        sel = labels != IGNORE_INDEX
        assert not (sel & ~real).any(), "special tokens or padding were selected"
        assert torch.equal(labels[sel], ids[sel])
        assert torch.equal(out[~sel], ids[~sel]), "an unselected position changed"
        n_real += int(real.sum())
        n_sel += int(sel.sum())
        n_mask += int((out[sel] == MASK).sum())
        n_keep += int((out[sel] == ids[sel]).sum())
        n_rand += int(((out[sel] != MASK) & (out[sel] != ids[sel])).sum())
        assert int(out[sel].min()) >= 0 and not torch.isin(out[sel & (out != MASK)], torch.tensor([PAD, CLS, SEP, UNK])).any()
    assert abs(n_sel / n_real - 0.15) < 0.002  # exact per batch up to rounding
    assert abs(n_mask / n_sel - 0.8) < 0.01
    # a random replacement equal to the original counts as kept: expect 0.1 * (1 - 1/995) and 0.1 * (1 + 1/995)
    assert abs(n_rand / n_sel - 0.1) < 0.008
    assert abs(n_keep / n_sel - 0.1) < 0.008


def test_same_generator_state_same_masks_and_fresh_masks_each_draw():
    m = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK])
    ids = make_batch(torch.Generator().manual_seed(1))
    a = m(ids, torch.Generator().manual_seed(5))
    b = m(ids, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g = torch.Generator().manual_seed(5)
    c1, c2 = m(ids, g), m(ids, g)
    assert not torch.equal(c1[1], c2[1])


def test_all_padding_or_special_batch_has_no_labels():
    m = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK])
    ids = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, SEP, PAD, PAD]])
    out, labels = m(ids, torch.Generator().manual_seed(0))
    assert torch.equal(out, ids) and (labels == IGNORE_INDEX).all()


def test_smoothing_masks_rare_tokens_more_often():
    """Frequent token 10 (count 1e6) vs rare token 11 (count 10): with smoothing 0.7 the rare one is picked
    ~ (1e5)^0.7 times more often per occurrence; without smoothing both at ~15%."""
    counts = np.full(V, 1000, np.int64)
    counts[10], counts[11] = 1_000_000, 10
    ids = torch.full((16, 64), 10)
    ids[:, 32:] = 11
    gen = torch.Generator().manual_seed(0)
    uni = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK])
    smooth = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK], token_counts=counts, smoothing=0.7)
    r_uni = [(uni(ids, gen)[1] != IGNORE_INDEX)[:, 32:].float().mean().item() for _ in range(50)]
    r_smooth = [(smooth(ids, gen)[1] != IGNORE_INDEX)[:, 32:].float().mean().item() for _ in range(50)]
    assert abs(np.mean(r_uni) - 0.15) < 0.02
    assert np.mean(r_smooth) > 0.29  # 15% of the batch = 30% of the positions, nearly all on the rare token
    # the overall rate stays 15%
    assert (smooth(ids, gen)[1] != IGNORE_INDEX).float().mean().item() == round(0.15 * 16 * 64) / (16 * 64)


def test_loader_masks_with_corpus_counts_and_never_special(tiny_shards_dir):
    """On the real shards: smoothing 0.7 with DIR/token_counts.npy moves masking toward rarer ids."""
    s = ShardSet.open(tiny_shards_dir)
    special = torch.tensor(s.tokenizer_info["all_special_ids"])
    counts = torch.as_tensor(s.token_counts())
    median = counts[counts > 0].median()
    share = {}
    for smoothing in (0.0, 0.7):
        m = MLMMasker.for_shards(s, smoothing=smoothing)
        sel_rare = sel_total = 0
        for batch in build_loader(s, micro_batch_size=16, rank=0, world_size=1, num_workers=0, seed=0, masker=m):
            sel = batch["labels"] != IGNORE_INDEX
            assert not torch.isin(batch["labels"][sel], special).any()
            assert not (sel & (batch["attention_mask"] == 0)).any()
            sel_total += int(sel.sum())
            sel_rare += int((counts[batch["labels"][sel]] < median).sum())
        share[smoothing] = sel_rare / sel_total
    assert share[0.7] > 2 * share[0.0], share


def test_reference_mask_count_is_ceil_of_all_non_pad_tokens():
    """count="reference" selects as many tokens as the reference's distiller.prepare_batch_mlm:
    `n_tgt = math.ceil(self.mlm_mask_prop * lengths.sum().item())` (lengths include [CLS] and [SEP], which
    have probability 0 and so are never picked); the default selects round(p x maskable tokens)."""
    import math

    ref = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK], count="reference")
    ours = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK])
    gen = torch.Generator().manual_seed(3)
    more = 0
    for _ in range(20):
        ids = make_batch(gen, B=8)
        lengths = (ids != PAD).sum(1)  # the reference's `lengths`: [CLS] ... [SEP], no padding
        n_tgt = math.ceil(0.15 * lengths.sum().item())
        _, labels = ref(ids, gen)
        sel = labels != IGNORE_INDEX
        assert int(sel.sum()) == n_tgt
        assert not (sel & (ids < 5)).any(), "a special token or padding was selected"
        _, labels = ours(ids, gen)
        n_ours = int((labels != IGNORE_INDEX).sum())
        assert n_ours == round(0.15 * int((ids >= 5).sum()))
        more += n_tgt > n_ours
    assert more == 20  # two specials per sequence: the reference always masks more


def test_reference_mask_count_never_exceeds_the_maskable_tokens():
    m = MLMMasker(V, MASK, PAD, [PAD, UNK, CLS, SEP, MASK], mlm_probability=1.0, count="reference")
    ids = torch.tensor([[CLS, 10, 11, SEP, PAD]])
    _, labels = m(ids, torch.Generator().manual_seed(0))
    assert torch.equal(labels, torch.tensor([[IGNORE_INDEX, 10, 11, IGNORE_INDEX, IGNORE_INDEX]]))
