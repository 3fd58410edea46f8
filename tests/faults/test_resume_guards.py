"""Case 10: resuming with a different number of ranks, another teacher or another tokenizer is refused with
a message that says what to do, and the run folder is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.faults.conftest import copy_run, distill_args, run_job


def _snapshot(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_case10_different_world_size_says_how_to_convert(tmp_path, tiny_teacher_dir, tiny_shards_dir, reference_run):
    ref, _ = reference_run
    out = copy_run(ref, tmp_path / "run")
    before = _snapshot(out)
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), tmp_path / "log.txt", ranks=1, expect_rc=2)
    log = job.output()
    assert "was saved by 2 ranks but this run has 1. Resume with 2 ranks" in log
    assert "python -m deepspeed.checkpoint.ds_to_universal" in log and "Traceback" not in log
    assert _snapshot(out) == before


def _swap_tokens(tok_dir: Path, a: str, b: str) -> None:
    """Exchange the ids of two ordinary tokens: same size and special ids, a different vocabulary."""
    tj = tok_dir / "tokenizer.json"
    d = json.loads(tj.read_text())
    v = d["model"]["vocab"]
    v[a], v[b] = v[b], v[a]
    tj.write_text(json.dumps(d))
    vt = tok_dir / "vocab.txt"
    if vt.is_file():
        lines = vt.read_text().split("\n")
        ia, ib = lines.index(a), lines.index(b)
        lines[ia], lines[ib] = b, a
        vt.write_text("\n".join(lines))


def test_case10_another_teacher_is_refused(tmp_path, tiny_teacher_dir, tiny_shards_dir, reference_run):
    import torch
    from transformers import AutoModelForMaskedLM

    ref, _ = reference_run
    out = copy_run(ref, tmp_path / "run")
    other = tmp_path / "teacher2"
    shutil.copytree(tiny_teacher_dir, other)
    m = AutoModelForMaskedLM.from_pretrained(other)
    with torch.no_grad():
        m.get_input_embeddings().weight.add_(0.01)
    m.save_pretrained(other)
    before = _snapshot(out)
    job = run_job(distill_args(other, tiny_shards_dir, out), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert "was trained with a different teacher" in log and "Resume with the same --teacher" in log
    assert "Traceback" not in log
    assert _snapshot(out) == before


def test_case10_another_tokenizer_is_refused(tmp_path, tiny_teacher_dir, tiny_shards_dir, reference_run):
    """Shards and teacher both re-saved with a tokenizer whose vocabulary differs (two ids swapped): they agree
    with each other, so only the checkpoint can tell."""
    ref, _ = reference_run
    out = copy_run(ref, tmp_path / "run")
    shards, teacher = tmp_path / "shards", tmp_path / "teacher"
    shutil.copytree(tiny_shards_dir, shards)
    shutil.copytree(tiny_teacher_dir, teacher)
    vocab = json.loads((shards / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    a, b = [t for t, i in sorted(vocab.items(), key=lambda x: x[1]) if i > 100][:2]
    for d in (shards / "tokenizer", teacher):
        _swap_tokens(d, a, b)
    before = _snapshot(out)
    job = run_job(distill_args(teacher, shards, out), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert "was trained with a different tokenizer" in log, log[-3000:]
    assert "Traceback" not in log
    assert _snapshot(out) == before
