"""The loss functions against hand-computed values and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dstrain.losses import (IGNORE_INDEX, cosine_hidden, distill_total, kl_distill, mlm_accuracy, mlm_ce,
                            select_positions)


def test_kl_hand_computed_two_classes():
    # teacher logits [0, 0] -> p_t = (1/2, 1/2); student [log 3, 0] at T=1 -> p_s = (3/4, 1/4)
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.tensor([[0.0, 0.0]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kl_distill(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_temperature_squared_scaling():
    # at T=2 the logits are halved and the KL is multiplied by T^2 = 4
    s = torch.tensor([[2 * math.log(3.0), 0.0]])
    t = torch.tensor([[0.0, 0.0]])
    expected = 4 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert kl_distill(s, t, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_of_equal_logits_is_zero_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 50, generator=g)
    assert kl_distill(x, x.clone(), 2.0).abs().item() < 1e-6
    assert kl_distill(x + torch.randn(7, 50, generator=g), x, 2.0).item() > 0.01


def test_kl_is_a_per_token_mean_and_matches_kl_div():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    ref = F.kl_div(F.log_softmax(s / 3.0, -1), F.softmax(t / 3.0, -1), reduction="batchmean") * 9.0
    assert kl_distill(s, t, 3.0).item() == pytest.approx(ref.item(), rel=1e-5)
    # duplicating every row leaves a per-token mean unchanged
    assert kl_distill(torch.cat([s, s]), torch.cat([t, t]), 3.0).item() == pytest.approx(ref.item(), rel=1e-5)


def test_kl_gradient_flows_only_to_student():
    s = torch.randn(3, 6, requires_grad=True)
    t = torch.randn(3, 6, requires_grad=True)
    kl_distill(s, t.detach(), 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_mlm_ce_hand_computed_and_empty():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    expected = (math.log(4.0) + -math.log(3.0 / 6.0)) / 2
    assert mlm_ce(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert mlm_ce(logits[:0], labels[:0]).item() == 0.0


def test_cosine_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert cosine_hidden(a, a * 3).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # orthogonal (1 - 0) and opposite (1 - (-1))
    assert cosine_hidden(a, b).item() == pytest.approx((1.0 + 2.0) / 2)


def test_select_positions_all_tokens_or_masked_only():
    am = torch.tensor([[1, 1, 1, 0]])
    labels = torch.tensor([[IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]])
    assert select_positions(am, labels, False).tolist() == [[True, True, True, False]]
    assert select_positions(am, labels, True).tolist() == [[False, True, False, False]]


def test_total_weights_terms_and_skips_zero_alphas():
    terms = {"ce": torch.tensor(1.5), "mlm": torch.tensor(2.0), "cos": torch.tensor(float("nan"))}
    # a zero weight removes the term entirely (even a NaN one): the ablations of the paper
    assert distill_total(terms, {"ce": 5.0, "mlm": 2.0, "cos": 0.0}).item() == pytest.approx(5 * 1.5 + 2 * 2.0)
    with pytest.raises(ValueError, match="every loss weight is 0"):
        distill_total(terms, {"ce": 0.0, "mlm": 0.0, "cos": 0.0})


def test_accuracy():
    assert mlm_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == (1, 2)


def test_padding_and_unselected_positions_contribute_nothing():
    """Through the real step: changing padded tokens, or (restrict_ce_to_mask) unmasked ones of the
    teacher's view, leaves every loss term unchanged."""
    from transformers import BertConfig, BertForMaskedLM

    from dstrain.models import StudentForDistill, build_student
    from dstrain.train.step import LossSettings, compute_losses

    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, initializer_range=0.5)).eval()
    student, _ = build_student(teacher, teacher.config, 1, "even", "teacher", 0)
    student = StudentForDistill(student).eval()
    ids = torch.randint(5, 60, (2, 9))
    am = torch.ones_like(ids)
    am[1, 6:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 4] = 11, 12
    batch = {"input_ids": ids, "attention_mask": am, "labels": labels}
    loss = LossSettings()
    total, terms = compute_losses(student, teacher, batch, loss)
    ids2 = ids.clone()
    ids2[1, 6:] = 3  # other tokens under the padding
    total2, terms2 = compute_losses(student, teacher, dict(batch, input_ids=ids2), loss)
    assert total2.item() == pytest.approx(total.item(), abs=1e-6)
    for k in terms:
        assert terms2[k].item() == pytest.approx(terms[k].item(), abs=1e-6)
    # KL over masked positions only differs from KL over all tokens
    _, terms_m = compute_losses(student, teacher, batch, LossSettings(restrict_ce_to_mask=True))
    assert terms_m["mlm"].item() == pytest.approx(terms["mlm"].item(), abs=1e-6)
    assert terms_m["ce"].item() != pytest.approx(terms["ce"].item(), abs=1e-6)


