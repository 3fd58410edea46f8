"""Case 11: bad configuration is rejected on every rank before anything starts: no process group, no run
folder, exit code 2 and a message naming the setting. One real 2-rank launch, with the error only a world of
2 shows (the batch arithmetic); the other checks (a misspelled DeepSpeed key, an unknown flag, ...) run
in-process in tests/train/test_errors.py and tests/test_cli.py, through the same `prepare()`."""

from __future__ import annotations

import json

import pytest

from tests.faults.conftest import distill_args, run_job


@pytest.mark.parametrize("case", ["contradictory_batch"])
def test_case11_rejected_before_anything_starts(case, tmp_path, tiny_teacher_dir, tiny_shards_dir):
    out = tmp_path / "run"
    extra, expect = {}, ""
    if case == "misspelled_ds_key":
        ds = tmp_path / "ds.json"
        # DeepSpeed itself would ignore the misspelled section and silently train without ZeRO
        ds.write_text(json.dumps({"zero_optimisation": {"stage": 2}}))
        extra, expect = {"ds_config": ds}, 'unknown top-level key(s) "zero_optimisation" (did you mean "zero_optimization"?)'
    elif case == "contradictory_batch":
        extra = {"global_batch_size": 12}  # with micro 4 x accumulation 2 x 2 ranks = 16
        expect = "batch settings disagree: micro_batch_size_per_gpu 4 x grad_accum_steps 2 x world size 2 = 16"
    else:
        extra, expect = {"max_step": 5}, "--max_step (did you mean --max_steps?)"
    job = run_job(distill_args(tiny_teacher_dir, tiny_shards_dir, out, **extra), tmp_path / "log.txt", expect_rc=2)
    log = job.output()
    assert log.count("dstrain: error:") >= 1 and expect in log, log[-3000:]
    assert "Traceback" not in log
    assert not out.exists()
