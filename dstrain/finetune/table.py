"""`glue_table`: the paper's Table 1 layout (per-task score, macro score, student/teacher ratio) from run folders.

    python dstrain/cli.py glue_table runs/bert-* runs/student-*
    python dstrain/cli.py glue_table runs/*/ --teacher runs/bert-base --out table.md

Each run folder holds the metrics.json that `finetune` writes (one seed, or the median over --num_seeds).
Runs are grouped into rows by their --model (one row per model); the teacher row is --teacher (a model path
or row name) or, by default, the model with the most parameters. Task score, as in the paper: CoLA
Matthews x 100, STS-B mean of Pearson and Spearman, MRPC and QQP mean of F1 and accuracy, MNLI matched
accuracy (mismatched shown as its own column), the others accuracy. The macro score is the mean over the
GLUE tasks in the row; the ratio is macro(row) / macro(teacher) over the GLUE tasks both rows have.
SQuAD (EM/F1) and shakespeare_genre runs get their own columns, outside the macro.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from dstrain.config import UserError, atomic_write_text, build_config, opt
from dstrain.finetune.tasks import GLUE_TASKS

# Column order of the paper's Table 1.
GLUE_ORDER = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")
HEADERS = {"cola": "CoLA", "mnli": "MNLI", "mrpc": "MRPC", "qnli": "QNLI", "qqp": "QQP", "rte": "RTE",
           "sst2": "SST-2", "stsb": "STS-B", "wnli": "WNLI"}


@dataclasses.dataclass
class GlueTableConfig:
    runs: list[str] = opt(factory=list, help="run folders (also accepted as positional arguments)")
    teacher: str = opt("", help="the reference row: a model path or row name; empty: the largest model")
    names: list[str] = opt(factory=list, help="row names as model=name pairs; default: the model folder's name")
    out: str = opt("", help="also write the table (Markdown) to this file")

    def validate(self) -> None:
        for pair in self.names:
            if "=" not in pair:
                raise UserError(f"--names {pair!r}: expected MODEL=NAME pairs, e.g. runs/d1/student=distil")


def task_score(m: dict) -> float:
    """The single number the paper's table shows for a run, in percent."""
    task = m["task"]
    if task == "cola":
        return 100 * m["matthews_correlation"]
    if task == "stsb":
        return 100 * (m["pearson"] + m["spearmanr"]) / 2
    if task in ("mrpc", "qqp"):
        return 100 * (m["f1"] + m["accuracy"]) / 2
    if task == "squad":
        return m["f1"]
    return 100 * m["accuracy"]


def read_run(path: str) -> dict:
    p = Path(path)
    f = p / "metrics.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"{path}: no metrics.json (not a finished finetune run folder); run `finetune` first "
                        f"or drop it from the list")
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None
    for key in ("task", "model"):
        if key not in m:
            raise UserError(f"{f}: no {key!r} field; is this a metrics.json written by `finetune`?")
    m["_path"] = str(p)
    return m


def build_rows(runs: list[dict], names: dict[str, str]) -> dict[str, dict]:
    """{row name: {"model", "num_parameters", "scores": {task: score}, "extra": {...}}}; one row per model.
    Two runs of the same model and task in the list is an error (which one would the table show?)."""
    rows: dict[str, dict] = {}
    for m in runs:
        model = m["model"]
        name = names.get(model) or Path(model.rstrip("/")).name or model
        row = rows.setdefault(name, {"model": model, "num_parameters": m.get("num_parameters"), "scores": {},
                                     "extra": {}, "paths": {}})
        task = m["task"]
        if task in row["paths"]:
            raise UserError(f"{m['_path']} and {row['paths'][task]}: two {task} runs of model {model}; pass one "
                            f"(finetune --num_seeds N already reports the median of N seeds)")
        row["paths"][task] = m["_path"]
        if task in GLUE_TASKS:
            row["scores"][task] = task_score(m)
            if task == "mnli" and "accuracy_mm" in m:
                row["extra"]["MNLI-mm"] = 100 * m["accuracy_mm"]
        elif task == "squad":
            row["extra"]["SQuAD EM"] = m["exact_match"]
            row["extra"]["SQuAD F1"] = m["f1"]
        else:
            row["extra"][task] = 100 * m["accuracy"]
    return rows


def macro(scores: dict[str, float], tasks=None) -> float | None:
    vals = [scores[t] for t in (tasks if tasks is not None else scores) if t in scores]
    return statistics.mean(vals) if vals else None


def render(rows: dict[str, dict], teacher: str) -> str:
    """Markdown table: model | macro | per-task | extra columns | params | ratio to the teacher."""
    tasks = [t for t in GLUE_ORDER if any(t in r["scores"] for r in rows.values())]
    extras = sorted({k for r in rows.values() for k in r["extra"]})
    head = ["model", "macro", *(HEADERS[t] for t in tasks), *extras, "params", f"macro / {teacher}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    t_scores = rows[teacher]["scores"]
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for name, r in rows.items():
        common = [t for t in r["scores"] if t in t_scores]
        ratio = None
        if common and macro(t_scores, common):
            ratio = 100 * macro(r["scores"], common) / macro(t_scores, common)
        n = r["num_parameters"]
        cells = [name, fmt(macro(r["scores"])), *(fmt(r["scores"].get(t)) for t in tasks),
                 *(fmt(r["extra"].get(k)) for k in extras), f"{n / 1e6:.1f}M" if n else "-",
                 "-" if ratio is None else f"{ratio:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def glue_table(*run_dirs, **kwargs):
    """Print the paper's Table 1 layout (per-task scores, macro, student/teacher ratio) for run folders."""
    cfg = build_config(GlueTableConfig, kwargs, command="glue_table")
    paths = [str(p) for p in (*run_dirs, *cfg.runs)]
    if not paths:
        raise UserError("glue_table: no run folders given; pass the folders `finetune --out_dir` wrote, "
                        "e.g. glue_table runs/bert-sst2 runs/student-sst2")
    names = dict(pair.split("=", 1) for pair in cfg.names)
    rows = build_rows([read_run(p) for p in paths], names)
    if cfg.teacher:
        by_model = {r["model"]: n for n, r in rows.items()}
        teacher = cfg.teacher if cfg.teacher in rows else by_model.get(cfg.teacher)
        if teacher is None:
            raise UserError(f"--teacher {cfg.teacher}: not one of the rows ({', '.join(rows)}) or their models")
    else:
        teacher = max(rows, key=lambda n: rows[n]["num_parameters"] or 0)
    table = render(rows, teacher)
    if cfg.out:
        atomic_write_text(cfg.out, table + "\n")
    print(table, flush=True)


glue_table.config_class = GlueTableConfig
