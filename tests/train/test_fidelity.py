"""`--recipe reference` reproduces the reference DistilBERT code where dstrain's defaults differ (docs/FIDELITY.md).

Each test transcribes the reference's formula (Hugging Face transformers, examples/research_projects/distillation:
distiller.py, train.py, scripts/extract_distilbert.py, training_configs/distilbert-base-uncased.json) and
compares it with dstrain on the same tensors. The mask count is pinned in tests/data/test_masking.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, DistilBertForMaskedLM, RobertaConfig, RobertaForMaskedLM

from dstrain.config import ConfigError, build_config
from dstrain.models import build_student, mlm_forward, student_config_from_teacher
from dstrain.engine import linear_schedule
from dstrain.train.config import DistillConfig, PretrainConfig
from tests.launch import run_cli

BASE = dict(data="shards", out_dir="run", teacher="t")
RECIPE_KEYS = ("mask_count", "copy_vocab_transform", "student_dropout", "warmup_style", "layer_map")


def _bert(layers=4, dropout=0.0):
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=80, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=dropout,
                                      attention_probs_dropout_prob=dropout)).eval()


def _reference_extract(state_dict, layers, vocab_transform: bool):
    """scripts/extract_distilbert.py, transcribed (prefix "bert", the teacher layers given)."""
    prefix, compressed_sd = "bert", {}
    for w in ["word_embeddings", "position_embeddings"]:
        compressed_sd[f"distilbert.embeddings.{w}.weight"] = state_dict[f"{prefix}.embeddings.{w}.weight"]
    for w in ["weight", "bias"]:
        compressed_sd[f"distilbert.embeddings.LayerNorm.{w}"] = state_dict[f"{prefix}.embeddings.LayerNorm.{w}"]
    names = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
             "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
             "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
             "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}
    for std_idx, teacher_idx in enumerate(layers):
        for w in ["weight", "bias"]:
            for s, t in names.items():
                compressed_sd[f"distilbert.transformer.layer.{std_idx}.{s}.{w}"] = \
                    state_dict[f"{prefix}.encoder.layer.{teacher_idx}.{t}.{w}"]
    compressed_sd["vocab_projector.weight"] = state_dict["cls.predictions.decoder.weight"]
    compressed_sd["vocab_projector.bias"] = state_dict["cls.predictions.bias"]
    if vocab_transform:
        for w in ["weight", "bias"]:
            compressed_sd[f"vocab_transform.{w}"] = state_dict[f"cls.predictions.transform.dense.{w}"]
            compressed_sd[f"vocab_layer_norm.{w}"] = state_dict[f"cls.predictions.transform.LayerNorm.{w}"]
    return compressed_sd


def _reference_student(teacher, layers, vocab_transform, seed, dropout=None):
    """What train.py trains: the student class built from its config (same seed for the random parts),
    then the extracted weights loaded over it (`from_pretrained(student_pretrained_weights)`)."""
    scfg = student_config_from_teacher(teacher.config, len(layers), dropout)
    torch.manual_seed(seed)
    s = DistilBertForMaskedLM(scfg)
    sd = _reference_extract(teacher.state_dict(), layers, vocab_transform)
    s.load_state_dict(sd, strict=False)
    return s, sd


# ------------------------------------------------------------------------------------------------- recipe
def test_recipe_fills_the_defaults_and_explicit_flags_win():
    ours = build_config(DistillConfig, dict(BASE))
    assert [getattr(ours, k) for k in RECIPE_KEYS] == ["nonspecial", True, "teacher", "dstrain", "even"]
    ref = build_config(DistillConfig, dict(BASE, recipe="reference"))
    assert [getattr(ref, k) for k in RECIPE_KEYS] == ["reference", False, "0.1", "reference", "reference"]
    # an explicit flag beats the recipe, whichever way round, and leaves the recipe's other settings alone
    mixed = build_config(DistillConfig, dict(BASE, recipe="reference", layer_map="even", copy_vocab_transform=True))
    assert [getattr(mixed, k) for k in RECIPE_KEYS] == ["reference", True, "0.1", "reference", "even"]
    mixed = build_config(DistillConfig, dict(BASE, mask_count="reference", student_dropout=0.2))
    assert [getattr(mixed, k) for k in RECIPE_KEYS] == ["reference", True, "0.2", "dstrain", "even"]
    # pretrain has no recipe but the same two trainer settings, with dstrain's defaults
    pre = build_config(PretrainConfig, dict(data="s", out_dir="r"))
    assert (pre.mask_count, pre.warmup_style) == ("nonspecial", "dstrain")


def test_recipe_settings_from_a_config_file_win_over_the_recipe(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"recipe": "reference", "warmup_style": "dstrain"}))
    cfg = build_config(DistillConfig, dict(BASE, config=str(f)))
    assert cfg.warmup_style == "dstrain" and cfg.mask_count == "reference"


@pytest.mark.parametrize("flags, needle", [
    (dict(recipe="paper"), "--recipe 'paper': unknown; choose dstrain or reference"),
    (dict(mask_count="all"), "--mask_count: must be nonspecial or reference"),
    (dict(warmup_style="cosine"), "--warmup_style: must be dstrain or reference"),
    (dict(student_dropout="lots"), "--student_dropout 'lots': use teacher"),
    (dict(student_dropout=1.5), "--student_dropout '1.5'"),
])
def test_bad_recipe_settings_name_the_flag(flags, needle):
    with pytest.raises(ConfigError) as e:
        build_config(DistillConfig, dict(BASE, **flags))
    assert needle in str(e.value)


# ------------------------------------------------------------------------------------------------- --resume
def test_bare_resume_means_true():
    """Fire turns a bare `--resume` into True; it used to be refused as "must be auto, true or false"."""
    assert build_config(DistillConfig, dict(BASE, resume=True)).resume == "true"
    assert build_config(DistillConfig, dict(BASE, resume=False)).resume == "false"
    assert build_config(DistillConfig, dict(BASE, resume="True")).resume == "true"
    with pytest.raises(ConfigError, match="--resume: must be auto, true or false"):
        build_config(DistillConfig, dict(BASE, resume="maybe"))


def test_bare_resume_on_the_command_line(tmp_path, tiny_shards_dir):
    """The real CLI: `pretrain ... --resume` with nothing to resume from is the `--resume true` error."""
    proc = run_cli("pretrain", "--data", str(tiny_shards_dir), "--out_dir", str(tmp_path / "r"), "--resume",
                   "--ds_config", "ds_configs/cpu_zero2.json", "--num_layers", "1", "--hidden_size", "16",
                   "--num_heads", "2", "--intermediate_size", "32", "--max_position_embeddings", "128",
                   check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--resume true but" in proc.stderr and "holds no checkpoint" in proc.stderr


# ------------------------------------------------------------------------------------------------- warmup
@pytest.mark.parametrize("max_steps, frac", [(100, 0.05), (37, 0.1), (300, 0.05), (10, 0.0)])
def test_reference_warmup_is_transformers_linear_schedule(max_steps, frac):
    """distiller.py: num_train_optimization_steps = int(steps_epoch / accum * n_epoch) + 1 (T = the steps
    run + 1), warmup_steps = math.ceil(T * warmup_prop), get_linear_schedule_with_warmup(opt, W, T); the
    scheduler steps after each optimizer step. Same optimizer, same steps: the LR of every step is equal."""
    from transformers import get_linear_schedule_with_warmup

    def lrs(make_sched):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=5e-4)
        sched = make_sched(opt)
        out = []
        for _ in range(max_steps):
            out.append(opt.param_groups[0]["lr"])  # the LR this optimizer step uses
            opt.step()
            sched.step()
        return out

    t = max_steps + 1
    ref = lrs(lambda o: get_linear_schedule_with_warmup(o, num_warmup_steps=math.ceil(t * frac), num_training_steps=t))
    ours = lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, linear_schedule(max_steps, frac, "reference")))
    assert ours == pytest.approx(ref, rel=1e-12, abs=0)
    default = lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, linear_schedule(max_steps, frac)))
    if frac > 0:
        assert ref[0] == 0.0 and default[0] > 0  # the reference's first step does not move the weights
        w = round(frac * max_steps)
        assert max(default) == default[w - 1] == 5e-4  # dstrain peaks on the last warmup step
    assert default[-1] > 0 and ref[-1] > 0


# ------------------------------------------------------------------------------------------------- init
@pytest.mark.parametrize("copy_vocab_transform", [False, True])
def test_student_init_equals_extract_distilbert(copy_vocab_transform):
    """Every tensor of dstrain's student equals the reference's (extract_distilbert.py loaded over a fresh
    student of the same seed), except the position embeddings, where dstrain folds in token type 0."""
    t = _bert(12)
    layers = [0, 2, 4, 7, 9, 11]
    ours, lmap = build_student(t, t.config, 6, "reference", "teacher", 5, copy_vocab_transform=copy_vocab_transform)
    ref, extracted = _reference_student(t, layers, copy_vocab_transform, seed=5)
    assert lmap == layers
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    pos = "distilbert.embeddings.position_embeddings.weight"
    for k in a:
        if k != pos:
            assert torch.equal(a[k], b[k]), k
    fold = t.bert.embeddings.token_type_embeddings.weight[0]
    assert torch.allclose(a[pos], b[pos] + fold, atol=0, rtol=0)
    # without --vocab_transform the head's transform is the student's own random init, not the teacher's
    head = ("vocab_transform.weight", "vocab_layer_norm.weight")
    assert all((k in extracted) == copy_vocab_transform for k in head)
    same = torch.equal(a["vocab_transform.weight"], t.cls.predictions.transform.dense.weight)
    assert same == copy_vocab_transform


def test_token_type_folding_reproduces_the_teacher_and_the_reference_extraction_does_not():
    """Item 6 of docs/FIDELITY.md (kept as dstrain's choice): with every layer mapped, dstrain's student
    computes the teacher's logits; the reference's extraction (no token-type row) does not."""
    torch.manual_seed(1)
    t = _bert(4)
    with torch.no_grad():  # a trained BERT's token-type row is far from 0; the random init's is tiny
        t.bert.embeddings.token_type_embeddings.weight.normal_(0, 0.5)
    ids = torch.randint(5, 80, (3, 16))
    am = torch.ones_like(ids)
    rows = am.bool()
    _, lt = mlm_forward(t, ids, am, rows)
    ours, _ = build_student(t, t.config, 4, "0,1,2,3", "teacher", 0)
    ref, _ = _reference_student(t, [0, 1, 2, 3], True, seed=0)
    _, lo = mlm_forward(ours.eval(), ids, am, rows)
    _, lr = mlm_forward(ref.eval(), ids, am, rows)
    assert (lo - lt).abs().max() < 1e-4
    assert (lr - lt).abs().max() > 0.1


def test_student_dropout_reference_config_or_the_teachers():
    """training_configs/distilbert-base-uncased.json: "dropout": 0.1, "attention_dropout": 0.1, whatever the
    teacher; dstrain's default copies the teacher's (here 0.0)."""
    t = _bert(4, dropout=0.0)
    s, _ = build_student(t, t.config, None, "even", "teacher", 0)
    assert (s.config.dropout, s.config.attention_dropout) == (0.0, 0.0)
    s, _ = build_student(t, t.config, None, "even", "teacher", 0, dropout=0.1)
    assert (s.config.dropout, s.config.attention_dropout) == (0.1, 0.1)
    assert s.distilbert.transformer.layer[0].attention.dropout.p == 0.1
    r = RobertaForMaskedLM(RobertaConfig(vocab_size=70, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=40, hidden_dropout_prob=0.0))
    s, _ = build_student(r, r.config, None, "even", "teacher", 0, copy_vocab_transform=False, dropout=0.1)
    assert s.config.hidden_dropout_prob == 0.1 and not torch.equal(s.lm_head.dense.weight, r.lm_head.dense.weight)
    assert torch.equal(s.lm_head.bias, r.lm_head.bias)


# ------------------------------------------------------------------------------------------------- end to end
def test_distill_with_the_reference_recipe(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """A real run: the recipe reaches the saved config, the exported student and the init."""
    out = tmp_path / "run"
    run_cli("distill", "--teacher", str(tiny_teacher_dir), "--data", str(tiny_shards_dir), "--out_dir", str(out),
            "--ds_config", "ds_configs/cpu_zero2.json", "--precision", "fp32", "--micro_batch_size_per_gpu", "8",
            "--max_steps", "2", "--eval_batches", "1", "--recipe", "reference", "--student_layers", "2",
            "--progress", "false", timeout=600)
    cfg = json.loads((out / "config.json").read_text())
    assert [cfg[k] for k in RECIPE_KEYS] == ["reference", False, "0.1", "reference", "reference"]
    assert cfg["layer_map_used"] == [0, 3]
    assert cfg["student_config"]["dropout"] == 0.1 and cfg["student_config"]["attention_dropout"] == 0.1
    exported = json.loads((out / "student" / "config.json").read_text())
    assert exported["dropout"] == 0.1


def test_init_student_takes_the_recipe(tmp_path):
    """`init_student --recipe reference` writes the student extract_distilbert.py would: map [0, 2, 4, 7, 9, 11]
    (here 4 -> 2: [0, 3]), random head transform, dropout 0.1; an explicit flag still wins."""
    from dstrain.init_student import init_student

    t = _bert(4)
    t.save_pretrained(tmp_path / "teacher")
    init_student(teacher=str(tmp_path / "teacher"), out_dir=str(tmp_path / "s"), recipe="reference")
    info = json.loads((tmp_path / "s" / "dstrain_init.json").read_text())
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert info["layer_map"] == [0, 3] and cfg["dropout"] == 0.1 and cfg["attention_dropout"] == 0.1
    s = DistilBertForMaskedLM.from_pretrained(tmp_path / "s")
    assert not torch.equal(s.vocab_transform.weight, t.cls.predictions.transform.dense.weight)
    init_student(teacher=str(tmp_path / "teacher"), out_dir=str(tmp_path / "s2"), recipe="reference",
                 layer_map="even", copy_vocab_transform=True)
    assert json.loads((tmp_path / "s2" / "dstrain_init.json").read_text())["layer_map"] == [0, 2]
    s2 = DistilBertForMaskedLM.from_pretrained(tmp_path / "s2")
    assert torch.equal(s2.vocab_transform.weight, t.cls.predictions.transform.dense.weight)
