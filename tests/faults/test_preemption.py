"""Case 4: preemption as Slurm delivers it (`scancel --signal=TERM` / the templates' forwarded USR1 reach
every task of the step): SIGTERM to each rank process, from outside, at whatever point of a step each one is.
All ranks agree at one step boundary, save, write RUN/PREEMPTED and exit 0; the relaunch continues and the
result equals the uninterrupted run."""

from __future__ import annotations

import json
import signal

from dstrain.checkpoint import verify
from tests.faults.conftest import EXIT_BOUND_S, STEPS, Job, distill_args, scalars, trace


def test_case4_sigterm_to_every_rank_saves_exits_0_and_resume_continues(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                                         reference_run):
    ref, ref_trace = reference_run
    out = tmp_path / "run"
    args = distill_args(tiny_teacher_dir, tiny_shards_dir, out)
    job = Job(args, tmp_path / "a.log", inject={"trace": str(tmp_path / "trace_a")})
    latest = out / "checkpoints" / "latest"
    job.wait_for(lambda: latest.is_file() and latest.read_text() == "step-00000002", "the step-2 checkpoint")
    import time

    t_sig = time.time()
    assert job.signal_ranks(signal.SIGTERM) == [0, 1]
    rc = job.wait(timeout=EXIT_BOUND_S + 60)
    log = job.output()
    assert rc == 0, log[-3000:]  # every rank exited 0
    assert job.ended_at - t_sig < EXIT_BOUND_S
    pre = json.loads((out / "PREEMPTED").read_text())
    step = pre["step"]
    assert 2 <= step < STEPS and pre["signal"] == signal.SIGTERM
    assert pre["checkpoint"] == f"step-{step:08d}" == latest.read_text()
    assert verify(out / "checkpoints" / pre["checkpoint"]) is None
    assert not (out / "student").exists() and not (out / "metrics.json").exists()  # not mistaken for finished
    assert f"preempted at step {step}" in log

    job2 = Job(args, tmp_path / "b.log", inject={"trace": str(tmp_path / "trace_b")})
    rc = job2.wait(timeout=600)
    assert rc == 0, job2.tail()
    assert f"at step {step}" in job2.output() and not (out / "PREEMPTED").exists()
    a, b = scalars(ref), scalars(out)
    for tag in (t for t in a if t.startswith("train/")):
        assert b[tag] == a[tag], tag
    got = {k: v for k, v in trace(tmp_path / "trace_a").items() if k[1] <= step}
    got.update(trace(tmp_path / "trace_b"))
    assert got == trace(ref_trace)
    assert json.loads((out / "metrics.json").read_text())["step"] == STEPS