# ------------------------------------------------------------------- the fused vocabulary loss
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _problem(R=37, H=8, V=50, n_mlm=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(R, H, generator=g).requires_grad_()
    w = torch.randn(V, H, generator=g).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_()
    ht, wt, bt = torch.randn(R, H, generator=g), torch.randn(V, H, generator=g), torch.randn(V, generator=g)
    labels = torch.full((R,), IGNORE_INDEX)
    idx = torch.randperm(R, generator=g)[:n_mlm]
    labels[idx] = torch.randint(0, V, (n_mlm,), generator=g)
    return hs, w, b, ht, wt, bt, labels, idx


@pytest.mark.parametrize("chunk", [1, 5, 16, 1000])
@pytest.mark.parametrize("alphas", [(5.0, 2.0), (0.0, 1.0), (3.0, 0.0)])
def test_fused_equals_pure_functions_loss_and_gradients(chunk, alphas):
    """fp32: the fused loss and its gradients w.r.t. the hidden rows, the projector weight and bias equal
    the pure functions on materialised logits (relative error <= 1e-5), whatever the chunking."""
    from dstrain.losses import fused_vocab_loss

    a_ce, a_mlm = alphas
    hs, w, b, ht, wt, bt, labels, idx = _problem()
    s, t = F.linear(hs, w, b), F.linear(ht, wt, bt)
    kl, mlm = kl_distill(s, t, 2.0), mlm_ce(s[idx], labels[idx])
    ref = a_ce * kl + a_mlm * mlm
    g_ref = torch.autograd.grad(ref * 3.0, [hs, w, b])  # 3: backward must scale by the incoming gradient
    loss, kl2, mlm2 = fused_vocab_loss(hs, w, b, labels, len(idx), h_t=ht, w_t=wt, b_t=bt, temperature=2.0,
                                       alpha_ce=a_ce, alpha_mlm=a_mlm, chunk_rows=chunk)
    assert _rel(loss, ref) <= 1e-5
    assert _rel(mlm2, mlm) <= 1e-5  # logged even when its weight is 0
    if a_ce:
        assert _rel(kl2, kl) <= 1e-5
    for got, want in zip(torch.autograd.grad(loss * 3.0, [hs, w, b]), g_ref):
        assert _rel(got, want) <= 1e-5


def test_fused_without_bias_or_rows_and_without_a_graph_to_the_teacher():
    from dstrain.losses import fused_vocab_loss

    hs, w, _, ht, wt, _, labels, idx = _problem(n_mlm=3)
    ref = 5 * kl_distill(hs @ w.t(), ht @ wt.t(), 2.0) + 2 * mlm_ce((hs @ w.t())[idx], labels[idx])
    loss, _, _ = fused_vocab_loss(hs, w, None, labels, 3, h_t=ht, w_t=wt, b_t=None, alpha_ce=5.0, alpha_mlm=2.0)
    assert _rel(loss, ref) <= 1e-5
    gh, gw = torch.autograd.grad(loss, [hs, w])
    rh, rw = torch.autograd.grad(ref, [hs, w])
    assert _rel(gh, rh) <= 1e-5 and _rel(gw, rw) <= 1e-5
    empty, kl, mlm = fused_vocab_loss(hs[:0], w, None, labels[:0], 0, h_t=ht[:0], w_t=wt, alpha_ce=5.0)
    assert empty.item() == 0.0 and kl.item() == 0.0 and mlm.item() == 0.0
    empty.backward()  # the graph exists: every rank's hooks still fire
    assert w.grad is not None and w.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_close_to_fp32_reference(dtype):
    """Half-precision rows and weights (the DeepSpeed fp16/bf16 engine): gradients computed R times too large and
    divided back in fp32 (no underflow), close to the fp32 reference at half precision's resolution."""
    from dstrain.losses import fused_vocab_loss

    hs, w, b, ht, wt, bt, labels, idx = _problem(R=64, H=16, V=40)
    s, t = F.linear(hs, w, b), F.linear(ht, wt, bt)
    ref = 5 * kl_distill(s, t, 2.0) + 2 * mlm_ce(s[idx], labels[idx])
    g_ref = torch.autograd.grad(ref, [hs, w, b])
    h16, w16, b16 = (x.detach().to(dtype).requires_grad_() for x in (hs, w, b))
    loss, _, _ = fused_vocab_loss(h16, w16, b16, labels, len(idx), h_t=ht.to(dtype), w_t=wt.to(dtype),
                                  b_t=bt.to(dtype), alpha_ce=5.0, alpha_mlm=2.0, chunk_rows=16)
    assert _rel(loss, ref) < 3e-2
    grads = torch.autograd.grad(loss * 1024.0, [h16, w16, b16])  # a loss scale, as DeepSpeed's fp16 applies
    for got, want in zip(grads, g_ref):
        assert got.dtype == dtype and _rel(got.float() / 1024.0, want) < 5e-2


def _tiny_pair(seed=0):
    from transformers import BertConfig, BertForMaskedLM

    from dstrain.models import StudentForDistill, build_student

    torch.manual_seed(seed)
    teacher = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, initializer_range=0.5)).eval()
    student, _ = build_student(teacher, teacher.config, 1, "even", "teacher", 0)
    return teacher, StudentForDistill(student).eval()


