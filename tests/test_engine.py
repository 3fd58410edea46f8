"""dstrain.engine: the engine setup distill/pretrain and finetune share."""

from __future__ import annotations

import math

import pytest

from dstrain.engine import engine_ds_config, linear_schedule, log_scalars, param_groups, tb_writer


def _old_distill_lr_lambda(max_steps, warmup_frac):
    """dstrain/train/run.py:lr_lambda before issue #14 (style dstrain), verbatim."""
    w = int(round(warmup_frac * max_steps))
    return lambda s: (s + 1) / w if s < w else max(0.0, (max_steps - s) / max(1, max_steps - w))


def _old_finetune_factor(total_steps, warmup_ratio):
    """dstrain/finetune/run.py:_make_optimizer's factor before issue #14, verbatim."""
    warmup = int(warmup_ratio * total_steps)
    return lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))


@pytest.mark.parametrize("steps,frac", [(10, 0.05), (10, 0.25), (30, 0.05), (100, 0.1), (7, 0.3), (1, 0.0), (50, 0.0)])
def test_one_schedule_keeps_each_commands_numbers(steps, frac):
    """distill rounds the warmup length, finetune floors it (10 x 0.25: 2 vs 2, 30 x 0.05: 2 vs 1, 7 x 0.3: 2 vs 2,
    10 x 0.05: 0 vs 0); each keeps its own through the named `warmup_rounding`."""
    rounded, floored = linear_schedule(steps, frac), linear_schedule(steps, frac, warmup_rounding="floor")
    old_r, old_f = _old_distill_lr_lambda(steps, frac), _old_finetune_factor(steps, frac)
    assert [rounded(s) for s in range(steps + 2)] == [old_r(s) for s in range(steps + 2)]
    assert [floored(s) for s in range(steps + 2)] == [old_f(s) for s in range(steps + 2)]


def test_the_roundings_differ_where_they_should():
    assert [linear_schedule(30, 0.05)(s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]  # W = round(1.5) = 2
    assert [linear_schedule(30, 0.05, warmup_rounding="floor")(s) for s in (0, 1, 2)] == [1.0, 1.0, 28 / 29]  # W = 1
    with pytest.raises(ValueError, match="warmup_rounding"):
        linear_schedule(30, 0.05, warmup_rounding="ceil")


def test_param_groups_no_decay_on_biases_and_layernorm():
    from transformers import BertConfig, BertForSequenceClassification

    m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32))
    decay, no_decay = param_groups(m, 0.01)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    # finetune's old rule: 1-D, or a LayerNorm by name; the same set on a BERT
    assert nd == {n for n, p in m.named_parameters() if p.ndim < 2 or "LayerNorm" in n}
    assert "bert.embeddings.LayerNorm.weight" in nd and "classifier.bias" in nd
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_engine_ds_config_adds_dstrain_settings():
    bf = engine_ds_config({"bf16": {"enabled": True}, "steps_per_print": 5}, "bf16")
    assert bf == {"bf16": {"enabled": True, "check_grad_overflow": True}, "steps_per_print": 5}
    ft = engine_ds_config({"bf16": {"enabled": True}}, "bf16", skip_nonfinite_bf16=False)
    assert ft == {"bf16": {"enabled": True}, "steps_per_print": 10**9}
    assert "zero_allow_untested_optimizer" not in engine_ds_config({}, "fp32")


def test_log_scalars_on_rank0_skips_none_and_logs_nonfinite_as_nan(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert tb_writer(tmp_path / "other", is_main=False) is None
    log_scalars(None, {"a": 1.0}, 1)  # a rank without a writer: nothing, no error
    w = tb_writer(tmp_path / "tb", is_main=True)
    log_scalars(w, {"a": 1.5, "b": None, "c": float("inf"), "d": 3}, 4)
    w.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert sorted(ea.Tags()["scalars"]) == ["a", "c", "d"]
    assert [(e.step, e.value) for e in ea.Scalars("a")] == [(4, 1.5)]
    assert math.isnan(ea.Scalars("c")[0].value)
    assert not (tmp_path / "other").exists()
