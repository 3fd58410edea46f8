"""Timing and memory measurement, with models interleaved so that their ratio survives a noisy machine.

A machine shared with other jobs speeds up and slows down over seconds. Timing model A for a minute and
then model B puts that drift into the A/B ratio; timing A, B, A, B, ... call by call exposes both to the
same drift, and the per-call paired ratio t_A[i] / t_B[i] cancels most of it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger("dstrain.benchmark")


def sync_fn(device: str) -> Callable[[], None]:
    import torch

    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def time_interleaved(calls: Sequence[Callable[[int], object]], n_inputs: int, warmup: int, repeats: int,
                     device: str = "cpu") -> list[np.ndarray]:
    """Seconds per call for every callable, measured alternately.

    calls[m](i) runs model m on input i (0 <= i < n_inputs). After `warmup` untimed rounds, each of the
    `repeats` rounds runs every input once on every model, the models taking turns call by call, their
    order reversed every other round (so neither always runs right after the other's cache traffic).
    Returns one array of shape (repeats, n_inputs) per model. On CUDA every call is bracketed by CUDA
    events and the device is synchronised before the next model runs.
    """
    import torch

    cuda = device == "cuda"
    sync = sync_fn(device)
    for _ in range(warmup):
        for i in range(n_inputs):
            for c in calls:
                c(i)
    sync()
    out = [np.zeros((repeats, n_inputs)) for _ in calls]
    t_start = time.perf_counter()
    for r in range(repeats):
        if r and time.perf_counter() - t_start > 10:  # long runs (the STS-B-like passes) show progress
            log.info("timed round %d/%d", r + 1, repeats)
        order = list(range(len(calls))) if r % 2 == 0 else list(range(len(calls)))[::-1]
        for i in range(n_inputs):
            for m in order:
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    calls[m](i)
                    end.record()
                    end.synchronize()
                    out[m][r, i] = start.elapsed_time(end) / 1e3
                else:
                    t0 = time.perf_counter()
                    calls[m](i)
                    out[m][r, i] = time.perf_counter() - t0
    return out


def percentiles(samples: np.ndarray) -> dict[str, float]:
    """p50/p90/p99/mean/min of seconds, in milliseconds."""
    s = np.asarray(samples, dtype=float).ravel() * 1e3
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(s.mean()),
            "min_ms": float(s.min()), "n": int(s.size)}


def paired_ratio(ref: np.ndarray, other: np.ndarray) -> float:
    """Median over calls of t_ref / t_other: how many times faster `other` is than `ref`."""
    return float(np.median(np.asarray(ref).ravel() / np.asarray(other).ravel()))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Give freed heap back to the OS so an earlier, larger run does not hide this run's growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(call: Callable[[], object], device: str = "cpu") -> dict[str, int | None]:
    """Peak memory while `call()` runs once.

    CPU: resident-set growth, peak RSS (VmHWM, reset before the call) minus RSS just before; the model's
    weights are already resident and so not included. CUDA: torch.cuda.max_memory_allocated() after a
    reset (weights included) and its growth over the memory allocated before the call.
    """
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"peak_mem_bytes": int(peak), "peak_mem_delta_bytes": int(peak - before)}
    _trim()
    if not _reset_hwm():
        return {"peak_mem_bytes": None, "peak_mem_delta_bytes": None}
    before = _rss_bytes()
    call()
    peak = _hwm_bytes()
    return {"peak_mem_bytes": int(peak), "peak_mem_delta_bytes": int(max(peak - before, 0))}
