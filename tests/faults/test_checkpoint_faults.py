"""Case 5: damaged checkpoints on resume (case 6, keep-last-K with a failed deletion, is in test_kill_resume.py)."""

from __future__ import annotations


from dstrain.checkpoint import verify
from tests.faults.conftest import STEPS, copy_run, distill_args, run_job, scalars, unfinish


def test_case5_damaged_checkpoints_fall_back_with_a_logged_reason(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                                   reference_run):
    """The newest checkpoint truncated, the one before missing a file, `latest` garbage: the relaunch logs
    each reason, resumes from the newest intact one (step 6) and ends exactly where the reference ended.
    (The copy lacks metrics.json and student/: a finished run would not train again, see test_lifecycle.py.)"""
    ref, _ = reference_run
    out = unfinish(copy_run(ref, tmp_path / "run"))
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
    out = unfinish(copy_run(ref, tmp_path / "run"))
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
