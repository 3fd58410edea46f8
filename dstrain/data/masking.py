"""Dynamic masked-LM masking at batch time (BERT / DistilBERT recipe), vectorised.

    masker = MLMMasker(vocab_size, mask_token_id, pad_token_id, special_ids, token_counts=counts, smoothing=0.7)
    masked, labels = masker(input_ids, generator)       # (B, L) long each

Masking is drawn anew every time a batch is built, so an epoch never repeats the previous one's masks.
The random stream comes only from the `generator` argument; the loader seeds it from
(seed, epoch, rank, batch index), which makes a resumed run mask exactly like an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

IGNORE_INDEX = -100  # what torch.nn.functional.cross_entropy ignores by default


class MLMMasker:
    """Select `mlm_probability` of the real tokens of a batch; of those 80% -> [MASK], 10% -> random, 10% kept.

    Selection is exact at the batch level: n positions out of the R real (non-special, non-pad) tokens,
        count = "nonspecial" (default):  n = round(p * R)          exactly p of the tokens that can be masked
        count = "reference":             n = ceil(p * (R + S))     the reference's `prepare_batch_mlm`: S counts
                                         the non-pad specials ([CLS]/[SEP]), which are then never picked, so
                                         R + S = the sum of the sequence lengths (about 3% more at 64 tokens)
    drawn without replacement with weights w(id):
        w(id) = 1                                  (smoothing = 0, uniform)
        w(id) = max(count(id), 1) ** -smoothing    (mlm_smoothing, as in DistilBERT: rare tokens masked more)
    using exponential race keys k = E / w, E ~ Exp(1), and taking the n smallest keys (this is sampling
    without replacement proportional to w). Random replacements are drawn uniformly from the non-special
    vocabulary, so [CLS]/[PAD] never appear inside a sentence.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        pad_token_id: int,
        special_ids: Iterable[int],
        mlm_probability: float = 0.15,
        mask_frac: float = 0.8,
        random_frac: float = 0.1,
        token_counts: np.ndarray | None = None,
        smoothing: float = 0.0,
        count: str = "nonspecial",
    ):
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        if mask_frac < 0 or random_frac < 0 or mask_frac + random_frac > 1.0 + 1e-9:
            raise ValueError(f"mask_frac {mask_frac} + random_frac {random_frac} must be within [0, 1]")
        if smoothing < 0:
            raise ValueError(f"smoothing must be >= 0, got {smoothing}")
        if count not in ("nonspecial", "reference"):
            raise ValueError(f"count must be nonspecial or reference, got {count!r}")
        self.count = count
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.mlm_probability = float(mlm_probability)
        self.mask_frac = float(mask_frac)
        self.random_frac = float(random_frac)
        self.smoothing = float(smoothing)
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        ids = sorted({int(i) for i in special_ids} | {self.pad_token_id, self.mask_token_id})
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"special token id {i} is outside the vocabulary (size {self.vocab_size})")
        special[ids] = True
        self.special = special  # (V,) bool
        self.normal_ids = torch.nonzero(~special).flatten()  # ids a random replacement may take
        if smoothing > 0:
            if token_counts is None:
                raise ValueError("smoothing > 0 needs token_counts (DIR/token_counts.npy)")
            counts = torch.as_tensor(np.asarray(token_counts, dtype=np.float64))
            if counts.numel() < self.vocab_size:
                raise ValueError(f"token_counts has {counts.numel()} entries, vocabulary has {self.vocab_size}")
            w = counts[: self.vocab_size].clamp(min=1.0) ** -self.smoothing
            self.weights = w.to(torch.float64)  # (V,)
        else:
            self.weights = None

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        """input_ids (B, L) long -> (masked_input_ids (B, L) long, labels (B, L) long with -100 where not selected)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        ids = input_ids.long()
        real = ~self.special[ids]  # (B, L): candidates for masking
        flat_real = real.flatten()
        n_real = int(flat_real.sum())
        labels = torch.full_like(ids, IGNORE_INDEX)
        if n_real == 0:
            return ids.clone(), labels
        if self.count == "reference":  # ceil(p * sum of lengths), capped: only the real tokens can be picked
            n_sel = min(n_real, math.ceil(self.mlm_probability * int((ids != self.pad_token_id).sum())))
        else:
            n_sel = max(1, int(round(self.mlm_probability * n_real)))
        # Exponential race: the n smallest E/w are a weighted sample without replacement.
        e = torch.empty(flat_real.numel(), dtype=torch.float64).exponential_(1.0, generator=generator)
        if self.weights is not None:
            e = e / self.weights[ids.flatten()]
        e = e.masked_fill(~flat_real, math.inf)
        chosen = torch.topk(e, n_sel, largest=False, sorted=False).indices
        selected = torch.zeros(flat_real.numel(), dtype=torch.bool)
        selected[chosen] = True
        selected = selected.view_as(ids)

        labels[selected] = ids[selected]
        u = torch.rand(ids.shape, generator=generator)
        to_mask = selected & (u < self.mask_frac)
        to_random = selected & (u >= self.mask_frac) & (u < self.mask_frac + self.random_frac)
        out = ids.clone()
        out[to_mask] = self.mask_token_id
        n_rand = int(to_random.sum())
        if n_rand:
            pick = torch.randint(len(self.normal_ids), (n_rand,), generator=generator)
            out[to_random] = self.normal_ids[pick]
        return out, labels

    @classmethod
    def for_shards(cls, shards, mlm_probability: float = 0.15, smoothing: float = 0.0, **kw) -> "MLMMasker":
        """A masker with the vocabulary, special ids and (for smoothing) token counts of a ShardSet."""
        t = shards.tokenizer_info
        counts = shards.token_counts() if smoothing > 0 else None
        return cls(t["vocab_size"], t["mask_token_id"], t["pad_token_id"], t["all_special_ids"],
                   mlm_probability=mlm_probability, token_counts=counts, smoothing=smoothing, **kw)
