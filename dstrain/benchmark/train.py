"""`benchmark --mode train`: distillation step throughput (tokens/s) and MFU for teacher/student pairs.

    python dstrain/cli.py benchmark --mode train --models bert-base,distilbert --seq_lens 128 \
        --batch_sizes 32 --precisions bf16 --out_dir runs/tput

The first model is the teacher, each further one a student. For every (student, precision, seq_len,
micro-batch) the trainer's own measurement, `dstrain.train.throughput.measure_train_throughput`, times
`steps` optimizer steps of the real distillation step (`dstrain.train.step.micro_step` on a DeepSpeed
engine, ZeRO-2, after `warmup` untimed steps), eager and with torch.compile'd encoders (`--compile
both`, the default; `eager` or `compiled` for one), side by side. MFU = FLOPs per step / step time /
peak, the FLOPs counted by `dstrain.flops.StepFlops` (the trainer's own count) on the timed batches:
the vocabulary projection where the step computes it, at every token (`--vocab_positions all`, the
default loss) or at the masked 15% only (`masked`, the loss with restrict_ce_to_mask).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dstrain import flops as F
from dstrain.families import family_of

log = logging.getLogger("dstrain.benchmark")


def _mlm_model(spec, seed: int):
    """The masked-LM version of a benchmark model spec (random weights unless it is a folder)."""
    import torch

    auto = family_of(spec.config, "--models", spec.source).auto_class()  # issue #16: GPT-2 is a causal LM
    if spec.kind == "folder":
        return auto.from_pretrained(spec.source, dtype=torch.float32)
    torch.manual_seed(seed)
    return auto.from_config(spec.config, dtype=torch.float32)


def measure_train(cfg, specs, built, device: str, precisions: list[str]) -> list[dict[str, Any]]:
    """Tokens/s and MFU of distillation steps, teacher = specs[0], students = specs[1:]."""
    import torch

    # lazy: dstrain.train imports torch and dstrain.models; `benchmark --help` loads neither
    from dstrain.train.step import LossSettings
    from dstrain.train.throughput import measure_train_throughput

    del built  # the inference encoders; training needs the masked-LM versions
    teacher_spec = specs[0]
    loss = LossSettings(restrict_ce_to_mask=cfg.vocab_positions == "masked")
    rows_out = []
    for prec in precisions:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]
        teacher = _mlm_model(teacher_spec, cfg.seed).to(device=device, dtype=dtype).eval().requires_grad_(False)
        peak = cfg.peak_tflops or (F.peak_tflops(torch.cuda.get_device_name(), prec) if device == "cuda" else None)
        for spec in specs[1:]:
            for seq in cfg.seq_lens:
                for b in cfg.batch_sizes:
                    for compiled in {"both": (False, True), "eager": (False,), "compiled": (True,)}[cfg.compile]:
                        student = _mlm_model(spec, cfg.seed + 1)
                        r = measure_train_throughput(teacher, student, micro_batch=b, seq_len=seq, steps=cfg.steps,
                                                     warmup_steps=cfg.warmup, precision=prec, loss=loss, seed=cfg.seed,
                                                     compile=compiled)
                        fl = r["flops_per_step"]
                        row = {"teacher": teacher_spec.name, "student": spec.name, "precision": r["precision"],
                               "seq_len": seq, "micro_batch_size": b, "steps": cfg.steps, "compiled": compiled,
                               "step_s": r["step_s"], "tokens_per_s": r["tokens_per_s"],
                               "samples_per_s": r["samples_per_s"], "flops_per_step": fl,
                               "achieved_tflops": fl / r["step_s"] / 1e12, "peak_tflops": peak,
                               "mfu": F.mfu(fl, r["step_s"], peak), "vocab_positions": cfg.vocab_positions,
                               "peak_mem_gb": r.get("peak_mem_gb"), "trainer_mfu": r.get("mfu"),
                               "step_impl": "dstrain.train.throughput.measure_train_throughput"}
                        log.info("%s -> %s %s seq %d batch %d %s: %.3f s/step, %.0f tokens/s, %.2f TFLOP/s",
                                 row["teacher"], row["student"], prec, seq, b, "compiled" if compiled else "eager",
                                 row["step_s"], row["tokens_per_s"], row["achieved_tflops"])
                        rows_out.append(row)
                        del student
        del teacher
    return rows_out


def format_train(result: dict[str, Any]) -> str:
    lines = [f"device {result['machine']['device']}: {result['machine']['gpu_name'] or result['machine']['cpu_model']}"
             f", {result['machine']['torch_threads']} threads", "",
             f"{'teacher':<14} {'student':<14} {'prec':<5} {'seq':>4} {'batch':>5} {'encoders':<8} {'s/step':>8} "
             f"{'tokens/s':>10} {'vs eager':>8} {'TFLOP/s':>8} {'MFU':>6}"]
    eager = {}
    for r in result["train"]:
        key = (r["student"], r["precision"], r["seq_len"], r["micro_batch_size"])
        if not r.get("compiled"):
            eager[key] = r["tokens_per_s"]
        ratio = f"{r['tokens_per_s'] / eager[key]:.2f}x" if r.get("compiled") and key in eager else "-"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{r['teacher']:<14} {r['student']:<14} {r['precision']:<5} {r['seq_len']:>4} "
                     f"{r['micro_batch_size']:>5} {'compiled' if r.get('compiled') else 'eager':<8} "
                     f"{r['step_s']:>8.3f} {r['tokens_per_s']:>10,.0f} {ratio:>8} {r['achieved_tflops']:>8.3f} {mfu:>6}")
    lines.append("")
    lines.append("FLOPs per step = teacher forward + 3 x student forward, heads at the projected rows only "
                 "(dstrain/flops.py); MFU needs a peak (--peak_tflops, or a known GPU).")
    return "\n".join(lines)


def plot_train(result: dict[str, Any], path: str | os.PathLike) -> None:
    """PNG: tokens/s (left) and parameters (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["train"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['student']}\n{r['precision']} s{r['seq_len']} b{r['micro_batch_size']}"
              f"{' c' if r.get('compiled') else ''}" for r in rows]
    ax1.bar(range(len(rows)), [r["tokens_per_s"] for r in rows])
    ax1.set_xticks(range(len(rows)), labels, fontsize=8)
    ax1.set_ylabel("distillation tokens/s")
    ax1.set_title(f"teacher {result['reference']}", fontsize=9)
    names = [m["name"] for m in result["models"]]
    ax2.bar(range(len(names)), [m["params_total"] / 1e6 for m in result["models"]])
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("millions of parameters")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
