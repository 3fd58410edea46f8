"""torch.compile of the encoders: no graph break (the tiny models, both mask forms), and the compiled step equals
the eager one. AOTAutograd's eager backend traces forward and backward as inductor would without its minutes of
C++ compilation on 2 shared cores (benchmark --mode train times the inductor build)."""

from __future__ import annotations

import pytest
import torch

from dstrain.losses import IGNORE_INDEX


def _pair():
    from transformers import BertConfig, BertForMaskedLM

    from dstrain.models import StudentForDistill, build_student

    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32)).eval()
    student, _ = build_student(teacher, teacher.config, 1, "even", "teacher", 0)
    return teacher, student, StudentForDistill(student).eval()


def _batch():
    ids = torch.randint(5, 60, (2, 9), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)
    am[1, 6:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 4] = 11, 12
    return {"input_ids": ids, "attention_mask": am, "labels": labels}


def test_encoders_have_no_graph_break():
    from dstrain.models import encoder_mask, mlm_parts

    teacher, student, _ = _pair()
    b = _batch()
    for m in (teacher, student):
        for mask in (None, encoder_mask(m, b["attention_mask"])):  # the two forms the step passes
            ex = torch._dynamo.explain(mlm_parts(m).base)(input_ids=b["input_ids"], attention_mask=mask)
            assert ex.graph_break_count == 0 and ex.graph_count == 1, ex.break_reasons


def test_compiled_step_equals_eager():
    from dstrain.train.step import LossSettings, compile_encoders, compute_losses, uncompile_encoders

    teacher, student, model = _pair()
    b = _batch()
    params = list(model.parameters())
    total, terms = compute_losses(model, teacher, b, LossSettings())
    grads = torch.autograd.grad(total, params)
    torch._dynamo.reset()
    compile_encoders(teacher, student, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    try:
        c_total, c_terms = compute_losses(model, teacher, b, LossSettings())
        c_grads = torch.autograd.grad(c_total, params)
    finally:
        uncompile_encoders(teacher, student)
    assert c_total.item() == pytest.approx(total.item(), rel=1e-5)
    for k in terms:
        assert c_terms[k].item() == pytest.approx(terms[k].item(), rel=1e-5, abs=1e-7)
    g, cg = torch.cat([x.flatten() for x in grads]), torch.cat([x.flatten() for x in c_grads])
    assert ((g - cg).norm() / g.norm()).item() <= 1e-5


def test_compile_setting():
    from dstrain.train.step import resolve_compile

    assert resolve_compile("auto", "cuda", 2) and not resolve_compile("auto", "cuda", 3)
    assert not resolve_compile("auto", "cpu", 2)
    assert resolve_compile("true", "cpu", 3) and not resolve_compile("false", "cuda", 0)
