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
