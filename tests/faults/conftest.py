"""Shared pieces of the fault-injection matrix (issue #8): real 2-rank CPU jobs (gloo), watched from outside, and
one uninterrupted reference run that the interrupted runs are compared with.

A job's ranks are forked from the tests' rank server (tests/zygote.py), which supervises them as the deepspeed
launcher does; the cases where the launcher is part of the guarantee (a rank that dies or hangs while the others
wait, Ctrl-C to the whole process group, SIGTERM to every rank) start the real `deepspeed` launcher (fresh=True).

Faults are injected from outside (signals to rank processes, damaged files) or, for the ones that need an
exact moment (a rank dying mid-step or mid-save), by tests/faults/inject/sitecustomize.py loaded into the
real processes through PYTHONPATH (see its docstring). The product code has no test hooks for these.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.launch import BIN, CLI, ROOT, cpu_env, free_port
from tests.train.conftest import tiny_teacher_dir  # noqa: F401  (session fixture shared with tests/train)

INJECT_DIR = Path(__file__).resolve().parent / "inject"
# A rank that dies is noticed by the launcher within 1 s (its poll); it SIGTERMs the others and SIGKILLs
# them 30 s later if they are still alive. A job must be gone well within this after a fault:
EXIT_BOUND_S = 60.0
STEPS = 10  # the reference run's length


def fault_env(inject: dict | None = None, **extra: str) -> dict[str, str]:
    env = cpu_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INJECT_DIR), str(ROOT), env.get("PYTHONPATH", "")) if p)
    if inject:
        env["DSTRAIN_INJECT"] = json.dumps(inject)
    return env


class Job:
    """`dstrain/cli.py ARGS` with RANKS ranks, output to a log file, watched from outside.

    fresh=False: ranks forked from the tests' rank server (tests/zygote.py), supervised as the deepspeed launcher
    does. fresh=True: `deepspeed --num_gpus RANKS dstrain/cli.py ARGS` (or `python dstrain/cli.py` for one rank) in
    its own session, for the tests where the launcher or the process group is part of what is tested.
    """

    def __init__(self, args, log: Path, ranks: int = 2, inject: dict | None = None, env: dict | None = None,
                 fresh: bool = False):
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()
        self.fresh = fresh
        self._out = None
        if not fresh:
            from tests.zygote import ForkedRanks

            self.proc = ForkedRanks([str(a) for a in args], ranks, env or fault_env(inject), self.log)
        else:
            if ranks == 1:
                cmd = [str(BIN / "python"), CLI, *map(str, args)]
            else:
                cmd = [str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", str(ranks), "--master_port",
                       str(free_port()), CLI, *map(str, args)]
            self._out = open(self.log, "w")
            self.proc = subprocess.Popen(cmd, env=env or fault_env(inject), cwd=ROOT, stdout=self._out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.seen_ranks: dict[int, psutil.Process] = {}
        self.ended_at: float | None = None

    def rank_procs(self) -> dict[int, psutil.Process]:
        """rank -> process of the ranks alive now (launched: the --local_rank the launcher passes)."""
        out = {}
        if not self.fresh:
            for rank, pid in enumerate(self.proc.pids):
                try:
                    p = psutil.Process(pid)
                    if p.status() != psutil.STATUS_ZOMBIE:
                        out[rank] = p
                except psutil.Error:
                    pass
            self.seen_ranks.update(out)
            return out
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for p in kids:
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            if CLI in cmd or "dstrain/cli.py" in cmd:
                for a in cmd:
                    if a.startswith("--local_rank="):
                        out[int(a.split("=", 1)[1])] = p
        self.seen_ranks.update(out)
        return out

    def wait_for(self, cond, what: str, timeout: float = 300.0, poll: float = 0.05) -> None:
        """Poll until cond() is true (also records the rank processes); fails if the job ends first."""
        end = time.time() + timeout
        while time.time() < end:
            self.rank_procs()
            if cond():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended (rc {self.proc.returncode}) before {what}\n{self.tail()}")
            time.sleep(poll)
        self.kill()
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.tail()}")

    def signal_ranks(self, sig: int) -> list[int]:
        procs = self.rank_procs()
        for p in procs.values():
            p.send_signal(sig)
        return sorted(procs)

    def wait(self, timeout: float = 600.0) -> int:
        """Exit code of the job; a job still running after `timeout` is a hang: killed, test fails."""
        try:
            rc = self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, TimeoutError):
            self.kill()
            raise AssertionError(f"job still running after {timeout}s (hang)\n{self.tail()}") from None
        self.ended_at = time.time()
        if self._out:
            self._out.close()
        return rc

    def kill(self) -> None:
        """SIGKILL this job: its ranks (forked), or its own process group (launcher and ranks)."""
        if not self.fresh:
            self.proc.kill()
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 6000) -> str:
        return self.output()[-n:]

    def ranks_gone(self) -> bool:
        return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in self.seen_ranks.values())


def run_job(args, log: Path, ranks: int = 2, inject: dict | None = None, timeout: float = 600.0,
            expect_rc: int | None = 0, env: dict | None = None, fresh: bool = False) -> Job:
    job = Job(args, log, ranks=ranks, inject=inject, env=env, fresh=fresh)
    rc = job.wait(timeout)
    if expect_rc is not None:
        assert rc == expect_rc, f"exit code {rc}, expected {expect_rc}\n{job.tail()}"
    return job


def distill_args(teacher, shards, out, **extra) -> list[str]:
    """The matrix's tiny run: ZeRO-2 fp32 (bitwise reproducible on CPU), 4 x 2 micro-batches x 2 ranks = 16
    sequences per step, a checkpoint every 2 steps, all kept."""
    flags = dict(teacher=teacher, data=shards, out_dir=out, ds_config="ds_configs/cpu_zero2.json", max_steps=STEPS,
                 micro_batch_size_per_gpu=4, grad_accum_steps=2, lr=3e-3, warmup_frac=0.2, log_every=1,
                 eval_every=0, eval_batches=2, save_every=2, keep_last=10, seed=7, progress="false")
    flags.update(extra)
    return ["distill", *[x for k, v in flags.items() for x in (f"--{k}", str(v))]]


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """TensorBoard scalars of a run folder: tag -> {step: value} (purged steps of resumed runs dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def trace(folder: Path) -> dict[tuple[int, int], list[str]]:
    """(rank, optimizer step) -> sample fingerprints of that step's micro-batches, in order."""
    out: dict[tuple[int, int], list[str]] = {}
    for f in sorted(Path(folder).glob("rank*.jsonl")):
        rank = int(f.stem[4:])
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out.setdefault((rank, r["step"]), []).extend(r["rows"])
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def unfinish(run: Path) -> Path:
    """Make a finished run folder look interrupted after its last checkpoint (no metrics.json, no student/), so
    a relaunch takes the resume path: a finished run relaunched is decided before any checkpoint is read."""
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "student")
    return run


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_teacher_dir, tiny_shards_dir):  # noqa: F811
    """The uninterrupted run every interrupted one is compared with (with a per-sample trace)."""
    base = tmp_path_factory.mktemp("faults_ref")
    out = base / "run"
    run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out), base / "log.txt", inject={"trace": str(base / "trace")})
    return out, base / "trace"


