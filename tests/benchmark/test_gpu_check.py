"""perf/gpu_check.sh --dry-run: the GPU check's script runs end to end on CPU with tiny sizes (its grid through
the real DeepSpeed step, eager, dynamo-traced and bare; the sync and fp16 sections as they would start), so the
one device call it is written for does not fail on a typo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.launch import cpu_env

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    env = cpu_env(OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "perf" / "gpu_check.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["dry_run"] and "errors" not in res, res.get("errors")
    kinds = {r["kind"] for r in res["grid"]}
    assert kinds == {"deepspeed", "deepspeed+compile", "bare"}
    for r in res["grid"]:
        assert r["tokens_per_s"] > 0 and r["flops_per_step"] > 0 and r["mfu"] is None  # no peak on CPU
    assert res["sync"].startswith("skipped")
    assert set(res["fp16"]) == {"teacher_rc", "overflow", "min_scale_stop", "finetune_gpu_json"}
    log = (tmp_path / "gpu_check.log").read_text()
    assert "ds_configs/finetune_gpu.json" in log and "DSTRAIN_FAULT" not in log  # the commands it would run
    assert "| bf16 | 16 | 2 | deepspeed+compile |" in log
