"""The DeepSpeed settings dstrain derives that cost nothing: throughput timer off, no overlap_comm in a world of one."""

from __future__ import annotations

import json
from pathlib import Path

from dstrain.runtime import resolve_ds_config

ROOT = Path(__file__).resolve().parents[2]


def _resolve(world: int, **over):
    ds = {**json.loads((ROOT / "ds_configs" / "zero2_fp16.json").read_text()), **over}
    cfg, _ = resolve_ds_config(ds, micro_batch_size_per_gpu=4, grad_accum_steps=2, global_batch_size=8 * world,
                               precision="bf16", device_type="cpu")
    return cfg


def test_one_gpu_has_no_overlap_comm_and_no_throughput_timer():
    one = _resolve(1)
    assert one["zero_optimization"]["overlap_comm"] is False  # the shipped file says true
    assert one["timers"] == {"throughput": {"enabled": False}}
    # DeepSpeed reads it as we mean it
    from deepspeed.utils.config import get_timers_config

    assert get_timers_config(one).enabled is False


def test_several_ranks_keep_overlap_comm_and_a_file_can_turn_the_timer_on():
    assert _resolve(2)["zero_optimization"]["overlap_comm"] is True
    assert _resolve(1, timers={"throughput": {"enabled": True}})["timers"]["throughput"]["enabled"] is True
