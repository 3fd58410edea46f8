"""The FLOP formula against hand-computed values and against torch's own FLOP counter on real models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertModel

from dstrain.flops import EncoderShape, StepFlops, distill_step_flops, encoder_forward_flops, mfu, peak_tflops


def test_forward_flops_by_hand():
    # L=2, h=4, f=8, V=10, b=1, s=3:
    # per layer per token 8*4^2 + 4*4*8 = 256; x 3 tokens = 768; attention 4*3^2*4 = 144 -> 912 per layer
    shape = EncoderShape(num_layers=2, hidden=4, intermediate=8, vocab_size=10)
    assert encoder_forward_flops(shape, batch=1, seq_len=3) == 2 * 912
    # MLM head on 3 positions: 3 * (2*4*4 + 2*4*10) = 336
    assert encoder_forward_flops(shape, 1, 3, vocab_tokens=3) == 2 * 912 + 336
    no_transform = EncoderShape(2, 4, 8, 10, mlm_transform=False)
    assert encoder_forward_flops(no_transform, 1, 3, vocab_tokens=3) == 2 * 912 + 3 * 80
    # batch scales everything linearly
    assert encoder_forward_flops(shape, 5, 3, vocab_tokens=15) == 5 * (2 * 912 + 336)


def test_distill_step_is_teacher_forward_plus_three_student_forwards():
    teacher = EncoderShape(2, 4, 8, 10)
    student = EncoderShape(1, 4, 8, 10)
    # teacher 2*912 + 336 = 2160; student 912 + 336 = 1248; step = 2160 + 3*1248
    assert distill_step_flops(teacher, student, 1, 3, 3, 3) == 2160 + 3 * 1248 == 5904
    # only masked positions projected: 1 position each
    assert distill_step_flops(teacher, student, 1, 3, 1, 1) == (1824 + 112) + 3 * (912 + 112)


def test_bert_base_per_token_is_twice_the_layer_weights():
    # 12 layers of 768 x 768 x 4 + 768 x 3072 x 2 weights = 84.9M; 2 FLOPs per weight per token.
    shape = EncoderShape(12, 768, 3072, 30522)
    per_token_no_attention = encoder_forward_flops(shape, 1, 1) - 12 * 4 * 768
    assert per_token_no_attention == 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072) == 169_869_312


def _counted(model, ids):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(input_ids=ids)
    return fc.get_total_flops()


@pytest.mark.parametrize("b,s", [(1, 16), (3, 24)])
def test_formula_matches_torch_flop_counter(b, s):
    # eager attention: torch's counter sees the Q K^T and A V matmuls (it does not count CPU SDPA kernels)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    ids = torch.randint(5, 100, (b, s))
    shape = EncoderShape.from_hf_config(cfg)
    assert _counted(BertModel(cfg, add_pooling_layer=False).eval(), ids) == encoder_forward_flops(shape, b, s)
    assert _counted(BertForMaskedLM(cfg).eval(), ids) == encoder_forward_flops(shape, b, s, vocab_tokens=b * s)
    d = DistilBertConfig(vocab_size=100, dim=32, n_layers=3, n_heads=2, hidden_dim=64, max_position_embeddings=64,
                         attn_implementation="eager")
    assert _counted(DistilBertModel(d).eval(), ids) == encoder_forward_flops(EncoderShape.from_hf_config(d), b, s)


def test_peak_table_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "fp16") == 989.4
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312.0  # not the A10's row
    assert peak_tflops("NVIDIA A10G", "bf16") == 70.0 and peak_tflops("NVIDIA A10", "bf16") == 125.0
    assert peak_tflops("Tesla V100-SXM2-16GB", "fp32") == 15.7  # no TF32 on Volta: the data sheet's fp32
    assert peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None
    assert peak_tflops("Some Future GPU", "bf16") is None
    assert mfu(1e12, 1.0, 2.0) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None


def _pair():
    t_cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, intermediate_size=3072)
    return t_cfg, DistilBertConfig()


def test_step_flops_count_the_projected_rows_and_real_lengths():
    """The trainer's per-micro-batch count: encoders at the batch's padded length, heads only where the step
    projects: every non-pad token (default loss), or the masked ones (restrict_ce_to_mask: the old per-token
    formula overstated this ~1.35x at seq 128), the teacher's head only with a KL term, no teacher when no term needs it."""
    from dstrain.train.step import PRETRAIN_LOSS, LossSettings

    t_cfg, s_cfg = _pair()
    T, S = EncoderShape.from_hf_config(t_cfg), EncoderShape.from_hf_config(s_cfg)
    b, s, n_tok, n_mlm = 32, 128, 3000, 450  # 3000 real tokens of 4096 positions, 15% of them masked
    f = StepFlops(s_cfg, t_cfg, LossSettings())
    assert f.count(b, s, n_tok, n_mlm) == distill_step_flops(T, S, b, s, n_tok, n_tok)
    f_mask = StepFlops(s_cfg, t_cfg, LossSettings(restrict_ce_to_mask=True))
    assert f_mask.count(b, s, n_tok, n_mlm) == distill_step_flops(T, S, b, s, n_mlm, n_mlm)
    # with every position real, the old formula (heads at every position) overstated the masked-only step ~1.35x
    old = distill_step_flops(T, S, b, s, b * s, b * s)
    assert old / f_mask.count(b, s, b * s, round(0.15 * b * s)) == pytest.approx(1.35, abs=0.01)
    no_kl = StepFlops(s_cfg, t_cfg, LossSettings(alpha_ce=0.0))
    assert no_kl.count(b, s, n_tok, n_mlm) == encoder_forward_flops(T, b, s, 0) + 3 * encoder_forward_flops(S, b, s, n_mlm)
    pre = StepFlops(s_cfg, None, PRETRAIN_LOSS)
    assert pre.count(b, s, n_tok, n_mlm) == 3 * encoder_forward_flops(S, b, s, n_mlm)
    # from a collated batch: shapes only
    batch = {"input_ids": torch.zeros(b, s, dtype=torch.long), "tok_index": torch.zeros(n_tok, dtype=torch.long),
             "mlm_index": torch.zeros(n_mlm, dtype=torch.long)}
    assert f.micro_step(batch) == f.count(b, s, n_tok, n_mlm)


def test_step_flops_match_torch_flop_counter_on_the_real_step():
    """torch's FLOP counter on the real fused step (forward + backward of the student, forward of the teacher),
    eager attention so the CPU counter sees Q K^T and A V: equal to StepFlops (the loss's elementwise work and
    the fused loss's in-forward gradient matmuls are what the formula counts as the head's backward)."""
    from transformers import BertForMaskedLM

    from dstrain.data.loader import row_index
    from dstrain.models import StudentForDistill, build_student
    from dstrain.train.step import LossSettings, compute_losses

    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64, attn_implementation="eager")
    torch.manual_seed(0)
    teacher = BertForMaskedLM(cfg).eval()
    student, _ = build_student(teacher, cfg, 1, "even", "teacher", 0)
    student.config._attn_implementation = "eager"
    model = StudentForDistill(student)
    ids = torch.randint(5, 120, (3, 16))
    am = torch.ones_like(ids)
    am[2, 10:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5], labels[2, 2] = 7, 8, 9
    batch = {"input_ids": ids, "attention_mask": am, "labels": labels, **row_index(am, labels)}
    for loss in (LossSettings(), LossSettings(restrict_ce_to_mask=True)):
        with FlopCounterMode(display=False) as fc:
            total, _ = compute_losses(model, teacher, batch, loss)
            total.backward()
        assert fc.get_total_flops() == StepFlops(student.config, cfg, loss).micro_step(batch)
