"""FLOP counts of BERT-style encoders and of one distillation step, and model FLOP utilisation (MFU).

Pure functions, no torch: the trainer imports `distill_step_flops` to log MFU, `benchmark --mode train`
uses it to turn measured tokens/s into MFU.

Counting convention (the one of Kaplan et al. 2020 / the PaLM MFU appendix): a matmul of an (m x k)
by a (k x n) matrix is 2*m*k*n FLOPs; softmax, layer norm, GELU, biases, embedding look-ups and the
loss are ignored (a few percent at these sizes). Backward is twice forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EncoderShape:
    """What the FLOP count of a BERT-style encoder depends on."""

    num_layers: int
    hidden: int
    intermediate: int
    vocab_size: int
    mlm_transform: bool = True  # BERT's MLM head has a dense h x h + LayerNorm before the decoder

    @classmethod
    def from_hf_config(cls, config: Any) -> "EncoderShape":
        """Read the shape from a transformers config (BERT, RoBERTa, DistilBERT naming)."""
        if getattr(config, "model_type", "") == "distilbert":
            return cls(config.n_layers, config.dim, config.hidden_dim, config.vocab_size)
        from dstrain.families import ffn_size  # issue #16: GPT-2 names it n_inner

        return cls(config.num_hidden_layers, config.hidden_size, ffn_size(config), config.vocab_size)


def encoder_forward_flops(shape: EncoderShape, batch: int, seq_len: int, vocab_tokens: float = 0.0) -> float:
    """Forward FLOPs of one encoder pass over a (batch, seq_len) block, plus the vocabulary projection.

    With L layers, hidden h, feed-forward width f, s = seq_len, b = batch, V = vocab size and
    n_v = vocab_tokens (the number of positions whose MLM logits are computed):

        per layer, per token: Q,K,V,O projections 2*4*h*h + feed-forward 2*2*h*f  = 8h^2 + 4hf
        per layer, per sequence: scores Q K^T 2*s*s*h + weighted sum A V 2*s*s*h    = 4 s^2 h
        MLM head, per projected token: transform 2*h*h (if present) + decoder 2*h*V

        F = L * (b*s*(8h^2 + 4hf) + b*4*s^2*h) + n_v * (2h^2 [transform] + 2hV)

    `vocab_tokens` = 0 for a bare encoder (inference benchmarks), b*s when logits are computed at
    every position, or the number of selected positions when the trainer projects only those.
    """
    L, h, f, V = shape.num_layers, shape.hidden, shape.intermediate, shape.vocab_size
    b, s = batch, seq_len
    layers = L * (b * s * (8 * h * h + 4 * h * f) + b * 4 * s * s * h)
    head = vocab_tokens * ((2 * h * h if shape.mlm_transform else 0) + 2 * h * V)
    return float(layers + head)


def distill_step_flops(teacher: EncoderShape, student: EncoderShape, batch: int, seq_len: int,
                       teacher_vocab_tokens: float, student_vocab_tokens: float) -> float:
    """FLOPs of one distillation step on a (batch, seq_len) micro-batch.

        F_step = F_fwd(teacher) + 3 * F_fwd(student)

    The teacher is frozen: forward only. The student runs forward and backward (backward = 2x forward:
    gradients with respect to activations and to weights). Each forward counts its vocabulary
    projection over `*_vocab_tokens` positions, as `encoder_forward_flops` does; with the KL term over
    all non-pad tokens that is b*s for both, with `restrict_ce_to_mask` only the masked positions.
    """
    t = encoder_forward_flops(teacher, batch, seq_len, teacher_vocab_tokens)
    s = encoder_forward_flops(student, batch, seq_len, student_vocab_tokens)
    return t + 3.0 * s


# Dense (no sparsity) peak tensor throughput in TFLOP/s, from the vendors' data sheets.
# name fragment (lower case) -> {precision: TFLOP/s}. fp32 on Ampere/Hopper means TF32 tensor cores.
GPU_PEAK_TFLOPS = {
    "h200": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},
    "h100 pcie": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "h100": {"bf16": 989.0, "fp16": 989.0, "fp32": 494.0},  # SXM / HBM3
    "a100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "a10g": {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0},
    "l4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
    "v100": {"fp16": 125.0, "fp32": 15.7},
    "t4": {"fp16": 65.0, "fp32": 8.1},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak TFLOP/s of a GPU named like torch.cuda.get_device_name(), or None if not in the table."""
    name = device_name.lower()
    for frag, table in GPU_PEAK_TFLOPS.items():  # dict order: more specific fragments first
        if frag in name:
            return table.get(precision)
    return None


def mfu(flops_per_step: float, step_seconds: float, peak_tflops_: float | None) -> float | None:
    """Model FLOP utilisation = (flops_per_step / step_seconds) / peak. None without a peak."""
    if not peak_tflops_ or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / (peak_tflops_ * 1e12)
