"""Training throughput of the real distillation step, its FLOP count and model-FLOPs utilisation (MFU).

    from dstrain.train.throughput import measure_train_throughput
    r = measure_train_throughput(teacher, student, micro_batch=32, seq_len=128, steps=20,
                                 ds_config=json.load(open("ds_configs/zero2_fp16.json")))
    r["tokens_per_s"], r["mfu"], r["peak_mem_gb"]

Used by `benchmarks/bench_trainer.py` and by `benchmark --mode train`. The timed step is
`dstrain.train.step.micro_step` on a DeepSpeed engine, i.e. exactly what `distill` runs.

FLOP formula (matmuls only; embeddings, norms, softmax and the loss are ignored, as in the usual
MFU convention of Megatron/PaLM). For an encoder with L layers, hidden H, feed-forward F, vocab V,
at sequence length S, one token's forward pass costs
    fwd(S) = 2 * L * (4*H^2 + 2*H*F)      QKV + output projections, feed-forward
           + 4 * L * S * H                 attention scores QK^T and the weighted sum AV
           + 2 * (H^2 + H*V)               MLM head (transform + vocabulary projection)
and training costs 3 x fwd (backward = 2 x forward). A distillation step per token is
    3 * fwd_student(S) + fwd_teacher(S)
(the teacher only runs forward). MFU = achieved FLOP/s / the device's dense peak for the precision.
"""

from __future__ import annotations

import time
from typing import Any

import torch

# Dense (no sparsity) peak FLOP/s per GPU for fp16/bf16 tensor cores; fp32 runs on TF32 at half that.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "GH200": 989.4e12, "A100": 312e12,
             "L40S": 362e12, "A10": 125e12, "V100": 125e12, "L4": 121e12}


def peak_flops(device: Any, precision: str) -> float | None:
    """Dense peak FLOP/s of `device` at `precision`, or None (CPU, unknown GPU)."""
    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, val in PEAK_BF16.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return val if precision in ("fp16", "bf16") else val / 2
    return None


def _dims(cfg: Any) -> tuple[int, int, int, int]:
    if cfg.model_type == "distilbert":
        return cfg.n_layers, cfg.dim, cfg.hidden_dim, cfg.vocab_size
    from dstrain.families import ffn_size  # issue #16: GPT-2 names it n_inner

    return cfg.num_hidden_layers, cfg.hidden_size, ffn_size(cfg), cfg.vocab_size


def forward_flops_per_token(cfg: Any, seq_len: int) -> float:
    """fwd(S) of the module docstring for a transformers config (BERT, DistilBERT, RoBERTa)."""
    L, H, F, V = _dims(cfg)
    return 2 * L * (4 * H * H + 2 * H * F) + 4 * L * seq_len * H + 2 * (H * H + H * V)


def train_flops_per_token(student_cfg: Any, teacher_cfg: Any | None, seq_len: int) -> float:
    """3 * fwd_student + fwd_teacher (teacher_cfg None: pretraining, student only)."""
    f = 3 * forward_flops_per_token(student_cfg, seq_len)
    if teacher_cfg is not None:
        f += forward_flops_per_token(teacher_cfg, seq_len)
    return f


def synthetic_batch(vocab_size: int, micro_batch: int, seq_len: int, device: Any, generator: torch.Generator,
                    mlm_probability: float = 0.15) -> dict[str, torch.Tensor]:
    """Full-length random batch with `mlm_probability` of the positions masked (labels = original ids)."""
    ids = torch.randint(5, vocab_size, (micro_batch, seq_len), generator=generator)
    labels = torch.full_like(ids, -100)
    sel = torch.rand(ids.shape, generator=generator) < mlm_probability
    labels[sel] = ids[sel]
    masked = ids.clone()
    masked[sel] = 4
    return {"input_ids": masked.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)}


def _sync(device) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize()


def measure_train_throughput(teacher: torch.nn.Module | None, student: torch.nn.Module, *, micro_batch: int,
                             seq_len: int, steps: int = 10, warmup_steps: int = 3, ds_config: dict | None = None,
                             precision: str = "fp32", loss: Any = None, seed: int = 0) -> dict[str, Any]:
    """Time `steps` optimizer steps of the real trainer step (DeepSpeed engine, grad_accum 1).

    `student` is a fresh transformers masked-LM (it is wrapped and handed to DeepSpeed); `teacher`
    a frozen module already on the device in its dtype, or None (MLM only). Returns tokens_per_s,
    samples_per_s, step_s, flops_per_token, mfu (None off-GPU), peak_mem_gb (None off-GPU).
    """
    import deepspeed

    from dstrain.models import StudentForDistill
    from dstrain.runtime import init_distributed, resolve_ds_config
    from dstrain.train.step import PRETRAIN_LOSS, LossSettings, micro_step

    dist = init_distributed()
    loss = loss or (LossSettings() if teacher is not None else PRETRAIN_LOSS)
    cfg, precision = resolve_ds_config(ds_config or {"zero_optimization": {"stage": 2}},
                                       micro_batch_size_per_gpu=micro_batch, grad_accum_steps=1,
                                       global_batch_size=micro_batch * dist.world_size, precision=precision,
                                       device_type=dist.device.type, gradient_clipping=5.0)
    cfg["zero_allow_untested_optimizer"] = True
    cfg["steps_per_print"] = 10**9
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                            fused=dist.device.type == "cuda")
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
    tokens = steps * micro_batch * seq_len
    fpt = train_flops_per_token(student.config, teacher.config if teacher is not None else None, seq_len)
    peak = peak_flops(dist.device, precision)
    return {
        "precision": precision, "micro_batch": micro_batch, "seq_len": seq_len, "steps": steps,
        "step_s": dt / steps, "tokens_per_s": tokens / dt, "samples_per_s": steps * micro_batch / dt,
        "flops_per_token": fpt, "mfu": (fpt * tokens / dt / peak) if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if dist.device.type == "cuda" else None,
    }


def measure_bare_torch(teacher: torch.nn.Module | None, student: torch.nn.Module, *, micro_batch: int, seq_len: int,
                       steps: int = 10, warmup_steps: int = 3, loss: Any = None, seed: int = 0,
                       device: Any = "cpu", autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The same work without DeepSpeed: teacher forward, student forward/backward, clip, AdamW step."""
    from dstrain.models import StudentForDistill
    from dstrain.train.step import PRETRAIN_LOSS, LossSettings, compute_losses

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

    for i in range(warmup_steps):
        one(batches[i % 4])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        one(batches[i % 4])
    _sync(device)
    dt = time.perf_counter() - t0
    tokens = steps * micro_batch * seq_len
    return {"step_s": dt / steps, "tokens_per_s": tokens / dt, "samples_per_s": steps * micro_batch / dt}
