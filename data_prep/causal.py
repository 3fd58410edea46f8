"""Causal-LM shards (GPT-2, the DistilGPT2 recipe): contiguous text packed into fixed-length blocks.

    python data_prep/build_shards.py --tokenizer gpt2_tok/ --out_dir shards/ --packing blocks --max_seq_len 1024

Used by data_prep/build_shards.py when --packing is `blocks` (`auto` picks it for a tokenizer with an
end-of-text token and no mask token, like GPT-2's). Each document becomes
    [bos] piece [eos]        ([bos] only when it differs from eos: GPT-2's <|endoftext|> is both)
and the documents, in corpus order, form one stream that is cut into blocks of exactly max_seq_len
tokens, so a block may start mid-document and span several (as GPT-2 was trained); no padding, no
[CLS]/[SEP], no masking. The tail shorter than a block is dropped and counted. Blocks are then shuffled
and split like BERT sequences. Packing runs in the main process on task results that arrive in corpus
order, so the blocks do not depend on --num_workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dstrain.config import UserError


def causal_tokenizer_info(tok: Any, name_or_path: str) -> dict[str, Any]:
    """The manifest's tokenizer entry for block shards: eos required; pad = eos when the tokenizer has none
    (blocks are never padded; the id only fills evaluation batches' unused rows)."""
    if tok.eos_token_id is None:
        raise UserError(f"--tokenizer {name_or_path}: has no eos token; --packing blocks separates documents with "
                        f"the tokenizer's end-of-text token (GPT-2: <|endoftext|>). Add one or use --packing sequences")
    eos = int(tok.eos_token_id)
    info = {"name_or_path": name_or_path, "vocab_size": max(len(tok), int(tok.vocab_size)),
            "bos_token_id": None if tok.bos_token_id is None else int(tok.bos_token_id), "eos_token_id": eos,
            "pad_token_id": eos if tok.pad_token_id is None else int(tok.pad_token_id),
            "unk_token_id": None if tok.unk_token_id is None else int(tok.unk_token_id),
            "cls_token_id": None, "sep_token_id": None, "mask_token_id": None}
    info["all_special_ids"] = sorted(int(i) for i in tok.all_special_ids)
    return info


def resolve_packing(packing: str, tok: Any) -> str:
    """auto -> blocks for a causal tokenizer (eos, no mask token), else sequences."""
    if packing != "auto":
        return packing
    return "blocks" if tok.mask_token_id is None and tok.eos_token_id is not None else "sequences"


def tokenize_documents(w: dict[str, Any], texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Documents -> (tokens (T,) int32: each document as [bos] piece [eos], concatenated; per-document
    lengths (D,) int32; counts). `w` is build_shards' worker state (tokenizer, bos_id, eos_id)."""
    bos, eos = w["bos_id"], int(w["eos_id"])
    head = [] if bos is None or int(bos) == eos else [int(bos)]
    out, lens = [], []
    for enc in w["tok"].encode_batch(texts, add_special_tokens=False):
        doc = np.asarray(head + enc.ids + [eos], dtype=np.int32)
        out.append(doc)
        lens.append(len(doc))
    tokens = np.concatenate(out) if out else np.zeros(0, np.int32)
    return tokens, np.asarray(lens, np.int32), {"sequences": len(lens), "dropped_short": 0, "dropped_unk": 0,
                                                  "split_documents": 0}


class BlockPacker:
    """Cuts a token stream fed in pieces into blocks of `block` tokens, carrying the remainder over."""

    def __init__(self, block: int):
        self.block = int(block)
        self.carry = np.zeros(0, np.int32)

    def pack(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """tokens (T,) -> (the full blocks concatenated (n * block,), lengths (n,) all == block)."""
        stream = np.concatenate([self.carry, tokens.astype(np.int32, copy=False)])
        n = len(stream) // self.block
        self.carry = stream[n * self.block:]
        return stream[: n * self.block], np.full(n, self.block, np.int32)

    @property
    def dropped_tail_tokens(self) -> int:
        return len(self.carry)
