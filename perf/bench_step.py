"""The distillation micro-step before and after the fused loss, on the same batches, in one run (CPU or GPU).

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python perf/bench_step.py
    python perf/bench_step.py --device cuda --size base --micro_batch 128 --dtype bf16

"before" is `dstrain.train.step.reference_losses`: the pure functions of dstrain/losses.py on materialised
(N, V) logits of both models with boolean row selections (the step as it was); "after" is
`compute_losses`: index rows from the collate function and the fused chunked vocabulary loss. Each repeat
times forward + loss + backward of both, interleaved, on the same batch (a shared, noisy machine slows both
alike); the report is the median of the per-repeat ratios. Half the sequences are padded to 3/4 of the
length, as a length-grouped batch would be.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def build(size: str, device, dtype):
    from bench_trainer import _models  # the same teacher/student sizes as the trainer benchmark

    from dstrain.models import StudentForDistill

    teacher, student = _models(size, device, dtype)
    return teacher, StudentForDistill(student).to(device=device, dtype=dtype).train(), teacher.config


def batch(vocab: int, b: int, s: int, device):
    from dstrain.data.loader import row_index
    from dstrain.train.throughput import synthetic_batch

    out = synthetic_batch(vocab, b, s, "cpu", torch.Generator().manual_seed(0))
    am = out["attention_mask"].clone()
    am[b // 2:, (3 * s) // 4:] = 0
    labels = out["labels"].masked_fill(am == 0, -100)
    out = {"input_ids": out["input_ids"], "attention_mask": am, "labels": labels, **row_index(am, labels)}
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in out.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=("small", "base"), default="small")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--micro_batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--restrict_ce_to_mask", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from dstrain.train.step import LossSettings, compute_losses, reference_losses

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    dev = torch.device(args.device)
    teacher, model, cfg = build(args.size, dev, dtype)
    b = batch(cfg.vocab_size, args.micro_batch, args.seq_len, dev)
    loss = LossSettings(restrict_ce_to_mask=args.restrict_ce_to_mask)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        total, _ = fn(model, teacher, b, loss)
        total.backward()
        sync()
        return time.perf_counter() - t0

    for fn in (reference_losses, compute_losses):  # warm-up
        timed(fn)
    rows = []
    for rep in range(args.repeats):
        before, after = timed(reference_losses), timed(compute_losses)
        tokens = int(b["tok_index"].shape[0])
        rows.append({"rep": rep, "before_s": before, "after_s": after, "before_tokens_per_s": tokens / before,
                     "after_tokens_per_s": tokens / after, "speedup": before / after})
        print(json.dumps(rows[-1]), flush=True)
    med = statistics.median(r["speedup"] for r in rows)
    print(f"\n{args.device} {args.dtype}, {args.size} teacher -> student, micro-batch {args.micro_batch} x seq "
          f"{args.seq_len} ({int(b['tok_index'].shape[0])} real tokens), {torch.get_num_threads()} threads, "
          f"median of {len(rows)}: before {statistics.median(r['before_tokens_per_s'] for r in rows):,.0f} tok/s, "
          f"after {statistics.median(r['after_tokens_per_s'] for r in rows):,.0f} tok/s, after/before {med:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