def _tiny_batch(padded=True):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 60, (3, 9), generator=g)
    am = torch.ones_like(ids)
    if padded:
        am[1, 6:] = 0
        am[2, 4:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 4], labels[2, 1], labels[0, 7] = 11, 12, 13, 14
    return {"input_ids": ids, "attention_mask": am, "labels": labels}


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("settings", [dict(), dict(restrict_ce_to_mask=True), dict(alpha_ce=0.0),
                                      dict(alpha_cos=0.0, alpha_mlm=0.0), dict(temperature=1.0)])
def test_fused_step_equals_the_pure_function_step(settings, padded):
    """The whole step (real tiny BERT teacher -> DistilBERT student): every term and the gradient of every
    student parameter equal the pure functions' step (reference_losses) to 1e-5."""
    from dstrain.train.step import LossSettings, compute_losses, reference_losses

    teacher, student = _tiny_pair()
    batch, loss = _tiny_batch(padded), LossSettings(**settings)
    params = list(student.parameters())
    total, terms = compute_losses(student, teacher, batch, loss)
    g = torch.cat([x.flatten() for x in torch.autograd.grad(total, params)])
    r_total, r_terms = reference_losses(student, teacher, batch, loss)
    r_g = torch.cat([x.flatten() for x in torch.autograd.grad(r_total, params)])
    assert _rel(total, r_total) <= 1e-5
    assert set(terms) == set(r_terms)
    for k in terms:
        assert terms[k].item() == pytest.approx(r_terms[k].item(), rel=1e-5, abs=1e-7)
    assert _rel(g, r_g) <= 1e-5


def test_cosine_uses_every_token_whatever_the_kl_positions():
    """Issue #15 item 1: restrict_ce_to_mask restricts the KL term only; the cosine term aligns hidden states on
    every non-pad token (as the reference code does), so it is the same with and without the flag."""
    from dstrain.train.step import LossSettings, compute_losses

    teacher, student = _tiny_pair()
    batch = _tiny_batch()
    _, all_tok = compute_losses(student, teacher, batch, LossSettings())
    _, masked = compute_losses(student, teacher, batch, LossSettings(restrict_ce_to_mask=True))
    assert masked["cos"].item() == pytest.approx(all_tok["cos"].item(), rel=1e-6)
    assert masked["ce"].item() != pytest.approx(all_tok["ce"].item(), rel=1e-3)
    # and it is the cosine over all non-pad tokens, computed by hand
    from dstrain.models import mlm_forward

    rows = batch["attention_mask"].bool()
    with torch.no_grad():
        hs, _ = mlm_forward(student.model, batch["input_ids"], batch["attention_mask"], rows)
        ht, _ = mlm_forward(teacher, batch["input_ids"], batch["attention_mask"], rows)
    assert masked["cos"].item() == pytest.approx(cosine_hidden(hs, ht).item(), rel=1e-5)
