"""Student construction: DistilBERT layout from BERT, shallower RoBERTa from RoBERTa, layer map, init."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

from dstrain.config import UserError
from dstrain.models import build_bert, build_student, mlm_forward, parse_layer_map


def _bert(layers=4):
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=80, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=40)).eval()


def test_layer_maps():
    assert parse_layer_map("even", 12, 6) == [0, 2, 4, 6, 8, 10]
    assert parse_layer_map("reference", 12, 6) == [0, 2, 4, 7, 9, 11]
    assert parse_layer_map("0,3,5", 6, 3) == [0, 3, 5]
    with pytest.raises(UserError, match="names 2 layers but the student has 3"):
        parse_layer_map("0,1", 6, 3)
    with pytest.raises(UserError, match=r"teacher layer\(s\) \[12\] do not exist"):
        parse_layer_map("0,2,12", 12, 3)


def test_bert_student_is_distilbert_with_mapped_layers():
    t = _bert(4)
    s, lmap = build_student(t, t.config, None, "reference", "teacher", 0)
    assert type(s).__name__ == "DistilBertForMaskedLM" and s.config.n_layers == 2 and lmap == [0, 3]
    names = [n for n, _ in s.named_parameters()]
    assert not any("token_type" in n or "pooler" in n for n in names)
    for si, ti in enumerate(lmap):
        tl, sl = t.bert.encoder.layer[ti], s.distilbert.transformer.layer[si]
        assert torch.equal(sl.attention.q_lin.weight, tl.attention.self.query.weight)
        assert torch.equal(sl.ffn.lin2.bias, tl.output.dense.bias)
        assert torch.equal(sl.output_layer_norm.weight, tl.output.LayerNorm.weight)
    assert torch.equal(s.distilbert.embeddings.word_embeddings.weight, t.bert.embeddings.word_embeddings.weight)
    assert torch.equal(s.vocab_transform.weight, t.cls.predictions.transform.dense.weight)
    assert torch.equal(s.vocab_projector.bias, t.cls.predictions.bias)
    # the decoder stays tied to the embeddings, as in the teacher
    assert s.vocab_projector.weight.data_ptr() == s.distilbert.embeddings.word_embeddings.weight.data_ptr()


def test_full_depth_student_reproduces_the_teacher():
    """Mapping every layer must give the teacher's function exactly (token-type row folded in)."""
    t = _bert(3)
    s, _ = build_student(t, t.config, 3, "0,1,2", "teacher", 0)
    s.eval()
    ids = torch.randint(5, 80, (2, 12))
    am = torch.ones_like(ids)
    am[1, 8:] = 0
    rows = am.bool()
    ht, lt = mlm_forward(t, ids, am, rows)
    hs, ls = mlm_forward(s, ids, am, rows)
    assert torch.allclose(ls, lt, atol=1e-5) and torch.allclose(hs, ht, atol=1e-5)
    # and mlm_forward's rows equal the full forward's
    assert torch.allclose(t(input_ids=ids, attention_mask=am).logits[rows], lt, atol=1e-6)


def test_random_init_differs_from_teacher():
    t = _bert(4)
    s, lmap = build_student(t, t.config, None, "even", "random", 0)
    assert lmap is None
    assert not torch.equal(s.distilbert.transformer.layer[0].attention.q_lin.weight,
                           t.bert.encoder.layer[0].attention.self.query.weight)


def test_roberta_student_keeps_class_with_half_the_layers():
    torch.manual_seed(0)
    t = RobertaForMaskedLM(RobertaConfig(vocab_size=70, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=40)).eval()
    s, lmap = build_student(t, t.config, None, "even", "teacher", 0)
    assert type(s).__name__ == "RobertaForMaskedLM" and s.config.num_hidden_layers == 2 and lmap == [0, 2]
    assert torch.equal(s.roberta.encoder.layer[1].attention.self.key.weight, t.roberta.encoder.layer[2].attention.self.key.weight)
    assert torch.equal(s.lm_head.dense.weight, t.lm_head.dense.weight)


def test_init_student_command_writes_a_loadable_folder(tiny_teacher_dir, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from dstrain.init_student import init_student

    out = tmp_path / "student"
    init_student(teacher=str(tiny_teacher_dir), out_dir=str(out), layer_map="reference")
    m = AutoModelForMaskedLM.from_pretrained(out)
    assert type(m).__name__ == "DistilBertForMaskedLM" and m.config.n_layers == 2
    assert json.loads((out / "dstrain_init.json").read_text())["layer_map"] == [0, 3]
    assert len(AutoTokenizer.from_pretrained(out)) == m.config.vocab_size
    with pytest.raises(UserError, match="exists and is not empty"):
        init_student(teacher=str(tiny_teacher_dir), out_dir=str(out))
    with pytest.raises(UserError, match="--teacher .*cannot load"):
        init_student(teacher=str(tmp_path / "nope"), out_dir=str(tmp_path / "s2"))


def test_pretrain_dropout_reaches_the_model_and_its_student():
    """`pretrain --dropout 0` (the study's tiny teachers) gives a BERT without dropout, and so a student without."""
    t = build_bert(80, 0, 2, 16, 2, 32, 40, seed=0, dropout=0.0)
    assert t.config.hidden_dropout_prob == 0.0 and t.config.attention_probs_dropout_prob == 0.0
    t.train()
    x = torch.randint(5, 80, (2, 12))
    assert torch.equal(t(input_ids=x).logits, t(input_ids=x).logits)  # train mode, yet deterministic
    s, _ = build_student(t, t.config, None, "even", "teacher", 0)
    assert s.config.dropout == 0.0 and s.config.attention_dropout == 0.0
    assert build_bert(80, 0, 2, 16, 2, 32, 40, seed=0).config.hidden_dropout_prob == 0.1  # BERT's default
