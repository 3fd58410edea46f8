"""Issue #13: Ctrl-C (item 7) and a rank that is alive but stuck (item 9), on real 2-rank jobs."""

from __future__ import annotations

import json
import os
import signal
import time

from dstrain.checkpoint import verify
from tests.faults.conftest import EXIT_BOUND_S, STEPS, Job, distill_args


def test_ctrl_c_checkpoints_and_exits_without_a_traceback(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """SIGINT to the job's whole process group, as a terminal's Ctrl-C sends it (launcher and ranks): the ranks
    treat it like SIGTERM (agree on a step boundary, checkpoint, RUN/PREEMPTED, exit 0); no rank prints a
    KeyboardInterrupt traceback (before: every rank died with one, mid-step, without a checkpoint). The
    launcher's exit code and its own KeyboardInterrupt traceback are DeepSpeed's."""
    out = tmp_path / "run"
    job = Job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), tmp_path / "log.txt", fresh=True)
    latest = out / "checkpoints" / "latest"
    job.wait_for(lambda: latest.is_file() and latest.read_text() == "step-00000002", "the step-2 checkpoint")
    os.killpg(job.proc.pid, signal.SIGINT)
    job.wait(timeout=EXIT_BOUND_S + 60)
    log = job.output()
    pre = json.loads((out / "PREEMPTED").read_text())
    assert pre["signal"] == signal.SIGINT and 2 <= pre["step"] < STEPS, log[-3000:]
    assert pre["checkpoint"] == latest.read_text() and verify(out / "checkpoints" / pre["checkpoint"]) is None
    assert f"preempted at step {pre['step']}" in log
    # no traceback through dstrain's code (the `deepspeed` runner's own KeyboardInterrupt traceback is DeepSpeed's)
    frames = [ln for ln in log.splitlines() if ln.strip().startswith('File "') and "/dstrain/" in ln]
    assert not frames, log[-4000:]
    assert log.count("dstrain: error") == 0
    deadline = time.time() + EXIT_BOUND_S  # the launcher died of the Ctrl-C itself; its ranks end on their own
    while not job.ranks_gone() and time.time() < deadline:
        time.sleep(0.2)
    assert job.ranks_gone()


def test_a_stuck_rank_fails_the_run_within_dist_timeout_with_a_clear_message(tmp_path, tiny_teacher_dir,
                                                                            tiny_shards_dir):
    """Rank 1 hangs (alive, sleeping) at the start of step 2; rank 0 waits in its next collective. With
    --dist_timeout_minutes 0.5 the waiting rank stops after 30 s with a one-line message naming the setting
    (exit 2), the launcher then stops the stuck rank (SIGTERM, SIGKILL 30 s later: the stuck rank cannot act
    on the signal), and the step-1 checkpoint stays the newest complete one."""
    out = tmp_path / "run"
    timeout_s = 30.0
    job = Job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, dist_timeout_minutes=timeout_s / 60,
                           save_every=1),
              tmp_path / "log.txt", inject={"rank": 1, "hang_at_micro": 3, "note": str(tmp_path / "note")}, fresh=True)
    job.wait_for(lambda: (tmp_path / "note" / "killed.json").is_file(), "rank 1 to hang")
    t_hang = json.loads((tmp_path / "note" / "killed.json").read_text())["time"]
    rc = job.wait(timeout=timeout_s + EXIT_BOUND_S + 120)
    log = job.output()
    took = job.ended_at - t_hang
    assert rc != 0, log[-3000:]
    assert "[fault injection] rank 1: hangs at micro-step 3" in log
    assert "dstrain: error: rank 0: a collective waited longer than --dist_timeout_minutes 0.5" in log, log[-4000:]
    assert "one of them is stuck or dead" in log
    assert not [ln for ln in log.splitlines() if ln.startswith("Traceback")], log[-4000:]
    launcher_grace_s = 30  # DeepSpeed's launcher: SIGTERM to the ranks, SIGKILL 30 s later
    assert timeout_s <= took < timeout_s + launcher_grace_s + EXIT_BOUND_S, f"job ended {took:.0f}s after the hang"
    assert job.ranks_gone()
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == "step-00000001" and verify(ck / "step-00000001") is None
