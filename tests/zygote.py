"""Rank processes forked from a preloaded interpreter instead of started fresh, so the suite does not pay for
the same imports a hundred times.

A `python dstrain/cli.py` process spends about 6 CPU-s importing torch, transformers and DeepSpeed before its
first step, and the `deepspeed` launcher adds two interpreters of its own (about 3 CPU-s) to every 2-rank
launch. With about 100 launches on 2 cores that was most of the suite's time. Here a multiprocessing
forkserver started once per test process imports those libraries (dstrain/forked.py's `PRELOAD`, the same
server the study's steps use); each rank is a fork of it that
takes the environment a launcher gives its ranks (RANK, WORLD_SIZE, MASTER_ADDR, ...), starts the way the
interpreter would (a `sitecustomize` on PYTHONPATH is imported first: tests/faults/inject), runs
`dstrain.cli.main(argv)`, then the atexit handlers, and exits with main's exit code.

What still runs for real: every rank is its own process, with its own gloo process group, DeepSpeed engine,
files, signals and exit code; dstrain itself is imported fresh in each rank (never preloaded), so nothing of
a run is shared. What does not: the interpreter's start and the deepspeed launcher. `ForkedRanks` supervises
the ranks the way deepspeed.launcher.launch does (a rank that exits non-zero: the others get SIGTERM, then
SIGKILL 30 s later, and that exit code is the job's). Tests about the launcher itself (its output, Ctrl-C
through it, a rank's death seen by it) and the Slurm tests start real launchers (`fresh=True`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from dstrain.forked import become, preloaded_server, run_as_main

ROOT = Path(__file__).resolve().parent.parent
TERM_GRACE_S = 30.0  # deepspeed.launcher.launch: SIGTERM, then SIGKILL to ranks alive 30 s later
# Forked ranks run at a lower priority (nice 5, a third of the CPU share of a default process when both want it):
# the suite's longest serial chain, the quick study (tests/study), starts its driver fresh and its steps from
# the driver's own step server, and otherwise waits behind the many short forked jobs of the other workers.
NICE = 5


def _sitecustomize(pythonpath: str) -> None:
    """What interpreter start-up does: import `sitecustomize` from the first PYTHONPATH entry that has one."""
    for entry in filter(None, pythonpath.split(os.pathsep)):
        path = Path(entry) / "sitecustomize.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("sitecustomize", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
            return


def _rank_main(entry: str, argv: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    """Body of one rank (in the forked child): the environment, stdout/stderr to the job's files, then
    entry(argv) ("module:function", dstrain's CLI main unless a test of this module asks otherwise)."""
    become(env, cwd, out_path, err_path)
    os.nice(NICE)

    def body():
        _sitecustomize(env.get("PYTHONPATH", ""))
        sys.argv = [str(ROOT / "dstrain" / "cli.py"), *argv]
        module, func = entry.split(":")
        getattr(importlib.import_module(module), func)(argv)

    os._exit(run_as_main(body))


class ForkedRanks:
    """A job of `ranks` processes running `dstrain/cli.py ARGV`, forked from the preloaded server."""

    def __init__(self, argv: list[str], ranks: int, env: dict[str, str], out_path: str | os.PathLike,
                 err_path: str | os.PathLike | None = None, cwd: str | os.PathLike = ROOT,
                 entry: str = "dstrain.cli:main"):
        from tests.launch import free_port

        ctx = preloaded_server(env)
        err_path = err_path or out_path
        for p in {str(out_path), str(err_path)}:
            open(p, "w").close()
        world = {}
        if ranks > 1:
            world = dict(WORLD_SIZE=str(ranks), LOCAL_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(free_port()), CROSS_RANK="0", CROSS_SIZE="1")
        self.procs = []
        for r in range(ranks):
            rank_env = {**env, **world, **({"RANK": str(r), "LOCAL_RANK": str(r)} if ranks > 1 else {})}
            p = ctx.Process(target=_rank_main, args=(entry, [str(a) for a in argv], rank_env, str(cwd), str(out_path),
                                                     str(err_path)), daemon=False)
            p.start()
            self.procs.append(p)
        self.pids = [p.pid for p in self.procs]
        self.returncode: int | None = None
        self._failed: int | None = None

    def poll(self) -> int | None:
        """The job's exit code once every rank has ended, else None; a failed rank ends the others."""
        if self.returncode is not None:
            return self.returncode
        codes = [p.exitcode for p in self.procs]
        bad = next((c for c in codes if c not in (None, 0)), None)
        if bad is not None and self._failed is None:
            self._failed = bad
            self._end_others()
            codes = [p.exitcode for p in self.procs]
        if all(c is not None for c in codes):
            self.returncode = self._failed if self._failed is not None else 0
            return self.returncode
        return None

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"ranks {self.pids} still running after {timeout}s")
            time.sleep(0.05)
        return rc

    def _trees(self) -> list[psutil.Process]:
        out = []
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                out += [*p.children(recursive=True), p]
            except psutil.NoSuchProcess:
                pass
        return out

    def _end_others(self) -> None:
        procs = self._trees()
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
        for p in alive:
            p.kill()
        for p in self.procs:
            p.join(5)

    def kill(self) -> None:
        for p in self._trees():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        for p in self.procs:
            p.join(10)
