"""Case 9: the loss turns NaN from step 4 on (DSTRAIN_FAULT_NAN_FROM_STEP, the trainer's own injection), bf16
with 2 ranks under ZeRO-3 (the shipped ds_configs/zero3_bf16.json, which runs as bf16 on CPU): the steps are skipped and counted, the LR schedule stands still, and after --max_bad_steps the
run stops with a message and a diverged-* checkpoint, leaving `latest` on the last good one.
(fp16 loss-scale overflow needs a GPU: DeepSpeed's CPU accelerator has no fp16 loss scaler.)"""

from __future__ import annotations

import json
import math

from dstrain.checkpoint import Checkpointer, verify
from tests.faults.conftest import distill_args, fault_env, run_job, scalars


def test_case9_nan_steps_skipped_counted_then_stop_without_touching_the_good_checkpoint(tmp_path, tiny_teacher_dir,
                                                                                        tiny_shards_dir):
    out = tmp_path / "run"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, precision="bf16", max_bad_steps=3,
                                       ds_config="ds_configs/zero3_bf16.json"),
                  tmp_path / "log.txt", env=fault_env(DSTRAIN_FAULT_NAN_FROM_STEP="4"), expect_rc=2)
    log = job.output()
    assert "dstrain: error: training diverged: 3 consecutive steps (4..6)" in log
    assert "Traceback" not in log
    ck = out / "checkpoints"
    assert (ck / "latest").read_text() == "step-00000002" and verify(ck / "step-00000002") is None
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-00000002"]  # no bad step saved as a normal one
    assert verify(ck / "diverged-step-00000006") is None  # the diverged state, kept for inspection
    assert "diverged-step-00000006" in (out / "DIVERGED").read_text()
    assert Checkpointer(out, 10, 0, 2).find_resume() == "step-00000002"  # what a relaunch would resume from
    sc = scalars(out)
    assert [sc["train/skipped_steps"][s] for s in (3, 4, 5, 6)] == [0, 1, 2, 3]
    assert sc["train/lr"][3] == sc["train/lr"][4] == sc["train/lr"][5] == sc["train/lr"][6]
    assert sc["train/lr"][2] != sc["train/lr"][3]  # it did move while the steps were good
    assert math.isfinite(sc["train/loss_total"][2])  # finite before the fault (bf16 works)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["precision_used"] == "bf16" and cfg["deepspeed"]["zero_optimization"]["stage"] == 3
