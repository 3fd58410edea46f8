"""Training throughput of the real distillation step, its FLOP count and model-FLOPs utilisation (MFU).

    from dstrain.train.throughput import measure_train_throughput
    r = measure_train_throughput(teacher, student, micro_batch=32, seq_len=128, steps=20,
                                 ds_config=json.load(open("ds_configs/zero2_fp16.json")))
    r["tokens_per_s"], r["mfu"], r["peak_mem_gb"]

Used by `perf/bench_trainer.py` and by `benchmark --mode train`. The timed step is
`dstrain.train.step.micro_step` on a DeepSpeed engine, i.e. exactly what `distill` runs.

FLOPs and peaks come from `dstrain.flops` (the one FLOP module): MFU counts what the step computes, the
vocabulary projection at the rows it projects.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from dstrain.data.loader import row_index
from dstrain.engine import engine_ds_config
from dstrain.flops import StepFlops, peak_flops
from dstrain.models import StudentForDistill
from dstrain.runtime import init_distributed, resolve_ds_config
from dstrain.train.step import (PRETRAIN_LOSS, LossSettings, compile_encoders, compute_losses, micro_step,
                                uncompile_encoders)


def synthetic_batch(vocab_size: int, micro_batch: int, seq_len: int, device: Any, generator: torch.Generator,
                    mlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """Full-length random batch with `mlm_probability` of the positions masked (labels = original ids), with the
    row indices of the collate function (`dstrain.data.loader.row_index`) built on the host."""
    ids = torch.randint(5, vocab_size, (micro_batch, seq_len), generator=generator)
    labels = torch.full_like(ids, -100)
    sel = torch.rand(ids.shape, generator=generator) < mlm_probability
    labels[sel] = ids[sel]
    masked = ids.clone()
    masked[sel] = 4
    b = {"input_ids": masked, "attention_mask": torch.ones_like(ids), "labels": labels}
    b.update(row_index(b["attention_mask"], labels))
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}


def _sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize()


def measure_train_throughput(teacher: torch.nn.Module | None, student: torch.nn.Module, *, micro_batch: int,
                             seq_len: int, steps: int = 10, warmup_steps: int = 3, ds_config: dict | None = None,
                             precision: str = "fp32", loss: Any = None, seed: int = 0, compile: bool | str = False
                             ) -> dict[str, Any]:
    """Time `steps` optimizer steps of the real trainer step (DeepSpeed engine, grad_accum 1).

    `student` is a fresh transformers masked-LM (it is wrapped and handed to DeepSpeed); `teacher`
    a frozen module already on the device in its dtype, or None (MLM only); `compile`: torch.compile
    both encoders first (True: inductor, or a backend's name; undone afterwards, so the teacher can be
    reused). Returns tokens_per_s,
    samples_per_s, step_s, flops_per_step, mfu (None off-GPU), peak_mem_gb (None off-GPU).
    """
    import deepspeed  # lazy: deepspeed is slow to import

    dist = init_distributed()
    loss = loss or (LossSettings() if teacher is not None else PRETRAIN_LOSS)
    cfg, precision = resolve_ds_config(ds_config or {"zero_optimization": {"stage": 2}},
                                       micro_batch_size_per_gpu=micro_batch, grad_accum_steps=1,
                                       global_batch_size=micro_batch * dist.world_size, precision=precision,
                                       device_type=dist.device.type, gradient_clipping=5.0)
    engine_ds_config(cfg, precision)  # what the trainer adds to the user's file
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                            fused=dist.device.type == "cuda")
    if compile:
        compile_encoders(teacher, student, backend=compile if isinstance(compile, str) else "inductor")
    engine, _, _, _ = deepspeed.initialize(model=StudentForDistill(student), optimizer=opt, config=cfg)
    g = torch.Generator().manual_seed(seed)
    vocab = student.config.vocab_size
    batches = [synthetic_batch(vocab, micro_batch, seq_len, dist.device, g) for _ in range(4)]
    try:
        for i in range(warmup_steps):
            micro_step(engine, teacher, batches[i % 4], loss)
        _sync(dist.device)
        if dist.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(steps):
            micro_step(engine, teacher, batches[i % 4], loss)
        _sync(dist.device)
        dt = time.perf_counter() - t0
    finally:
        engine.destroy() if hasattr(engine, "destroy") else None
        uncompile_encoders(teacher, student)
    tokens = steps * micro_batch * seq_len
    fl = StepFlops(student.config, teacher.config if teacher is not None else None, loss)
    flops_step = sum(fl.micro_step(batches[i % 4]) for i in range(steps)) / steps
    peak = peak_flops(dist.device, precision)
    return {
        "precision": precision, "micro_batch": micro_batch, "seq_len": seq_len, "steps": steps, "compiled": bool(compile),
        "step_s": dt / steps, "tokens_per_s": tokens / dt, "samples_per_s": steps * micro_batch / dt,
        "flops_per_step": flops_step, "mfu": (flops_step * steps / dt / peak) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if dist.device.type == "cuda" else None,
    }


def measure_bare_torch(teacher: torch.nn.Module | None, student: torch.nn.Module, *, micro_batch: int, seq_len: int,
                       steps: int = 10, warmup_steps: int = 3, loss: Any = None, seed: int = 0,
                       device: Any = "cpu", autocast_dtype: torch.dtype | None = None, compile: bool | str = False
                       ) -> dict[str, Any]:
    """The same work without DeepSpeed: teacher forward, student forward/backward, clip, AdamW step."""
    device = torch.device(device)
    loss = loss or (LossSettings() if teacher is not None else PRETRAIN_LOSS)
    model = StudentForDistill(student).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    g = torch.Generator().manual_seed(seed)
    batches = [synthetic_batch(student.config.vocab_size, micro_batch, seq_len, device, g) for _ in range(4)]

    def one(b):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            total, _ = compute_losses(model, teacher, b, loss)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if compile:
        compile_encoders(teacher, student, backend=compile if isinstance(compile, str) else "inductor")
    try:
        for i in range(warmup_steps):
            one(batches[i % 4])
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for i in range(steps):
            one(batches[i % 4])
        _sync(device)
        dt = time.perf_counter() - t0
    finally:
        uncompile_encoders(teacher, student)
    tokens = steps * micro_batch * seq_len
    return {"step_s": dt / steps, "tokens_per_s": tokens / dt, "samples_per_s": steps * micro_batch / dt,
            "compiled": bool(compile),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
