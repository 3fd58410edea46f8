"""Issue #13 item 2 (and keep-last-K of item 9): a checkpoint is trusted only when its content is verified, and
a non-finite state is never marked good, never exported and never ends a run with exit 0."""

from __future__ import annotations

import json

from dstrain.checkpoint import Checkpointer, verify
from tests.faults.conftest import LIFECYCLE_STEPS as LAST
from tests.faults.conftest import copy_run, distill_args, fault_env, run_job


def overwrite_64k(path) -> None:
    """64 KB in the middle of the file replaced by float32 3.4e38 (bytes 7f7f7f7f), the size unchanged."""
    data = bytearray(path.read_bytes())
    size, off = len(data), len(data) // 2 - 32768
    assert off > 0, f"{path} is too small ({size} bytes)"
    data[off:off + 65536] = b"\x7f" * 65536
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


def test_weights_overwritten_in_place_are_not_loaded_the_run_falls_back(tmp_path, lifecycle_chain, tiny_teacher_dir,
                                                                       tiny_shards_dir):
    """The newest checkpoint's largest file has 64 KB overwritten (same size, so the size check passes): the
    relaunch logs that it does not match its checksum, resumes from the previous checkpoint and finishes with
    finite losses, saving that step again completely."""
    out = copy_run(lifecycle_chain["preempted_copy"], tmp_path / "run")
    newest = out / "checkpoints" / f"step-{LAST:08d}"
    victim = max((p for p in newest.iterdir() if p.suffix == ".pt"), key=lambda p: p.stat().st_size)
    overwrite_64k(victim)
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=LAST), tmp_path / "log.txt")
    log = job.output()
    assert f"step-{LAST:08d} is not usable: {victim.name} does not match its sha256" in log, log[-4000:]
    assert f"step-{LAST - 2:08d} at step {LAST - 2}" in log  # resumed from the intact one
    m = json.loads((out / "metrics.json").read_text())
    assert m["step"] == LAST and abs(m["train_loss"]) < 1e3 and abs(m["student_mlm_loss"]) < 1e3
    assert verify(newest) is None


def test_keep_last_counts_only_verified_checkpoints(tmp_path, lifecycle_chain):
    """keep_last 1 with the newest checkpoint damaged in place: the rotation keeps the last good one (it used
    to trust the COMPLETE marker and delete it, leaving only the damaged one)."""
    out = copy_run(lifecycle_chain["preempted_copy"], tmp_path / "run")
    ck = out / "checkpoints"
    good, bad = ck / f"step-{LAST - 2:08d}", ck / f"step-{LAST:08d}"
    overwrite_64k(max(bad.glob("*.pt"), key=lambda p: p.stat().st_size))
    Checkpointer(out, keep_last=1, rank=0, world_size=1)._rotate()
    assert verify(good) is None
    assert Checkpointer(out, 1, 0, 1).find_resume() == good.name


def test_nonfinite_loss_at_the_end_is_not_a_finished_run(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """The loss is NaN at the last steps (fewer than --max_bad_steps, so the divergence stop never triggers):
    the run does not exit 0, saves nothing as `latest`, exports nothing and writes no metrics.json; the
    relaunch resumes from the last good checkpoint."""
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=LAST, precision="bf16"),
                  tmp_path / "log.txt", env=fault_env(DSTRAIN_FAULT_NAN_FROM_STEP=str(LAST - 1)), expect_rc=2)
    log = job.output()
    assert f"training diverged: 2 consecutive steps ({LAST - 1}..{LAST})" in log and "Traceback" not in log
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == f"step-{LAST - 2:08d}"
    assert sorted(p.name for p in ck.glob("step-*")) == [f"step-{LAST - 2:08d}"]
    assert not (out / "student").exists() and not (out / "metrics.json").exists()
    assert Checkpointer(out, 10, 0, 2).find_resume() == f"step-{LAST - 2:08d}"


def test_nonfinite_weights_are_never_saved_as_good_nor_exported(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """A weight turns NaN on one rank right after step 2 while the loss stays finite: the step-2 save finds it
    (all ranks agree), keeps that state only as diverged-step-2, names nothing `latest`, exports nothing and
    exits 2 (it used to become `latest`; the run went on and exited 0)."""
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=LAST), tmp_path / "log.txt",
                  inject={"rank": 1, "nan_weight_at_step": 2}, expect_rc=2)
    log = job.output()
    assert "[fault injection] rank 1: NaN written into" in log
    assert "training diverged: the weights hold NaN/inf at step 2 (1 tensors over all ranks" in log, log[-4000:]
    assert "Traceback" not in log
    ck = out / "checkpoints"
    assert not (ck / "latest").exists() and not list(ck.glob("step-*"))
    assert verify(ck / "diverged-step-00000002") is None  # kept for inspection, never resumed from
    assert not (out / "student").exists() and not (out / "metrics.json").exists()
