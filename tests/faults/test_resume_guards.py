"""Case 10: resuming with a different number of ranks, another teacher or another tokenizer is refused with
a message that says what to do, and the run folder is left as it was. The runs resumed here were interrupted
after their last checkpoint (`unfinish`); a finished run relaunched is tests/faults/test_lifecycle.py's."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path


from tests.faults.conftest import copy_run, distill_args, run_job, unfinish
from tests.launch import cpu_env


def _snapshot(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def test_case10_different_world_size_is_refused_with_what_to_do(tmp_path, tiny_teacher_dir, tiny_shards_dir, reference_run):
    ref, _ = reference_run
    out = unfinish(copy_run(ref, tmp_path / "run"))
    before = _snapshot(out)
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), tmp_path / "log.txt", ranks=1, expect_rc=2)
    log = job.output()
    assert "was saved by 2 ranks but this run has 1. Resume with 2 ranks" in log and "Traceback" not in log
    assert _snapshot(out) == before
    # the message's way to get the weights out works as written
    m = re.search(r"The weights so far: python (\S+) (\S+) WEIGHTS_DIR --tag (\S+)\.", log)
    assert m, log[-2000:]
    weights = tmp_path / "weights"
    subprocess.run([sys.executable, m[1], m[2], str(weights), "--tag", m[3]], check=True, capture_output=True,
                   env=cpu_env(), timeout=300)
    assert any(weights.iterdir())


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
    out = unfinish(copy_run(ref, tmp_path / "run"))
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
    """The reference run, interrupted, relaunched on copies of its teacher and shards whose tokenizer files were
    changed in place (two ids swapped: same size and special ids, a different vocabulary), so teacher and
    shards still agree with each other and only the checkpoint can tell."""
    ref, _ = reference_run
    out = unfinish(copy_run(ref, tmp_path / "run"))
    shards, teacher = tmp_path / "shards", tmp_path / "teacher"
    shutil.copytree(tiny_shards_dir, shards)
    shutil.copytree(tiny_teacher_dir, teacher)
    args = distill_args(teacher, shards, out)
    vocab = json.loads((shards / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    a, b = [t for t, i in sorted(vocab.items(), key=lambda x: x[1]) if i > 100][:2]
    for d in (shards / "tokenizer", teacher):
        _swap_tokens(d, a, b)
    # the manifest's own fingerprint would catch a tokenizer replaced under it (tests/faults/test_inputs.py); here
    # the folder is made consistent again, as a rebuild with the other tokenizer would be: only the checkpoint can tell
    from dstrain.hf_io import vocab_fingerprint

    manifest = json.loads((shards / "manifest.json").read_text())
    from tokenizers import Tokenizer

    swapped = Tokenizer.from_file(str(shards / "tokenizer" / "tokenizer.json")).get_vocab(with_added_tokens=True)
    manifest["tokenizer"]["vocab_fingerprint"] = vocab_fingerprint(swapped)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    before = _snapshot(out)
    job = run_job(args, tmp_path / "log2.txt", expect_rc=2)
    log = job.output()
    assert "was trained with a different tokenizer" in log and "Resume with the same --data" in log, log[-3000:]
    assert "Traceback" not in log
    assert _snapshot(out) == before


def test_case10_same_teacher_in_another_folder_is_the_same_teacher(tmp_path, tiny_teacher_dir):
    from dstrain.models import load_teacher, teacher_fingerprint

    moved = tmp_path / "staged" / "teacher"
    shutil.copytree(tiny_teacher_dir, moved)
    assert teacher_fingerprint(load_teacher(str(moved))) == teacher_fingerprint(load_teacher(str(tiny_teacher_dir)))
