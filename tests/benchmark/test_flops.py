"""The FLOP formula against hand-computed values and against torch's own FLOP counter on real models."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, BertModel, DistilBertConfig, DistilBertModel

from dstrain.benchmark.flops import EncoderShape, distill_step_flops, encoder_forward_flops, mfu, peak_tflops


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
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "fp16") == 989.0
    assert peak_tflops("Some Future GPU", "bf16") is None
    assert mfu(1e12, 1.0, 2.0) == pytest.approx(0.5)
    assert mfu(1e12, 1.0, None) is None


def test_agrees_with_the_trainers_per_token_formula():
    # dstrain/train/throughput.py counts FLOPs per token for its own MFU log; both must say the same
    from dstrain.train.throughput import train_flops_per_token

    t_cfg = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, intermediate_size=3072)
    s_cfg = DistilBertConfig()
    b, s = 32, 128
    ours = distill_step_flops(EncoderShape.from_hf_config(t_cfg), EncoderShape.from_hf_config(s_cfg), b, s,
                              b * s, b * s)
    assert ours == pytest.approx(b * s * train_flops_per_token(s_cfg, t_cfg, s), rel=1e-12)
