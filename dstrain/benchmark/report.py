"""What a benchmark run shows and keeps: the machine's description, the terminal table, the PNG plot."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any


def machine_description(device: str) -> dict[str, Any]:
    """CPU model, cores, threads, library versions and the GPU, so figures can be compared across hosts."""
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    d = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "gpu_name": None,
        "cuda": None,
    }
    if device == "cuda":
        d["gpu_name"] = torch.cuda.get_device_name()
        d["cuda"] = torch.version.cuda
        d["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return d


def _mb(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:,.1f}"


def format_tables(result: dict[str, Any]) -> str:
    """Plain-text tables: sizes, then one block per (precision, seq_len, batch) and the STS-B pass."""
    ref = result["reference"]
    lines = []
    m = result["machine"]
    lines.append(f"device {m['device']}: {m['gpu_name'] or m['cpu_model']}, {m['torch_threads']} threads, "
                 f"torch {m['torch']}")
    lines.append("")
    lines.append(f"{'model':<16} {'layers':>6} {'params M':>9} {'non-emb M':>9} {'disk MB':>9} {'size x':>7}")
    ref_params = next(x["params_total"] for x in result["models"] if x["name"] == ref)
    for x in result["models"]:
        lines.append(f"{x['name']:<16} {x['num_layers']:>6} {x['params_total'] / 1e6:>9.1f} "
                     f"{x['params_non_embedding'] / 1e6:>9.1f} {_mb(x['disk_bytes']):>9} "
                     f"{x['params_total'] / ref_params:>7.2f}")
    p0 = result["precisions"][0]
    cross = len(result["precisions"]) > 1  # also show each variant against the reference at the first precision
    if result.get("inference"):
        lines.append("")
        lines.append(f"{'precision':<9} {'seq':>4} {'batch':>5} {'model':<16} {'p50 ms':>9} {'p90 ms':>9} "
                     f"{'p99 ms':>9} {'tokens/s':>10} {'speedup':>8} {'peak MB':>8}"
                     + (f" {'vs ' + p0 + ' ref':>12}" if cross else ""))
        for r in result["inference"]:
            lines.append(f"{r['precision']:<9} {r['seq_len']:>4} {r['batch_size']:>5} {r['model']:<16} "
                         f"{r['p50_ms']:>9.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['tokens_per_s']:>10,.0f} "
                         f"{r['speedup_vs_ref']:>7.2f}x {_mb(r['peak_mem_delta_bytes']):>8}"
                         + (f" {r['speedup_vs_ref_' + p0]:>11.2f}x" if cross else ""))
    if result.get("sts_pass"):
        lines.append("")
        lines.append(f"STS-B-like pass, batch 1 ({result['sts_pass'][0]['pairs']} pairs, "
                     f"{result['sts_pass'][0]['mean_tokens']:.1f} tokens each on average, "
                     f"{'real tokenizer' if result['sts_pass'][0]['tokenized'] else 'random ids'}):")
        lines.append(f"{'precision':<9} {'model':<16} {'pass s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                     f"{'pass x':>7} {'faster %':>8} {'per-pair x':>10}" + (f" {'vs ' + p0 + ' ref':>12}" if cross else ""))
        for r in result["sts_pass"]:
            lines.append(f"{r['precision']:<9} {r['model']:<16} {r['pass_s']:>8.2f} {r['p50_ms']:>8.2f} "
                         f"{r['p90_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['pass_speedup_vs_ref']:>6.2f}x "
                         f"{(r['pass_speedup_vs_ref'] - 1) * 100:>7.0f}% {r['speedup_vs_ref']:>9.2f}x"
                         + (f" {r['speedup_vs_ref_' + p0]:>11.2f}x" if cross else ""))
        lines.append("pass x = median pass time of the reference / of the model (the paper's figure: 1.63x, "
                     "\"60% faster\"); per-pair x = median of the per-pair ratios.")
    lines.append("")
    lines.append(f"speedup = median over calls of t({ref}) / t(model) at the same precision"
                 + (f"; vs {p0} ref: against {ref} in {p0}" if cross else "")
                 + ". All models and precisions are timed alternately, call by call.")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """PNG: latency (left) and size (right) side by side, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [x["name"] for x in result["models"]]
    n_groups = len(result.get("inference") or []) // max(len(names), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(12, 6 + 0.5 * n_groups), 4.5))
    width = 0.8 / max(len(names), 1)
    if result.get("sts_pass"):
        groups = [(r["precision"], r) for r in result["sts_pass"]]
        labels = sorted({p for p, _ in groups}, key=[p for p, _ in groups].index)
        for k, name in enumerate(names):
            ys = [next(r["p50_ms"] for p, r in groups if p == lab and r["model"] == name) for lab in labels]
            ax1.bar([i + k * width for i in range(len(labels))], ys, width, label=name)
        ax1.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(labels))],
                       [f"STS-B-like pair\n{lab}, batch 1" for lab in labels])
    else:
        rows = result["inference"]
        keys = []
        for r in rows:
            k = (r["precision"], r["seq_len"], r["batch_size"])
            if k not in keys:
                keys.append(k)
        for k, name in enumerate(names):
            ys = [next(r["p50_ms"] for r in rows if (r["precision"], r["seq_len"], r["batch_size"]) == key
                       and r["model"] == name) for key in keys]
            ax1.bar([i + k * width for i in range(len(keys))], ys, width, label=name)
        ax1.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(keys))],
                       [f"{p}\ns{s}\nb{b}" for p, s, b in keys], fontsize=7)
        ys_all = [r["p50_ms"] for r in rows]
        if max(ys_all) > 30 * min(ys_all):  # seq 512 x batch 8 next to seq 128 x batch 1: linear hides the small
            ax1.set_yscale("log")
            ax1.set_ylim(bottom=min(ys_all) / 2)
    ax1.set_ylabel("median latency per call (ms)")
    ax1.set_xlabel("precision / sequence length / batch size", fontsize=8)
    ax1.set_title(f"latency on {result['machine']['gpu_name'] or result['machine']['cpu_model']}", fontsize=9)
    ax1.legend(fontsize=8)
    params = [x["params_total"] / 1e6 for x in result["models"]]
    non_emb = [x["params_non_embedding"] / 1e6 for x in result["models"]]
    xs = range(len(names))
    ax2.bar([x - 0.2 for x in xs], params, 0.4, label="parameters (M)")
    ax2.bar([x + 0.2 for x in xs], non_emb, 0.4, label="without embeddings (M)")
    for x, p, m in zip(xs, params, result["models"]):
        ax2.annotate(f"{_mb(m['disk_bytes'])} MB on disk", (x - 0.2, p), ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("millions of parameters")
    ax2.set_title("size", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
