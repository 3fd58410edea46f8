"""The engine setup `distill`/`pretrain` (dstrain/train/run.py) and `finetune` share.

    ds_cfg = engine_ds_config(resolve_ds_config(...)[0], precision)  # what dstrain adds to the user's file
    opt = adamw(model, lr, weight_decay, betas, eps)                  # no decay on biases and LayerNorm
    sched = LambdaLR(opt, linear_schedule(T, frac, ...))             # linear warmup, then linear decay to 0
    writer = tb_writer(run_dir / "tb", is_main); log_scalars(writer, {...}, step)   # rank 0 only

Then `deepspeed.initialize(model=..., optimizer=opt, lr_scheduler=sched, config=ds_cfg)`: the optimizer and
the schedule are ours, so DeepSpeed steps the schedule only on applied (non-skipped) steps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch


def engine_ds_config(ds_cfg: dict[str, Any], precision: str, skip_nonfinite_bf16: bool = True) -> dict[str, Any]:
    """The resolved DeepSpeed dict with the settings dstrain adds (in place; returned for chaining).

    No `zero_allow_untested_optimizer`: DeepSpeed 0.19 lists torch.optim.AdamW in ZERO_SUPPORTED_OPTIMIZERS
    (deepspeed/runtime/zero/utils.py), so ZeRO accepts our client optimizer without it.
    `skip_nonfinite_bf16`: in bf16, skip (not apply) a step whose gradients hold NaN/inf, as the fp16 loss
    scaler does; finetune stops on a non-finite loss instead and leaves DeepSpeed's default.
    """
    ds_cfg.setdefault("steps_per_print", 10**9)  # our own logging; DeepSpeed's would interleave
    if skip_nonfinite_bf16 and precision == "bf16":
        ds_cfg["bf16"].setdefault("check_grad_overflow", True)
    return ds_cfg


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and LayerNorm weights (the 1-D tensors), `weight_decay` on the rest."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
          fused: bool | None = None) -> torch.optim.AdamW:
    """torch AdamW over `param_groups` (fused=True: one kernel per step on CUDA; None: torch's default)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


def linear_schedule(max_steps: int, warmup_frac: float, style: str = "dstrain",
                    warmup_rounding: str = "round") -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step s (0-based), for torch's LambdaLR.

    style "dstrain": W = warmup_rounding(warmup_frac * max_steps), T = max_steps
        s < W:  (s + 1) / W              linear warmup, reaching the peak at s = W - 1
        s >= W: max(0, (T - s) / (T - W))  linear decay to 0 at max_steps
    warmup_rounding: "round" (Python's round, half to even: distill/pretrain's --warmup_frac) or "floor"
    (finetune's --warmup_ratio, as transformers' Trainer does).
    style "reference": transformers' get_linear_schedule_with_warmup(W, T) as the reference's distiller.py
    calls it: T = max_steps + 1 (its step count plus one), W = ceil(warmup_frac * T)
        s < W:  s / W                    the first step runs at lr 0 (one step behind "dstrain")
        s >= W: max(0, (T - s) / (T - W))
    """
    if style == "reference":
        t = max_steps + 1
        w = math.ceil(warmup_frac * t)
        return lambda s: s / max(1, w) if s < w else max(0.0, (t - s) / max(1, t - w))
    if warmup_rounding not in ("round", "floor"):
        raise ValueError(f"warmup_rounding must be round or floor, got {warmup_rounding!r}")
    w = int(round(warmup_frac * max_steps)) if warmup_rounding == "round" else int(warmup_frac * max_steps)

    def f(s: int) -> float:
        if s < w:
            return (s + 1) / w
        return max(0.0, (max_steps - s) / max(1, max_steps - w))

    return f


def tb_writer(log_dir: str | Path, is_main: bool, purge_step: int | None = None):
    """A TensorBoard SummaryWriter on rank 0, None elsewhere. purge_step: drop events logged at or after it
    (a resumed run rewrites the steps after its checkpoint)."""
    if not is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where a writer is made

    return SummaryWriter(str(log_dir), purge_step=purge_step)


def log_scalars(writer, scalars: dict[str, float | None], step: int) -> None:
    """add_scalar each value; None is skipped (not measured), a non-finite one is logged as NaN (a gap in the
    plot, where an inf would squash its scale). No-op without a writer (ranks other than 0)."""
    if writer is None:
        return
    for k, v in scalars.items():
        if v is not None:
            writer.add_scalar(k, v if math.isfinite(v) else float("nan"), step)
