"""Every shipped DeepSpeed file in ds_configs/: valid, resolvable on CPU, and accepted by a real DeepSpeed engine.

The full trainer runs each of them elsewhere in the suite (cpu_zero2: tests/faults and tests/train/test_errors;
cpu_zero3, zero3_bf16 and zero2_fp16 (as bf16 on CPU): tests/train/test_distill_e2e; finetune_cpu: the finetune
default on CPU, tests/finetune/test_e2e). Here one subprocess builds a DeepSpeed engine from each file as
dstrain resolves it and takes one optimizer step: seconds for all, where a distill run per file would cost
about 25 s each on the shared 2 cores.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dstrain.config import ConfigError
from dstrain.runtime import BATCH_KEYS, load_ds_config, resolve_ds_config
from tests.launch import ROOT, cpu_env

CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
BATCH = dict(micro_batch_size_per_gpu=2, grad_accum_steps=3, global_batch_size=6)


def test_the_shipped_set():
    assert [p.name for p in CONFIGS] == ["cpu_zero2.json", "cpu_zero3.json", "finetune_cpu.json", "finetune_gpu.json",
                                         "zero2_fp16.json", "zero3_bf16.json"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_valid_and_resolves_on_cpu(path: Path):
    raw = json.loads(path.read_text())
    assert isinstance(raw, dict)
    assert isinstance(raw.get("comment"), str) and raw["comment"], "say in \"comment\" what the file is for"
    cfg = load_ds_config(path)  # known keys only, a zero_optimization section DeepSpeed accepts
    stage = cfg["zero_optimization"]["stage"]
    assert stage in (0, 1, 2, 3)
    # dstrain owns the batch arithmetic and the optimizer; the files may only leave them to it
    assert all(cfg.get(k, "auto") == "auto" for k in BATCH_KEYS)
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert not (cfg.get("fp16", {}).get("enabled") and cfg.get("bf16", {}).get("enabled"))
    if path.name.startswith("finetune_"):
        assert stage < 3  # finetune refuses ZeRO-3 (it saves and evaluates whole parameters)

    resolved, precision = resolve_ds_config(cfg, **BATCH, device_type="cpu", gradient_clipping=1.0)
    assert precision in ("fp32", "bf16")  # what a CPU runs; fp16 files become bf16
    assert (resolved["train_batch_size"], resolved["train_micro_batch_size_per_gpu"],
            resolved["gradient_accumulation_steps"]) == (6, 2, 3)
    assert resolved["bf16"]["enabled"] == (precision == "bf16") and resolved["fp16"]["enabled"] is False
    assert "comment" not in resolved  # ours, not DeepSpeed's


def test_a_batch_size_fixed_in_the_file_that_disagrees_is_refused():
    cfg = load_ds_config(ROOT / "ds_configs" / "cpu_zero2.json") | {"train_micro_batch_size_per_gpu": 4}
    with pytest.raises(ConfigError, match='ds_config sets "train_micro_batch_size_per_gpu": 4 but the run uses 2'):
        resolve_ds_config(cfg, **BATCH, device_type="cpu")


def test_each_file_builds_a_deepspeed_engine_on_cpu(tmp_path):
    """One process, a world of one: deepspeed.initialize with each resolved file and one optimizer step."""
    script = tmp_path / "engines.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import deepspeed, torch
        from dstrain.runtime import init_distributed, load_ds_config, resolve_ds_config
        init_distributed()
        for path in {[str(p) for p in CONFIGS]!r}:
            cfg, precision = resolve_ds_config(load_ds_config(path), micro_batch_size_per_gpu=2, grad_accum_steps=1,
                                               global_batch_size=2, device_type="cpu", gradient_clipping=1.0)
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
            x = torch.randn(2, 8, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
            loss = engine(x).float().pow(2).mean()
            engine.backward(loss)
            engine.step()
            print("OK", path.rsplit("/", 1)[1], precision, engine.zero_optimization_stage(), engine.global_steps,
                  flush=True)
        torch.distributed.destroy_process_group()
    """))
    proc = subprocess.run([sys.executable, str(script)], env=cpu_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ok = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("OK ")]
    stages = {p.name: str(json.loads(p.read_text())["zero_optimization"]["stage"]) for p in CONFIGS}
    assert [(name, stage, steps) for name, _, stage, steps in ok] == [(p.name, stages[p.name], "1") for p in CONFIGS]
