"""Training metrics by name: loss terms summed on the device, read back and reduced over ranks only at log
steps (a read is a host sync: tests/train/test_step_sync.py), and metrics.json written as strict JSON."""

from __future__ import annotations

import math
from typing import Any

import torch


def reduce_by_name(values: dict[str, Any], device: torch.device, world_size: int) -> dict[str, float]:
    """Sum each named value over the ranks in one all-reduce and read it back: {name: float}.

    `values` holds 0-d device tensors or host numbers; every rank must pass the same names in the same order.
    The device values are stacked and the host numbers copied over as one tensor (this runs every step)."""
    dev = [k for k, v in values.items() if torch.is_tensor(v)]
    host = [k for k in values if k not in dev]
    parts = []
    if dev:
        parts.append(torch.stack([values[k].detach().float().reshape(()) for k in dev]).to(device))
    if host:
        parts.append(torch.tensor([float(values[k]) for k in host], device=device))
    t = torch.cat(parts)
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return dict(zip(dev + host, t.tolist()))


class LossMeter:
    """The loss terms ("total" and one per loss term) of the current step and of the log window.

    add() per micro-step, end_step() per optimizer step, read() at a log step: the window's mean per step
    and the last step's terms, averaged over ranks. Until read() nothing leaves the device."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self._micro: dict[str, torch.Tensor] | None = None  # sums over the step's micro-steps
        self._micro_n = 0
        self.step: dict[str, torch.Tensor] | None = None  # the last step's mean terms
        self._window: dict[str, torch.Tensor] | None = None  # sums of step means since the last read
        self._window_n = 0

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        vals = {"total": total, **terms}
        vals = {k: vals[k].float() if k in vals else total.new_zeros((), dtype=torch.float32) for k in self.names}
        self._micro = vals if self._micro is None else {k: self._micro[k] + vals[k] for k in self.names}
        self._micro_n += 1

    def end_step(self) -> torch.Tensor:
        """Close the step; returns a device flag (0-d bool): some term of some micro-step was not finite."""
        self.step = {k: v / self._micro_n for k, v in self._micro.items()}
        self._window = self.step if self._window is None else {k: self._window[k] + self.step[k] for k in self.names}
        self._window_n += 1
        self._micro, self._micro_n = None, 0
        return torch.stack(list(self.step.values())).isfinite().all().logical_not()

    def read(self, device: torch.device, world_size: int) -> tuple[dict[str, float], dict[str, float]]:
        """(window mean, last step), each {name: float} averaged over ranks; starts a new window."""
        vals = {**{f"window/{k}": v / self._window_n for k, v in self._window.items()},
                **{f"step/{k}": v for k, v in self.step.items()}}
        red = reduce_by_name(vals, device, world_size)
        self._window, self._window_n = None, 0
        return ({k: red[f"window/{k}"] / world_size for k in self.names},
                {k: red[f"step/{k}"] / world_size for k in self.names})


def strict_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """`m` as strict JSON can hold it: a non-finite number becomes null and is named in "nonfinite"."""
    bad = {k: repr(v) for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
    out = {k: (None if k in bad else v) for k, v in m.items()}
    if bad:
        out["nonfinite"] = {k: f"{v} (not a number JSON can hold)" for k, v in bad.items()}
    return out
