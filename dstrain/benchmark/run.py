"""`benchmark`: how much smaller and faster one model is than another, measured alternately.

    python dstrain/cli.py benchmark --models bert-base,distilbert --out_dir runs/bench     # no files needed
    python dstrain/cli.py benchmark --models bert-base,distilbert --preset paper --out_dir runs/paper
    python dstrain/cli.py benchmark --models runs/d1/student,TEACHER_DIR --device cuda --precisions fp16,bf16
    python dstrain/cli.py benchmark --mode train --models bert-base,distilbert --out_dir runs/tput

The first model is the reference: every speedup is t(reference) / t(model). Writes DIR/benchmark.json
(every figure and the machine's description) and DIR/benchmark.png, and prints the table.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

from dstrain.benchmark import inputs as I
from dstrain.benchmark import models as M
from dstrain.benchmark.models import quantize_int8
from dstrain.benchmark.report import format_tables, machine_description, plot
from dstrain.benchmark.train import format_train, measure_train, plot_train
from dstrain.config import UserError, atomic_write_json, build_config, config_to_dict, opt, require
from dstrain.outputs import check_not_inputs
from dstrain.runtime import device_type

log = logging.getLogger("dstrain.benchmark")

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# The paper's setting (DistilBERT section 4, "inference time of a full pass of GLUE task STS-B on CPU,
# batch size of 1"). Applied below the command-line flags.
PAPER_PRESET = {"device": "cpu", "precisions": ["fp32"], "repeats": 3, "warmup": 1}


@dataclasses.dataclass
class BenchmarkConfig:
    """Settings of `benchmark`."""

    models: list[str] = opt(factory=lambda: ["bert-base", "distilbert"],
                            help="comma list of HF model folders, config JSONs or built-ins (bert-base, distilbert, "
                                 "bert-large); the first is the reference for speedups")
    out_dir: str = opt("", help="folder for benchmark.json and benchmark.png (required)")
    mode: str = opt("inference", help="inference | train (distillation step tokens/s and MFU: first model "
                                       "teaches, the others are students)")
    preset: str = opt("", help="'paper': CPU, batch 1, fp32, passes over STS-B-like sentence pairs")
    device: str = opt("auto", help="auto | cpu | cuda")
    threads: int = opt(0, help="CPU threads for torch (0: torch's default)")
    seq_lens: list[int] = opt(factory=lambda: [128, 512], help="sequence lengths of the latency/throughput grid")
    batch_sizes: list[int] = opt(factory=lambda: [1, 8],
                                 help="batch sizes: 1 gives latency, larger ones throughput")
    precisions: list[str] = opt(factory=lambda: ["auto"],
                                help="fp32, fp16, bf16, int8 (CPU dynamic quantisation); auto: fp32 on CPU, "
                                     "fp32,fp16,bf16 on GPU")
    warmup: int = opt(2, help="untimed rounds before timing")
    repeats: int = opt(10, help="timed rounds; each round calls every model once per input")
    tokenizer: str = opt("auto", help="tokenizer folder for the STS-B-like text; auto: the first model folder "
                                      "that has one; none: random ids")
    num_pairs: int = opt(200, help="STS-B-like sentence pairs in one pass (--preset paper)")
    max_pair_len: int = opt(128, help="truncate sentence pairs to this many tokens")
    memory: bool = opt(True, help="measure peak memory (one extra call per model and shape)")
    seed: int = opt(0, help="seed of the random weights and input ids")
    # --mode train
    steps: int = opt(5, help="--mode train: timed distillation steps per model pair")
    vocab_positions: str = opt("all", help="--mode train: where MLM logits are computed, all | masked "
                                          "(counted in the FLOPs as configured)")
    peak_tflops: float = opt(0.0, help="--mode train: peak TFLOP/s for MFU (0: from the GPU's name; none on CPU)")
    compile: str = opt("both", help="--mode train: encoders eager, compiled (torch.compile) or both side by side")

    def validate(self) -> None:
        require(bool(self.out_dir), "out_dir", "required: the folder for benchmark.json and benchmark.png")
        require(len(self.models) >= 1, "models", "give at least one model")
        require(len(set(self.models)) == len(self.models), "models", f"listed twice: {self.models}")
        require(self.mode in ("inference", "train"), "mode", f"must be inference or train, got {self.mode!r}")
        require(self.preset in ("", "paper"), "preset", f"the only preset is 'paper', got {self.preset!r}")
        require(self.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {self.device!r}")
        require(self.threads >= 0, "threads", "must be >= 0")
        require(len(self.seq_lens) > 0 and all(s >= 2 for s in self.seq_lens), "seq_lens",
                "give sequence lengths >= 2 (room for [CLS] and [SEP])")
        require(len(self.batch_sizes) > 0 and all(b >= 1 for b in self.batch_sizes), "batch_sizes",
                "give batch sizes >= 1")
        bad = [p for p in self.precisions if p not in PRECISIONS + ("auto",)]
        require(not bad, "precisions", f"unknown {bad}; choose from auto, {', '.join(PRECISIONS)}")
        require(self.warmup >= 0, "warmup", "must be >= 0")
        require(self.repeats >= 1, "repeats", "must be >= 1")
        require(self.num_pairs >= 1, "num_pairs", "must be >= 1")
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.vocab_positions in ("all", "masked"), "vocab_positions", "must be all or masked")
        require(self.peak_tflops >= 0, "peak_tflops", "must be >= 0")
        require(self.compile in ("both", "eager", "compiled"), "compile", "must be both, eager or compiled")
        require(self.mode != "train" or "int8" not in self.precisions, "precisions",
                "int8 is an inference-only precision; --mode train takes fp32, fp16 (GPU) or bf16")
        require(self.mode != "train" or len(self.models) >= 2, "models",
                "--mode train needs a teacher and at least one student: --models TEACHER,STUDENT")


def benchmark(**kwargs):
    """Measure size, latency and throughput of models (first = reference); write DIR/benchmark.json + .png."""
    if kwargs.get("preset") == "paper":
        kwargs = {**PAPER_PRESET, **kwargs}
    cfg = build_config(BenchmarkConfig, kwargs, command="benchmark")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    result = run(cfg)
    print(result.pop("_table"))
    return None


benchmark.config_class = BenchmarkConfig


def _resolve_device(cfg: BenchmarkConfig) -> str:
    import torch

    if cfg.device == "auto":
        return device_type()  # DS_ACCELERATOR=cpu on a GPU host: cpu, as the engine would
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch; use --device cpu "
                        "(or check CUDA_VISIBLE_DEVICES and the driver)")
    return cfg.device


def _resolve_precisions(cfg: BenchmarkConfig, device: str) -> list[str]:
    import torch

    if cfg.precisions == ["auto"]:
        if device == "cpu":
            return ["fp32"]
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    out = []
    for p in cfg.precisions:
        if p == "auto":
            continue
        if p == "fp16" and device == "cpu":
            raise UserError("--precisions fp16: not benchmarked on CPU (no fast fp16 kernels there); "
                            "use fp32, bf16 or int8 on CPU, or --device cuda")
        if p == "int8" and device == "cuda":
            raise UserError("--precisions int8: dynamic int8 quantisation runs on CPU only; use --device cpu")
        if p == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("--precisions bf16: this GPU has no bf16; use fp16")
        if p not in out:
            out.append(p)
    return out


def _prepare_out_dir(out_dir: str) -> Path:
    p = Path(out_dir)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out_dir {p}: exists and is not a folder; choose another path")
    return p


def _load_tokenizer(cfg: BenchmarkConfig, specs) -> tuple[Any, str | None]:
    if cfg.tokenizer == "none":
        return None, None
    path = cfg.tokenizer if cfg.tokenizer != "auto" else next((s.tokenizer_dir for s in specs if s.tokenizer_dir),
                                                             None)
    if path is None:
        return None, None
    if not Path(path).is_dir():
        raise UserError(f"--tokenizer {path}: no such folder; pass a tokenizer folder, auto or none")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise UserError(f"--tokenizer {path}: cannot load a tokenizer from it ({e})") from None
    min_vocab = min(s.config.vocab_size for s in specs)
    if len(tok) > min_vocab:
        raise UserError(f"--tokenizer {path}: has {len(tok)} tokens but a model has a vocabulary of {min_vocab}; "
                        f"pass a tokenizer that fits every model, or --tokenizer none for random ids")
    return tok, path


def run(cfg: BenchmarkConfig) -> dict[str, Any]:
    """Resolve and check everything, then measure; returns the result dict (also written to disk)."""
    import torch


    # Everything a user can get wrong is checked before any model is built or any file written.
    out_dir = _prepare_out_dir(cfg.out_dir)
    device = _resolve_device(cfg)
    precisions = _resolve_precisions(cfg, device)
    specs = [M.resolve_spec(s) for s in cfg.models]
    # results never land in (or around) a model folder
    check_not_inputs(out_dir, {"models": [s.source for s in specs if s.kind == "folder"],
                               "tokenizer": cfg.tokenizer if cfg.tokenizer not in ("auto", "none") else None})
    names = [s.name for s in specs]
    if len(set(names)) != len(names):  # two folders both called "student": label them by path
        for s in specs:
            s.name = s.source
    if cfg.preset != "paper":  # the grid and --mode train run at --seq_lens
        for s in specs:
            too_long = [n for n in cfg.seq_lens if n > M.max_positions(s.config)]
            if too_long:
                raise UserError(f"--seq_lens {too_long}: longer than {s.name}'s max_position_embeddings "
                                f"({M.max_positions(s.config)}); use shorter sequences")
    tokenizer, tokenizer_dir = _load_tokenizer(cfg, specs)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    result: dict[str, Any] = {
        "format": "dstrain-benchmark-1",
        "command": " ".join(sys.argv),
        "config": config_to_dict(cfg),
        "machine": machine_description(device),
        "device": device,
        "precisions": precisions,
        "tokenizer": tokenizer_dir,
        "reference": specs[0].name,
        "attention": None,
        "models": [],
    }
    t0 = time.time()
    built = []
    for s in specs:
        model = M.build(s, seed=cfg.seed)
        info = {"name": s.name, "source": s.source, "kind": s.kind, "model_type": s.config.model_type,
                "num_layers": int(getattr(s.config, "num_hidden_layers", getattr(s.config, "n_layers", 0))),
                "hidden": int(getattr(s.config, "hidden_size", getattr(s.config, "dim", 0))),
                "vocab_size": M.vocab_size(s.config), **M.param_counts(model),
                "disk_bytes": M.disk_bytes(s, model), "weights_in_memory_bytes": M.weights_in_memory_bytes(model)}
        result["attention"] = getattr(model.config, "_attn_implementation", None)
        result["models"].append(info)
        built.append(model)
        log.info("%s: %.1fM parameters (%.1fM without embeddings), %.1f MB on disk", s.name,
                 info["params_total"] / 1e6, info["params_non_embedding"] / 1e6, info["disk_bytes"] / 1e6)

    if cfg.mode == "train":
        result["train"] = measure_train(cfg, specs, built, device, precisions)
    else:
        # Every (precision, model) variant is timed in one alternating loop, so fp32-vs-int8 ratios hold too.
        variants = [(prec, i, _variant(m, prec, device)) for prec in precisions for i, m in enumerate(built)]
        for prec, i, v in variants:
            if prec == "int8":
                result["models"][i]["int8_bytes"] = M.serialized_bytes(v)
        if cfg.preset == "paper":
            result["inference"], result["sts_pass"] = [], _sts_pass(cfg, specs, variants, device, tokenizer)
        else:
            result["inference"], result["sts_pass"] = _grid(cfg, specs, variants, device), []
        del variants
        gc.collect()
    result["wall_s"] = time.time() - t0

    table = format_tables(result) if cfg.mode == "inference" else _train_table(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "benchmark.json", result)
    if cfg.mode == "inference":
        plot(result, out_dir / "benchmark.png")
    else:
        plot_train(result, out_dir / "benchmark.png")
    result["_table"] = table + f"\nwrote {out_dir / 'benchmark.json'} and {out_dir / 'benchmark.png'}"
    return result


def _variant(model, precision: str, device: str):
    """The model as measured at `precision` on `device` (a converted copy; fp32 on CPU is the model itself)."""
    import copy

    import torch

    if precision == "int8":
        return quantize_int8(copy.deepcopy(model))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device == "cpu" and dtype == torch.float32:
        return model
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def _forward(model, batch: dict):
    import torch

    with torch.inference_mode():
        return model(**batch)


def _speedups(specs, variants, times, k: int) -> dict[str, float]:
    """Paired speedups of variant k: against the reference model at the same precision, and against the
    reference at the first precision (e.g. an int8 student against the fp32 teacher)."""
    from dstrain.benchmark.measure import paired_ratio  # lazy: imports numpy (`benchmark --help` stays fast)

    prec = variants[k][0]
    same = next(j for j, (p, i, _) in enumerate(variants) if p == prec and i == 0)
    return {"speedup_vs_ref": paired_ratio(times[same], times[k]),
            f"speedup_vs_ref_{variants[0][0]}": paired_ratio(times[0], times[k])}


def _grid(cfg: BenchmarkConfig, specs, variants, device: str) -> list[dict]:
    """Latency and throughput over seq_lens x batch_sizes, all variants alternating call by call.

    variants: [(precision, model index, module)]. One row per (seq_len, batch, precision, model).
    """
    from dstrain.benchmark.measure import peak_memory, percentiles, time_interleaved  # lazy: numpy, as above

    vocab = min(s.config.vocab_size for s in specs)
    specials = set().union(*(I.special_ids(s.config) for s in specs))
    rows = []
    for seq in cfg.seq_lens:
        for b in cfg.batch_sizes:
            batch = {k: v.to(device) for k, v in
                     I.random_ids(b, seq, vocab, specials, seed=cfg.seed + seq * 1000 + b).items()}
            calls = [lambda i, m=m: _forward(m, batch) for _, _, m in variants]
            log.info("seq %d batch %d: %d warm-up + %d timed calls per model and precision", seq, b, cfg.warmup,
                     cfg.repeats)
            times = time_interleaved(calls, 1, cfg.warmup, cfg.repeats, device)
            for k, ((prec, i, m), t) in enumerate(zip(variants, times)):
                p = percentiles(t)
                mem = peak_memory(lambda: _forward(m, batch), device) if cfg.memory else \
                    {"peak_mem_bytes": None, "peak_mem_delta_bytes": None}
                rows.append({"model": specs[i].name, "precision": prec, "seq_len": seq, "batch_size": b, **p,
                             "tokens_per_s": b * seq / (p["p50_ms"] / 1e3),
                             "sequences_per_s": b / (p["p50_ms"] / 1e3),
                             **_speedups(specs, variants, times, k), **mem,
                             "times_ms": [round(x * 1e3, 4) for x in t.ravel()]})
    # table order: precision, seq, batch, model
    order = {p: n for n, p in enumerate(dict.fromkeys(v[0] for v in variants))}
    return sorted(rows, key=lambda r: (order[r["precision"]], r["seq_len"], r["batch_size"]))


def _sts_pass(cfg: BenchmarkConfig, specs, variants, device: str, tokenizer) -> list[dict]:
    """The paper's measurement: batch 1 over every STS-B-like pair, the variants alternating pair by pair."""
    import numpy as np

    from dstrain.benchmark.measure import peak_memory, percentiles, time_interleaved  # lazy: numpy

    vocab = min(s.config.vocab_size for s in specs)
    specials = set().union(*(I.special_ids(s.config, tokenizer) for s in specs))
    pairs = I.sts_pairs(cfg.num_pairs, seed=cfg.seed)
    max_len = min([cfg.max_pair_len] + [s.config.max_position_embeddings for s in specs])
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in I.pair_batches(pairs, vocab, specials, tokenizer, max_len, seed=cfg.seed)]
    lens = [int(b["input_ids"].shape[1]) for b in batches]
    calls = [lambda i, m=m: _forward(m, batches[i]) for _, _, m in variants]
    log.info("STS-B-like pass: %d pairs, %d warm-up + %d timed passes per model and precision", len(batches),
             cfg.warmup, cfg.repeats)
    times = time_interleaved(calls, len(batches), cfg.warmup, cfg.repeats, device)
    longest = int(np.argmax(lens))
    rows = []
    for k, ((prec, i, m), t) in enumerate(zip(variants, times)):
        ref = next(j for j, (p, i0, _) in enumerate(variants) if p == prec and i0 == 0)
        mem = peak_memory(lambda: _forward(m, batches[longest]), device) if cfg.memory else \
            {"peak_mem_bytes": None, "peak_mem_delta_bytes": None}
        pass_s = t.sum(axis=1)  # one total per timed pass
        rows.append({"model": specs[i].name, "precision": prec, "pairs": len(batches),
                     "tokenized": tokenizer is not None, "mean_tokens": float(np.mean(lens)), "max_tokens": max(lens),
                     "passes": cfg.repeats, "pass_s": float(np.median(pass_s)), "pass_s_all": [float(x) for x in pass_s],
                     **percentiles(t), **_speedups(specs, variants, times, k),
                     "pass_speedup_vs_ref": float(np.median(times[ref].sum(axis=1)) / np.median(pass_s)), **mem})
    return rows


def _train_table(result: dict[str, Any]) -> str:
    return format_train(result)
