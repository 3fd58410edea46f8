"""Causal-LM batches (GPT-2): every position is labelled with the next token; nothing is masked.

    labeler = NextTokenLabels()
    ids, labels = labeler(input_ids)          # what MLMMasker returns, so the loader and trainer are shared

Shards built with `--packing blocks` (data_prep/causal.py) hold fixed-length blocks of contiguous text,
so batches have no padding. The trainer's one step then computes, with the same row selection as the
masked path: KL(T) and cosine at every position, and the LM cross-entropy at the positions that have a
next token inside the block (`next_token_labels` here, `clm_ce` in dstrain/losses.py).
"""

from __future__ import annotations

import torch

from dstrain.data.masking import IGNORE_INDEX, MLMMasker


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets of a causal LM.

    input_ids: (B, L); attention_mask: (B, L) 1 for real tokens (None: all real). Returns labels (B, L):
        labels[b, t] = input_ids[b, t + 1]  if t + 1 < L and positions t and t + 1 are real,
                       IGNORE_INDEX         otherwise (the last position of a block, padding).
    So cross-entropy of logits[b, t] against labels[b, t] is the usual shifted CLM loss
    (transformers' `labels=input_ids`, which shifts inside the model).
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        real = attention_mask.bool()
        keep = torch.zeros_like(real)
        keep[:, :-1] = real[:, :-1] & real[:, 1:]
        labels = labels.masked_fill(~keep, IGNORE_INDEX)
    return labels


class NextTokenLabels:
    """Drop-in for MLMMasker on causal shards: (input_ids unchanged, next_token_labels); no randomness."""

    def __call__(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        return input_ids, next_token_labels(input_ids)


def is_causal(shards) -> bool:
    """Whether a ShardSet holds causal-LM blocks (manifest "packing": "blocks")."""
    return shards.manifest.get("packing") == "blocks"


def batch_labeler(shards, mlm_probability: float, smoothing: float, **mask_kw):
    """What labels the shards' batches: NextTokenLabels for block shards, else an MLMMasker (mask_kw: its options)."""
    if is_causal(shards):
        return NextTokenLabels()
    return MLMMasker.for_shards(shards, mlm_probability=mlm_probability, smoothing=smoothing, **mask_kw)
