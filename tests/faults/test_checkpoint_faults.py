"""Cases 5 and 6: damaged checkpoints on resume, and keep-last-K with a deletion that fails."""

from __future__ import annotations

import json

from dstrain.checkpoint import verify
from tests.faults.conftest import STEPS, copy_run, distill_args, run_job, scalars


def test_case5_damaged_checkpoints_fall_back_with_a_logged_reason(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                                   reference_run):
    """The newest checkpoint truncated, the one before missing a file, `latest` garbage: the relaunch logs
    each reason, resumes from the newest intact one (step 6) and ends exactly where the reference ended."""
    ref, _ = reference_run
    out = copy_run(ref, tmp_path / "run")
    ck = out / "checkpoints"
    newest = ck / f"step-{STEPS:08d}"
    victim = max(newest.glob("*optim_states.pt"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (ck / f"step-{STEPS - 2:08d}" / "dstrain_rank001.pt").unlink()
    (ck / "latest").write_bytes(b"\x00\xffstep-000000")
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), tmp_path / "log.txt")
    log = job.output()
    assert f"step-{STEPS:08d} is not usable: {victim.name} has" in log and "truncated?" in log
    assert f"step-{STEPS - 2:08d} is not usable: dstrain_rank001.pt is missing" in log
    assert "checkpoints/latest names" in log
    assert f"step-{STEPS - 4:08d} at step {STEPS - 4}" in log  # resumed from the newest intact one
    a, b = scalars(ref), scalars(out)
    for tag in ("train/loss_total", "train/lr", "train/skipped_steps"):
        assert b[tag] == a[tag], tag
    assert verify(newest) is None and (ck / "latest").read_text() == newest.name


def test_case5_no_complete_checkpoint_is_an_error_not_a_fresh_start(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                                     reference_run):
    """Every checkpoint incomplete (markers gone): both ranks stop with exit 2 and a message that says what to
    do; nothing of the run folder is touched (no fresh start over the old run)."""
    ref, _ = reference_run
    out = copy_run(ref, tmp_path / "run")
    for m in (out / "checkpoints").glob("step-*/COMPLETE"):
        m.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert "none is complete; refusing to silently start over" in log
    assert log.count("dstrain: error:") >= 1
    assert "Traceback" not in log
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_case6_keep_last_k_with_a_failed_deletion(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """A checkpoint every step, keep the last 2; deleting step 2 fails (injected PermissionError on rank 0):
    each failure is logged, the run finishes, the last 2 complete checkpoints are kept and every other one
    is gone except the undeletable one, which is no longer complete (so it is never resumed from)."""
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=6, save_every=1, keep_last=2),
                  tmp_path / "log.txt", inject={"rank": 0, "rmtree_fails": "step-00000002"})
    log = job.output()
    assert "could not delete old checkpoint" in log and "step-00000002" in log and "Permission denied" in log
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-00000002", "step-00000005", "step-00000006"]
    assert verify(ck / "step-00000005") is None and verify(ck / "step-00000006") is None
    assert verify(ck / "step-00000002") is not None
    assert (ck / "latest").read_text() == "step-00000006"
    assert json.loads((out / "metrics.json").read_text())["step"] == 6