LIFECYCLE_STEPS = 4  # max_steps of the lifecycle chain: checkpoints at 2 and 4


def snapshot(run: Path) -> dict[str, int]:
    """file -> mtime of a run folder (TensorBoard files aside): equal snapshots = nothing was written."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and "tb" not in p.parts}


def strict_json(path: Path) -> dict:
    """json.loads that refuses NaN/Infinity, as strict JSON parsers (jq, JavaScript) do."""
    def refuse(c):
        raise ValueError(f"{path}: {c} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="session")
def lifecycle_chain(tmp_path_factory, tiny_teacher_dir, tiny_shards_dir):  # noqa: F811
    """Issue #13's relaunch chain on one run folder (see tests/faults/test_lifecycle.py): the logs, exit codes and
    file snapshots of each launch, and a copy of the folder as job A left it (preempted, checkpoints 2 and 4)."""
    base = tmp_path_factory.mktemp("lifecycle")
    out = base / "run"
    args = distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=LIFECYCLE_STEPS)
    r = {"out": out, "base": base, "args": args}

    a = run_job(args, base / "a.log", env=fault_env(DSTRAIN_FAULT_SIGNAL_AT_STEP=str(LIFECYCLE_STEPS)))
    r["a_log"], r["a_preempted"] = a.output(), json.loads((out / "PREEMPTED").read_text())
    r["a_student"] = (out / "student").exists()
    r["preempted_copy"] = copy_run(out, base / "preempted_copy")  # for the checkpoint tests below
    final = out / "checkpoints" / f"step-{LIFECYCLE_STEPS:08d}"
    r["final_marker_mtime"] = (final / "COMPLETE").stat().st_mtime_ns

    b = run_job(args, base / "b.log", expect_rc=None)
    r["b_rc"], r["b_log"] = b.proc.returncode, b.output()
    r["b_final_marker_mtime"] = (final / "COMPLETE").stat().st_mtime_ns if (final / "COMPLETE").exists() else None
    r["done"] = snapshot(out)

    for name, extra in (("c", {}), ("d", {"lr": 1e-3}), ("e", {"max_steps": LIFECYCLE_STEPS + 2})):
        j = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, **{"max_steps": LIFECYCLE_STEPS, **extra}),
                    base / f"{name}.log", expect_rc=None)
        r[f"{name}_rc"], r[f"{name}_log"], r[f"{name}_after"] = j.proc.returncode, j.output(), snapshot(out)
    r["metrics_before_f"] = strict_json(out / "metrics.json")
    f = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, max_steps=LIFECYCLE_STEPS + 2, continue_finished="true"),
                base / "f.log", expect_rc=None)
    r["f_rc"], r["f_log"] = f.proc.returncode, f.output()
    return r
