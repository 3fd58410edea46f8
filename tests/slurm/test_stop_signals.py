"""How a Slurm job of slurm/distill_8node.sh stops, on the real local cluster (issue #13 items 1 and 9):

    --time limit   Slurm itself sends USR1 (--signal=B:USR1@SECS) to the batch shell before the limit; the
                   ranks checkpoint and exit before the limit's SIGKILL, and the job requeues itself
    plain scancel  SIGTERM to the batch shell and every process of the step: the ranks checkpoint within
                   KillWait; the job ends CANCELLED (not requeued); a resubmission into the same run folder
                   finishes it, and one more (a requeue of a finished job) exits 0 having done nothing

1 node x 2 ranks (gloo), the tiny teacher and shards; each test is about a minute.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from dstrain.checkpoint import verify
from tests.slurm.conftest import SLURM_SKIP
from tests.slurm.test_templates import TINY_ARGS, log_of, submit

if SLURM_SKIP:
    pytest.skip(SLURM_SKIP, allow_module_level=True)

ONE_NODE = ("--nodes=1", "--gpus-per-node=2")


def _wait_log(cluster, out, job, text: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while text not in log_of(out, job):
        assert time.time() < deadline, f"no {text!r} after {timeout}s\n{log_of(out, job)[-6000:]}"
        assert cluster.job(job)["JobState"] in ("PENDING", "RUNNING", "CONFIGURING"), log_of(out, job)[-6000:]
        time.sleep(0.5)


def test_time_limit_signal_checkpoints_and_requeues_before_the_kill(slurm_cluster, tmp_path, tiny_teacher,
                                                                    tiny_shards_dir):
    """--time=2 with --signal=B:USR1@90: Slurm's own timer sends USR1 (no scancel from the test); the run stops at
    a step boundary with a complete checkpoint and RUN/PREEMPTED before the time limit, and the job requeues
    itself (a TIMEOUT would end it instead). The requeued job is then cancelled: the resume itself is tested
    in test_templates.py."""
    job, out = submit(slurm_cluster, tmp_path, "slurm/distill_8node.sh", "--max_steps", "100000", *TINY_ARGS,
                      sbatch=(*ONE_NODE, "--time=2", "--signal=B:USR1@90", "--job-name=tlim"),
                      TEACHER=str(tiny_teacher), DATA=str(tiny_shards_dir), RESIGNAL_SECS="5")
    info = slurm_cluster.wait(job, timeout=300, until=lambda j: int(j["Restarts"]) >= 1
                              or j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"))
    log = log_of(out, job)
    assert info["Restarts"] == "1", (info, log[-6000:])
    slurm_cluster.run("scancel", str(job))
    slurm_cluster.wait(job, timeout=300)
    assert "got SIGUSR1" in log, log[-6000:]
    m = re.search(r'preempted: \{"step": (\d+), "checkpoint": "(step-\d+)", "signal": 10\}', log)
    assert m, log[-6000:]
    assert int(m.group(1)) >= 1 and verify(tmp_path / "runs" / f"tlim-{job}" / "checkpoints" / m.group(2)) is None
    assert f"requeueing job {job} (restart 1)" in log


def test_plain_scancel_checkpoints_then_resubmission_finishes_and_a_requeue_of_it_succeeds(
        slurm_cluster, tmp_path, tiny_teacher, tiny_shards_dir):
    max_steps = 30
    env = dict(TEACHER=str(tiny_teacher), DATA=str(tiny_shards_dir), RUN_DIR=str(tmp_path / "runs" / "sc"))
    args = ("--max_steps", str(max_steps), *TINY_ARGS, "--save_every", "2")
    job, out = submit(slurm_cluster, tmp_path, "slurm/distill_8node.sh", *args,
                      sbatch=(*ONE_NODE, "--time=30", "--job-name=scancel"), **env)
    run = tmp_path / "runs" / "sc"
    _wait_log(slurm_cluster, out, job, "checkpoints/step-00000002 saved")
    slurm_cluster.run("scancel", str(job))
    info = slurm_cluster.wait(job, timeout=300)
    log = log_of(out, job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, log[-4000:])
    pre = json.loads((run / "PREEMPTED").read_text())
    assert pre["signal"] == 15 and 2 <= pre["step"] < max_steps, log[-6000:]
    ck = run / "checkpoints"
    assert (ck / "latest").read_text() == pre["checkpoint"] and verify(ck / pre["checkpoint"]) is None
    assert not (run / "metrics.json").exists()

    job2, out2 = submit(slurm_cluster, tmp_path, "slurm/distill_8node.sh", *args,
                        sbatch=(*ONE_NODE, "--time=30", "--job-name=resub"), **env)
    info2 = slurm_cluster.wait(job2, timeout=480)
    log2 = log_of(out2, job2)
    assert info2["JobState"] == "COMPLETED" and info2["ExitCode"] == "0:0", log2[-6000:]
    assert re.search(rf"resumed from \S+/{pre['checkpoint']} at step {pre['step']}", log2), log2[-6000:]
    assert json.loads((run / "metrics.json").read_text())["step"] == max_steps
    done = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}

    job3, out3 = submit(slurm_cluster, tmp_path, "slurm/distill_8node.sh", *args,
                        sbatch=(*ONE_NODE, "--time=30", "--job-name=again"), **env)
    info3 = slurm_cluster.wait(job3, timeout=480)
    log3 = log_of(out3, job3)
    assert info3["JobState"] == "COMPLETED" and info3["ExitCode"] == "0:0", log3[-6000:]
    assert f"already finished at step {max_steps}" in log3
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "tb" not in p.parts} == done
