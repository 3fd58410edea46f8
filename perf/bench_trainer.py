"""Trainer step throughput: dstrain's DeepSpeed step vs a bare PyTorch loop doing the same work.

    # CPU (default): small random BERT teacher -> DistilBERT student, fp32; goal: trainer overhead <= 10%
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=2 .venv/bin/python perf/bench_trainer.py
    # GPU (H100): BERT-base-sized random teacher -> 6-layer student, seq 128 and 512, fp16 and bf16:
    python perf/bench_trainer.py --device cuda --out bench_trainer_cuda.json

Both sides run `dstrain.train.step.compute_losses` on the same synthetic batches: teacher forward under
no_grad, student forward, the triple loss, backward, gradient clipping at 5.0, an AdamW step. The trainer
side goes through `dstrain.train.throughput.measure_train_throughput` (a DeepSpeed engine, ZeRO-2,
exactly the `distill` step); the bare side is plain PyTorch (`measure_bare_torch`, autocast for fp16/bf16).
On GPU it also reports MFU (FLOPs from dstrain/flops.py), peak memory and the largest
micro-batch that fits (doubling until out of memory). Prints one JSON line per measurement and a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _models(size: str, device, teacher_dtype):
    from transformers import BertConfig, BertForMaskedLM

    from dstrain.models import build_student

    if size == "base":  # BERT-base: 12 x 768, 12 heads, FFN 3072, vocab 30522
        cfg = BertConfig(vocab_size=30522, max_position_embeddings=512)
    else:  # CPU-sized: 4 x 256, vocab 8000
        cfg = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=512)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(cfg)
    student, _ = build_student(teacher, cfg, None, "even", "teacher", 0)
    teacher = teacher.to(device=device, dtype=teacher_dtype).eval().requires_grad_(False)
    return teacher, student


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_cpu(args) -> list[dict]:
    from dstrain.train.throughput import measure_bare_torch, measure_train_throughput

    ds = json.loads((Path(__file__).resolve().parent.parent / "ds_configs" / "cpu_zero2.json").read_text())
    rows = []
    for rep in range(args.repeats):
        # interleave the two sides so a busy machine slows both alike
        teacher, student = _models("small", "cpu", torch.float32)
        bare = measure_bare_torch(teacher, student, micro_batch=args.micro_batch, seq_len=args.seq_len,
                                  steps=args.steps, warmup_steps=2)
        teacher, student = _models("small", "cpu", torch.float32)
        ours = measure_train_throughput(teacher, student, micro_batch=args.micro_batch, seq_len=args.seq_len,
                                        steps=args.steps, warmup_steps=2, ds_config=ds, precision="fp32")
        row = {"device": "cpu", "rep": rep, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
               "bare_tokens_per_s": bare["tokens_per_s"], "trainer_tokens_per_s": ours["tokens_per_s"],
               "overhead_pct": 100 * (bare["tokens_per_s"] / ours["tokens_per_s"] - 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _fits(teacher, student_fn, mb, seq, ds, precision) -> dict | None:
    from dstrain.train.throughput import measure_train_throughput

    try:
        return measure_train_throughput(teacher, student_fn(), micro_batch=mb, seq_len=seq, steps=2, warmup_steps=1,
                                        ds_config=ds, precision=precision)
    except torch.OutOfMemoryError:
        return None
    finally:
        _free()


def bench_cuda(args) -> list[dict]:
    from dstrain.train.throughput import measure_bare_torch, measure_train_throughput

    ds = json.loads((Path(__file__).resolve().parent.parent / "ds_configs" / "zero2_fp16.json").read_text())
    rows = []
    for precision in args.precisions.split(","):
        dt = torch.float16 if precision == "fp16" else torch.bfloat16
        for seq in [int(s) for s in args.seq_lens.split(",")]:
            mb = args.micro_batch or (128 if seq <= 128 else 32)
            teacher, student = _models("base", "cuda", dt)
            r = measure_train_throughput(teacher, student, micro_batch=mb, seq_len=seq, steps=args.steps,
                                         warmup_steps=3, ds_config=ds, precision=precision)
            del student
            _free()
            _, student = _models("base", "cuda", dt)
            bare = measure_bare_torch(teacher, student.cuda(), micro_batch=mb, seq_len=seq, steps=args.steps,
                                      warmup_steps=3, device="cuda", autocast_dtype=dt)
            del student
            _free()
            largest = None
            if args.find_max:
                cand = mb
                while cand <= args.max_search:
                    if _fits(teacher, lambda: _models("base", "cuda", dt)[1], cand, seq, ds, precision) is None:
                        break
                    largest = cand
                    cand *= 2
            row = {"device": torch.cuda.get_device_name(0), "precision": r["precision"], "seq_len": seq,
                   "micro_batch": mb, "tokens_per_s": r["tokens_per_s"], "samples_per_s": r["samples_per_s"],
                   "mfu": r["mfu"], "peak_mem_gb": r["peak_mem_gb"], "bare_tokens_per_s": bare["tokens_per_s"],
                   "overhead_pct": 100 * (bare["tokens_per_s"] / r["tokens_per_s"] - 1),
                   "largest_micro_batch_pow2": largest}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del teacher
            _free()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--micro_batch", type=int, default=0, help="sequences per step (default: 8 CPU; 128/32 GPU)")
    p.add_argument("--seq_len", type=int, default=128, help="CPU sequence length")
    p.add_argument("--seq_lens", default="128,512", help="GPU sequence lengths")
    p.add_argument("--precisions", default="fp16,bf16", help="GPU precisions")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=3, help="CPU: interleaved repeats")
    p.add_argument("--find_max", action="store_true", help="GPU: also search the largest micro-batch (power of 2)")
    p.add_argument("--max_search", type=int, default=1024)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if args.device == "cuda" else "cpu")
    t0 = time.time()
    if args.device == "cpu":
        args.micro_batch = args.micro_batch or 8
        rows = bench_cpu(args)
        bare = sorted(r["bare_tokens_per_s"] for r in rows)[len(rows) // 2]
        ours = sorted(r["trainer_tokens_per_s"] for r in rows)[len(rows) // 2]
        print(f"\nCPU, seq {args.seq_len}, micro-batch {args.micro_batch}, {torch.get_num_threads()} threads, "
              f"median of {len(rows)}: bare PyTorch {bare:.0f} tok/s, dstrain trainer {ours:.0f} tok/s, "
              f"overhead {100 * (bare / ours - 1):.1f}% (goal <= 10%)")
    else:
        rows = bench_cuda(args)
        print("\n| precision | seq | micro | tokens/s | MFU | peak GB | bare tokens/s | overhead | max micro |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['precision']} | {r['seq_len']} | {r['micro_batch']} | {r['tokens_per_s']:.0f} | "
                  f"{(r['mfu'] or 0) * 100:.1f}% | {r['peak_mem_gb']:.1f} | {r['bare_tokens_per_s']:.0f} | "
                  f"{r['overhead_pct']:.1f}% | {r['largest_micro_batch_pow2']} |")
    print(f"({time.time() - t0:.0f}s)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
