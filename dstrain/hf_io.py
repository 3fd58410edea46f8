"""Loading Hugging Face model and tokenizer folders given on the command line, with errors a user can act on.

    model = load_pretrained(AutoModelForMaskedLM, "runs/t/student", "teacher")   # UserError, never a traceback
    require_tokenizer("runs/t/student", "teacher", fix="...")                     # folder has tokenizer files?

A model folder without tokenizer files does not fail in `AutoTokenizer.from_pretrained`: it quietly returns a
5-token tokenizer that maps every word to [UNK]. So a local folder must show its tokenizer files first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dstrain.config import UserError

# Any one of these makes a folder a tokenizer (fast tokenizer, WordPiece vocab, BPE vocab, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def has_tokenizer(path: str | os.PathLike) -> bool:
    """False for a local folder without tokenizer files; True for one with them, or a hub name (cannot tell)."""
    p = Path(path)
    if not p.is_dir():
        return not p.exists()
    return any((p / f).is_file() for f in TOKENIZER_FILES)


def require_tokenizer(path: str | os.PathLike, setting: str, fix: str) -> None:
    if not has_tokenizer(path):
        raise UserError(f"--{setting} {path}: has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...), so "
                        f"its vocabulary is unknown. {fix}")


def _why(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    text = f"{type(e).__name__}: {first}"
    if type(e).__name__ in ("SafetensorError", "UnpicklingError", "HeaderTooLarge") or "PytorchStreamReader" in text:
        text += "; the weight file is damaged or incomplete (an interrupted copy?): copy or save it again"
    return text


def load_pretrained(cls: Any, path: str, setting: str, what: str = "a model", **kwargs) -> Any:
    """`cls.from_pretrained(path, **kwargs)`; any failure is a UserError naming --setting and the cause.

    Every failure here is about the user's files (missing, damaged, another architecture), as in
    `benchmark`'s loader, so none of them is a traceback."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:
        raise UserError(f"--{setting} {path}: cannot load {what} from it ({_why(e)}). Pass a folder written by save_pretrained "
                        f"(config.json + weights) or a model name already in the Hugging Face cache (HF_HUB_OFFLINE "
                        f"is {os.environ.get('HF_HUB_OFFLINE', 'unset')})") from None


def vocab_fingerprint(vocab: dict[str, int]) -> str:
    """sha256 of the (token, id) pairs, sorted: equal exactly when two tokenizers map every token to the same id."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer_dir: str | os.PathLike) -> str:
    """vocab_fingerprint of the tokenizer saved in `tokenizer_dir` (checkpoints carry the shards' one)."""
    from transformers import AutoTokenizer

    return vocab_fingerprint(AutoTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab())
