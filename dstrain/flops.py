"""FLOP counts of BERT-style encoders and of one distillation step, GPU peaks, and model FLOP utilisation (MFU).

The one FLOP module: the trainer's `perf/mfu` (`StepFlops`, per micro-batch as it arrives), `benchmark
--mode train` and perf/ all count with these functions, so they cannot disagree.

    f = StepFlops(student.config, teacher.config, LossSettings())
    flops = f.micro_step(batch)                 # what this micro-batch computes
    mfu(flops, seconds, peak_tflops("NVIDIA H100 80GB HBM3", "bf16"))

Counting convention (the one of Kaplan et al. 2020 / the PaLM MFU appendix): a matmul of an (m x k)
by a (k x n) matrix is 2*m*k*n FLOPs; softmax, layer norm, GELU, biases, embedding look-ups and the
loss are ignored (a few percent at these sizes). Backward is twice forward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dstrain.families import ffn_size  # issue #16: GPT-2 names it n_inner


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


# Dense (no sparsity) peak tensor throughput in TFLOP/s, from the vendors' data sheets. The two tables this
# replaces disagreed (A10G 125 vs 70, V100 fp32 62.5 vs 15.7); these are the data-sheet dense figures.
# name fragment (lower case) -> {precision: TFLOP/s}; the first fragment found in the device name wins, so
# more specific fragments come first ("h100 pcie" before "h100", "a100" and "a10g" before "a10").
# fp32 on Ampere/Hopper is the TF32 tensor-core figure (torch uses TF32 only when allowed; fp32 training on
# these GPUs is not a dstrain default). V100 and T4 have no TF32: their fp32 is the CUDA-core figure.
GPU_PEAK_TFLOPS = {
    "h200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "gh200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "h100 pcie": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "h100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # SXM / HBM3
    "a100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "l40s": {"bf16": 362.05, "fp16": 362.05, "fp32": 183.0},
    "a10g": {"bf16": 70.0, "fp16": 70.0, "fp32": 35.0},  # AWS's A10G (NVIDIA's A10 data sheet: 125)
    "a10": {"bf16": 125.0, "fp16": 125.0, "fp32": 62.5},
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


def peak_flops(device: Any, precision: str) -> float | None:
    """Dense peak FLOP/s of a torch device at `precision` (fp16, bf16, fp32), or None (CPU, unknown GPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    p = peak_tflops(torch.cuda.get_device_name(device), precision)
    return None if p is None else p * 1e12


class StepFlops:
    """FLOPs of one micro-step of `dstrain.train.step.compute_losses`, from the batch it is given.

    Counts what the step computes: the encoders over the batch's padded length (B, L), the teacher's
    forward and three student forwards (backward = 2x forward), and the MLM heads (transform +
    vocabulary projection) only at the R rows the step projects: every non-pad token when the KL term
    is on every token, else the masked tokens; the teacher's head only when there is a KL term, the
    teacher's encoder only when a term needs it.
    """

    def __init__(self, student_config: Any, teacher_config: Any | None, loss: Any):
        self.student = EncoderShape.from_hf_config(student_config)
        self.teacher = EncoderShape.from_hf_config(teacher_config) if teacher_config is not None else None
        self.loss = loss

    def rows(self, n_tokens: int, n_masked: int) -> tuple[int, int]:
        """(student rows, teacher rows) projected onto the vocabulary."""
        kl = self.teacher is not None and self.loss.alpha_ce != 0.0
        r = n_tokens if kl and not self.loss.restrict_ce_to_mask else n_masked
        return r, (r if kl else 0)

    def count(self, batch: int, seq_len: int, n_tokens: int, n_masked: int) -> float:
        """FLOPs of a (batch, seq_len) micro-batch with n_tokens non-pad and n_masked masked tokens."""
        rs, rt = self.rows(n_tokens, n_masked)
        f = 3.0 * encoder_forward_flops(self.student, batch, seq_len, rs)
        if self.teacher is not None and self.loss.needs_teacher:
            f += encoder_forward_flops(self.teacher, batch, seq_len, rt)
        return f

    def micro_step(self, b: dict) -> float:
        """count() of a collated batch (input_ids (B, L), tok_index, mlm_index): shapes only, no device sync."""
        B, L = b["input_ids"].shape
        return self.count(int(B), int(L), int(b["tok_index"].shape[0]), int(b["mlm_index"].shape[0]))
