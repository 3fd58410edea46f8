"""Run dstrain commands the way users do, as real subprocesses: `python dstrain/cli.py ...` or the
`deepspeed` launcher with N CPU ranks (DS_ACCELERATOR=cpu, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
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
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`python dstrain/cli.py ARGS` (ranks=1) or `deepspeed --num_gpus RANKS dstrain/cli.py ARGS`.

    Returns the CompletedProcess (stdout and stderr captured as text). With check=True a non-zero
    exit raises AssertionError showing the tail of the output.
    """
    if ranks == 1:
        cmd = [sys.executable, CLI, *args]
    else:
        cmd = [str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", str(ranks),
               "--master_port", str(free_port()), CLI, *args]
    proc = subprocess.run(cmd, env=env or cpu_env(), cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc
