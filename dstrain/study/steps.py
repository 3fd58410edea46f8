"""Run the study's steps as subprocesses of the project's own commands, cached in the run folder.

A step is one command line (`python dstrain/cli.py pretrain ...`, `python data_prep/build_shards.py ...`)
with an output folder, a file whose presence means "finished", and the steps it needs. The runner
starts ready steps up to `jobs` at a time, each with a fixed number of threads so results do not
depend on how busy the machine is, and records every step in `RUN/steps/NAME.json` (command, exit
code, wall seconds). A step whose "finished" file exists and whose recorded command line is the same
is skipped; a finished step whose command line changed is refused before anything runs.

On CPU a step is not a new interpreter but a fork of a step server that imported torch, transformers and
DeepSpeed once (dstrain/forked.py): each new interpreter spent about 7 of its 12-15 CPU-seconds on those imports,
about a seventh of a full study's budget. The fork then runs the step's script as `python SCRIPT ARGS` would
(`runpy`, as `__main__`, in the step's environment, threads and folder). On a GPU machine each step is a
new interpreter (forking a process that may have touched CUDA is not safe).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from dstrain.config import UserError, atomic_write_json
from dstrain.forked import become, preloaded_server, run_as_main
from dstrain.runtime import child_env, device_type

ROOT = Path(__file__).resolve().parent.parent.parent

@dataclasses.dataclass
class Step:
    """One command of the study."""

    name: str                 # short id, also the log file name: RUN/logs/NAME.log
    argv: list[str]           # program and arguments, program relative to the repository root
    out: Path                 # the step's output folder
    done_file: str            # path under `out` whose presence means the step finished
    needs: list[str] = dataclasses.field(default_factory=list)
    resumable: bool = False   # a half-done output folder is continued (trainers' --resume auto), not removed
    what: str = ""            # one line for the report: what this step is
    threads: int | None = None  # torch threads of this step (None: the runner's default)
    exclusive: bool = False   # run alone (the critical-path teacher, the timed benchmark)

    def done(self) -> bool:
        return (self.out / self.done_file).is_file()

    def shell(self, run_dir: Path) -> str:
        """The command as a user would type it from the repository root."""
        return " ".join(shlex.quote(_show(a, run_dir)) for a in ["python", *self.argv])


def _show(arg: str, run_dir: Path) -> str:
    """Paths inside the repository are shown relative to it, so the printed commands can be pasted."""
    if "," in arg:  # a comma list of paths (benchmark --models)
        return ",".join(_show(a, run_dir) for a in arg.split(","))
    try:
        p = Path(arg)
        if p.is_absolute():
            return str(p.relative_to(ROOT))
    except ValueError:
        pass
    return arg


def step_env(threads: int) -> dict[str, str]:
    # each step is its own world of one, not a rank of whatever launched the study
    env = child_env(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
                    PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if device_type() == "cpu":  # the steps run where this process would: DS_ACCELERATOR=cpu or no GPU
        env.setdefault("DS_ACCELERATOR", "cpu")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_cache(steps: list[Step], run_dir: Path) -> dict[str, str]:
    """{step: "cached" | "run"}; raise UserError if a finished step was made by another command line."""
    state, changed = {}, []
    for s in steps:
        rec = _record_path(run_dir, s.name)
        if s.done():
            old = json.loads(rec.read_text()).get("argv") if rec.is_file() else None
            if old != s.argv:
                changed.append(f"{s.name} ({_show(str(s.out), run_dir)})")
            state[s.name] = "cached"
        else:
            state[s.name] = "run"
    if changed:
        raise UserError(
            f"--out_dir {run_dir}: finished step(s) {', '.join(changed)} were made with other settings than "
            f"this study asks for. Use a new --out_dir, or delete those folders to redo them with the new settings "
            f"(later steps that used them must be deleted too).")
    return state


def _record_path(run_dir: Path, name: str) -> Path:
    return run_dir / "steps" / f"{name}.json"


def run_steps(steps: list[Step], run_dir: Path, *, jobs: int, threads: int,
              log: Callable[[str], None] = print) -> dict[str, dict]:
    """Run the steps that are not finished, `jobs` at a time in dependency order; return their records.

    Stops starting new steps at the first failure, waits for the running ones, then raises UserError
    naming the failed step, its command, its log file and the end of its log.
    """
    by_name = {s.name: s for s in steps}
    for s in steps:
        for n in s.needs:
            if n not in by_name:
                raise ValueError(f"step {s.name} needs unknown step {n}")
    state = check_cache(steps, run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    for s in steps:
        if state[s.name] == "cached":
            records[s.name] = dict(json.loads(_record_path(run_dir, s.name).read_text()), cached=True)
            log(f"[study] {s.name}: finished earlier, skipped ({_show(str(s.out), run_dir)})")
    pending = [s for s in steps if state[s.name] == "run"]
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    try:
        while pending or running:
            for name, (proc, t0, fh) in list(running.items()):
                rc, cpu_s = _reap(proc)
                if rc is None:
                    continue
                fh.close()
                del running[name]
                s, wall = by_name[name], time.time() - t0
                rec = {"name": name, "argv": s.argv, "command": s.shell(run_dir), "returncode": rc,
                       "wall_s": round(wall, 2), "cpu_s": cpu_s, "threads": s.threads or threads,
                       "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "cached": False}
                if rc == 0 and not s.done():
                    rec.update(returncode=-1, error=f"exited 0 but did not write {s.done_file}")
                records[name] = rec
                if rec["returncode"] == 0:
                    atomic_write_json(_record_path(run_dir, name), rec)
                    log(f"[study] {name}: done in {wall:.1f} s")
                else:
                    failed.append(name)
                    log(f"[study] {name}: FAILED (exit {rc}) after {wall:.1f} s; "
                        f"see {run_dir / 'logs' / (name + '.log')}")
            if not failed:
                for s in list(pending):
                    if len(running) >= jobs or any(by_name[n].exclusive for n in running):
                        break
                    if s.exclusive and running:
                        continue
                    if all(records.get(n, {}).get("returncode") == 0 for n in s.needs):
                        pending.remove(s)
                        running[s.name] = _start(s, run_dir, step_env(s.threads or threads), log)
                        if s.exclusive:
                            break
            if failed and not running:
                break
            if not failed and pending and not running:
                raise RuntimeError(f"study steps cannot start: {', '.join(s.name for s in pending)}")
            time.sleep(0.2)
    finally:
        for proc, _, fh in running.values():  # interrupted (Ctrl-C, an error): leave no step running
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            fh.close()
    if failed:
        name = failed[0]
        logf = run_dir / "logs" / f"{name}.log"
        tail = logf.read_text(errors="replace")[-3000:] if logf.is_file() else ""
        raise UserError(
            f"study step `{name}` failed; its command was:\n  {by_name[name].shell(run_dir)}\n"
            f"log: {logf}\n--- end of log ---\n{tail}\n--- fix the cause and rerun the same `study` command: "
            f"finished steps are skipped")
    return records


def _reap(proc) -> tuple[int | None, float | None]:
    """(exit code, CPU seconds user+sys of the step and its children) once it ended, else (None, None).

    The CPU time is what the step would take on an idle machine with one thread, whatever the load
    while it ran, so the report can say both."""
    if isinstance(proc, _ForkedStep):
        return proc.reap()
    if proc.returncode is not None:
        return proc.returncode, None
    try:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return proc.wait(), None
    if pid == 0:
        return None, None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, round(ru.ru_utime + ru.ru_stime, 2)


def _start(s: Step, run_dir: Path, env: dict[str, str], log: Callable[[str], None]):
    if s.out.exists() and not s.resumable:
        # A folder without the finished marker is what a killed earlier run left; the study owns it.
        shutil.rmtree(s.out)
    logf = open(run_dir / "logs" / f"{s.name}.log", "w")
    logf.write(f"$ {s.shell(run_dir)}\n")
    logf.flush()
    log(f"[study] {s.name}: {s.shell(run_dir)}")
    argv = [str(ROOT / a) if i == 0 else a for i, a in enumerate(s.argv)]
    if env.get("DS_ACCELERATOR") == "cpu":
        return _ForkedStep(argv, env, run_dir / "logs" / f"{s.name}.log"), time.time(), logf
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    return proc, time.time(), logf


def _step_main(argv: list[str], env: dict[str, str], log_path: str, cpu_path: str) -> None:
    """One step, in the forked process: `python ARGV` in the step's environment, output appended to its log."""
    become(env, ROOT, log_path)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(argv[0]))  # as `python SCRIPT` (become() added PYTHONPATH)
    code = run_as_main(lambda: runpy.run_path(argv[0], run_name="__main__"))
    cpu = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
    with open(cpu_path, "w") as f:
        f.write(f"{cpu:.2f}")
    os._exit(code)


class _ForkedStep:
    """A CPU step forked from the step server, with what the runner uses of Popen."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path):
        self.cpu_path = Path(str(log_path) + ".cpu")
        self.cpu_path.unlink(missing_ok=True)
        self.proc = preloaded_server(env).Process(target=_step_main, args=(argv, env, str(log_path), str(self.cpu_path)))
        self.proc.start()
        self.returncode: int | None = None

    def reap(self) -> tuple[int | None, float | None]:
        if self.returncode is None and self.proc.exitcode is None:
            return None, None
        self.returncode = self.proc.exitcode
        try:
            cpu = float(self.cpu_path.read_text())
            self.cpu_path.unlink()
        except (OSError, ValueError):
            cpu = None  # killed before it could say
        return self.returncode, cpu

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            raise subprocess.TimeoutExpired(f"study step {self.proc.pid}", timeout)
        return self.proc.exitcode
