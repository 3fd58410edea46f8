"""Run dstrain commands as real processes with N CPU ranks (DS_ACCELERATOR=cpu, gloo): by default each rank
forked from the tests' preloaded rank server (tests/zygote.py: the same `dstrain/cli.py` main, without paying
for the imports again), or with fresh=True exactly as users start them, `python dstrain/cli.py ...` or the
`deepspeed` launcher."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dstrain.runtime import child_env, free_port  # noqa: F401 (the tests' port picker too)

ROOT = Path(__file__).resolve().parent.parent
CLI = str(ROOT / "dstrain" / "cli.py")
BIN = Path(sys.executable).parent


def cpu_env(**extra: str) -> dict[str, str]:
    # child_env: not a MASTER_PORT that an in-process test's world of one left in this process
    return child_env(**{"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                        "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "CUDA_VISIBLE_DEVICES": "", **extra})


def run_cli(*args: str, ranks: int = 1, timeout: float = 600, check: bool = True, env: dict | None = None,
            cwd: str | os.PathLike | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """`dstrain/cli.py ARGS` with `ranks` ranks; stdout and stderr of all ranks captured as text.

    fresh=False: ranks forked from the rank server (tests/zygote.py), supervised as the deepspeed launcher
    does. fresh=True: `python dstrain/cli.py ARGS` (ranks=1) or `deepspeed --num_gpus RANKS dstrain/cli.py
    ARGS`, for what only a new interpreter or the launcher shows (its output, imports at start-up).
    Returns the CompletedProcess. With check=True a non-zero exit raises AssertionError showing the tail of
    the output.
    """
    env = env or cpu_env()
    if not fresh:
        from tests.zygote import ForkedRanks

        cmd = [f"<{ranks} forked rank(s)>", CLI, *args]
        with tempfile.TemporaryDirectory(prefix="dstrain-ranks-") as d:
            job = ForkedRanks(list(args), ranks, env, f"{d}/stdout", f"{d}/stderr", cwd or ROOT)
            try:
                rc = job.wait(timeout)
            except TimeoutError:
                job.kill()
                raise subprocess.TimeoutExpired(cmd, timeout) from None
            proc = subprocess.CompletedProcess(cmd, rc, Path(f"{d}/stdout").read_text(errors="replace"),
                                               Path(f"{d}/stderr").read_text(errors="replace"))
    else:
        if ranks == 1:
            cmd = [sys.executable, CLI, *args]
        else:
            cmd = [str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", str(ranks),
                   "--master_port", str(free_port()), CLI, *args]
        proc = subprocess.run(cmd, env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc
