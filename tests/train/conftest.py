"""Fixtures of the trainer tests: a tiny BERT teacher on the session's tiny tokenizer, briefly trained on the
tiny shards (a few seconds, plain PyTorch) so its predictions carry signal for the student to distil."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TEACHER = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_shards_dir) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from dstrain.data import MLMMasker, ShardSet, build_loader

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TEACHER))
    shards = ShardSet.open(tiny_shards_dir, "train")
    loader = build_loader(shards, micro_batch_size=32, rank=0, world_size=1, num_workers=0, seed=0,
                          masker=MLMMasker.for_shards(shards))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only add contention
    try:
        for b in loader:  # one epoch, ~30 steps: enough to move the teacher off uniform predictions
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    out_dir = tmp_path_factory.mktemp("tiny_teacher") / "teacher"
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
