"""Processes forked from a server that has imported the heavy libraries once, instead of new interpreters.

A new Python process that imports torch, transformers and DeepSpeed spends about 6-7 CPU-seconds on that
before its first line of work. Where one command starts many short processes on one machine (the study's
steps; the tests' ranks), a multiprocessing "forkserver" that imported them once forks each process instead.
Each fork then takes its own environment, folder, threads and output files (`become`) and runs its body as a
process's main (`run_as_main`), so the body sees what a new interpreter would give it.

One forkserver per process (multiprocessing's): the first caller's preload list and environment win. Only
for CPU work: a fork of a process that may have touched CUDA is not safe.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import traceback
from typing import Callable

# What dstrain's processes import beyond the standard library (`python -X importtime` of distill, finetune and the
# study's steps). DeepSpeed's Muon module is imported by ZeRO at its first gradient reduction and pulls in
# torch._inductor (1.7 CPU-s). Never dstrain itself: each fork imports it fresh.
PRELOAD = ["torch", "transformers.models.bert.modeling_bert", "deepspeed", "deepspeed.runtime.zero.muon.muon_optimizer",
           "torch.utils.tensorboard", "webdataset", "tokenizers", "scipy.stats", "sklearn.metrics", "fire"]
_ctx = None


def preloaded_server(env: dict[str, str], preload: list[str] = PRELOAD):
    """The "forkserver" multiprocessing context, its server started on first use in `env` (the libraries read
    some variables once, at import: DS_ACCELERATOR, HF_HUB_OFFLINE, OMP_NUM_THREADS) after importing `preload`."""
    global _ctx
    if _ctx is None:
        from multiprocessing import forkserver

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _ctx = ctx
    return _ctx


def become(env: dict[str, str], cwd: str | os.PathLike, out_path: str, err_path: str | None = None) -> None:
    """In the fork: this environment and folder (its PYTHONPATH first on sys.path, as at interpreter start),
    stdout and stderr appended to these files, and the torch threads OMP_NUM_THREADS asks for (OpenMP read the
    variable once, in the server)."""
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    os.chdir(cwd)
    for path, fd in ((out_path, 1), (err_path or out_path, 2)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(f, fd)
        os.close(f)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or 1))


def run_as_main(body: Callable[[], object]) -> int:
    """Run body() as a process's main and return its exit code, as the interpreter would: SystemExit's code,
    1 with the traceback on stderr for an exception, then the atexit handlers, then flushed std streams."""
    code = 1
    try:
        body()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    return code
