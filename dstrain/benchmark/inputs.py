"""Benchmark inputs: real token ids, never zeros.

- `random_ids`: uniform ids from the vocabulary, special ids excluded, framed as [CLS] ... [SEP].
- `sts_pairs`: ~200 STS-B-like sentence pairs (captions, news headlines, forum lines, each paired with a
  paraphrase or a related sentence), generated offline and deterministically from a seed, since there is
  no dataset hub here. Lengths follow STS-B's (about 10 words a sentence, a tail up to ~30).
- `pair_batches`: those pairs as batch-1 inputs, tokenised when a tokenizer is given; otherwise random ids
  with the length the pair would have (one id per word, plus [CLS] and two [SEP]).
"""

from __future__ import annotations

import random
from typing import Any

_SUBJECTS = ["A man", "A woman", "A child", "Two dogs", "A cat", "The girl", "A young boy", "An old man",
             "A group of people", "Three women", "A chef", "A musician", "The police officer", "A small bird",
             "A baby", "A plane", "The train", "A red car", "Some students", "A soccer player"]
_ACTIONS = [("is playing", "a guitar", "is strumming", "an acoustic guitar"),
            ("is slicing", "an onion", "is cutting", "some onions"),
            ("is riding", "a horse", "rides", "a brown horse"),
            ("is reading", "a newspaper", "reads", "the morning paper"),
            ("is running along", "the beach", "jogs on", "the sandy shore"),
            ("is eating", "a bowl of noodles", "eats", "noodles from a bowl"),
            ("is climbing", "a rock wall", "climbs up", "a steep cliff"),
            ("is taking off from", "the runway", "departs from", "the airport"),
            ("is pouring", "water into a glass", "fills", "a glass with water"),
            ("is talking on", "the phone", "speaks on", "a mobile phone"),
            ("is painting", "a picture of a house", "paints", "a house"),
            ("is swimming in", "a pool", "swims across", "the swimming pool")]
_PLACES = ["", " in the park", " on the street", " at night", " in the kitchen", " near the river",
           " on a stage", " in front of a crowd", " under a tree"]
_HEADLINES = [
    ("Stocks fell sharply on Monday as investors worried about rising interest rates",
     "Shares dropped on Monday amid fears that interest rates will go up"),
    ("The government announced new measures to reduce air pollution in major cities",
     "New rules to cut pollution in large cities were announced by officials"),
    ("Heavy rain caused flooding across the region, forcing thousands to leave their homes",
     "Thousands were evacuated after floods hit the area following heavy rainfall"),
    ("The company reported a record profit for the third quarter",
     "Quarterly earnings reached an all-time high, the firm said"),
    ("Scientists have discovered a new species of frog in the rainforest",
     "A previously unknown frog was found by researchers in the jungle"),
    ("The president will meet foreign leaders at the summit next week",
     "World leaders are expected to hold talks with the president at next week's summit"),
    ("Police arrested two men suspected of robbing a bank in the city centre",
     "Two suspects were detained after a downtown bank robbery"),
    ("The football team won the championship for the first time in twenty years",
     "After two decades, the club finally took the title"),
]
_FORUM = [
    ("How do I stop my dog from barking at night?", "What can I do to keep my dog quiet at night?"),
    ("Is it safe to drink tap water when travelling abroad?", "Should you avoid tap water in foreign countries?"),
    ("What is the best way to learn a new language quickly?", "How can I become fluent in another language fast?"),
    ("Why does my computer get so slow after a few hours?", "My laptop slows down a lot when it has been on for long."),
]


def sts_pairs(n: int = 200, seed: int = 0) -> list[tuple[str, str]]:
    """`n` STS-B-like (sentence1, sentence2) pairs, the same for the same seed.

    Mix as in STS-B: about 60% image captions (paraphrase, or same subject doing something else),
    30% news headlines, 10% forum questions; a quarter of the news pairs get a second clause.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            subj = rng.choice(_SUBJECTS)
            v1, o1, v2, o2 = rng.choice(_ACTIONS)
            place = rng.choice(_PLACES)
            a = f"{subj} {v1} {o1}{place}."
            if rng.random() < 0.5:  # paraphrase
                b = f"{subj} {v2} {o2}{rng.choice(_PLACES)}."
            else:  # related but different
                w1, p1, _, _ = rng.choice(_ACTIONS)
                b = f"{rng.choice(_SUBJECTS)} {w1} {p1}{place}."
        elif r < 0.9:
            a, b = rng.choice(_HEADLINES)
            if rng.random() < 0.25:
                extra, _ = rng.choice(_HEADLINES)
                a = f"{a}, while {extra[0].lower()}{extra[1:]}"
            a, b = a + ".", b + "."
        else:
            a, b = rng.choice(_FORUM)
        if rng.random() < 0.5:
            a, b = b, a
        out.append((a, b))
    return out


def special_ids(config: Any, tokenizer: Any = None) -> set[int]:
    """Ids not to draw as ordinary tokens: the tokenizer's specials, else the config's, else BERT's."""
    if tokenizer is not None:
        return set(int(i) for i in tokenizer.all_special_ids)
    ids = {0, 100, 101, 102, 103}  # BERT uncased: [PAD] [UNK] [CLS] [SEP] [MASK]
    for k in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            ids.add(v)
    return ids


def frame_ids(vocab: int, specials: set[int]) -> tuple[int, int]:
    """([CLS], [SEP]) ids: BERT's 101/102 when the vocabulary has them, else the smallest special ids."""
    if vocab > 102:
        return 101, 102
    s = sorted(i for i in specials if i < vocab) or [0, 0]
    return s[0], s[-1]


def random_ids(batch: int, seq_len: int, vocab: int, specials: set[int], seed: int = 0):
    """(batch, seq_len) int64 ids: [CLS] + uniform non-special ids < vocab + [SEP]; mask all ones.

    BERT's uncased vocabulary keeps ids 1..998 for [unusedN] slots that never occur in text, so with a
    30522-word vocabulary the draw starts at 999.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    low = 999 if vocab == 30522 else 0
    allowed = torch.tensor([i for i in range(low, vocab) if i not in specials], dtype=torch.long)
    ids = allowed[torch.randint(len(allowed), (batch, seq_len), generator=g)]
    cls, sep = frame_ids(vocab, specials)
    ids[:, 0] = cls
    ids[:, -1] = sep
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pair_batches(pairs: list[tuple[str, str]], vocab: int, specials: set[int], tokenizer: Any = None,
                 max_seq_len: int = 128, seed: int = 0) -> list[dict]:
    """One batch-1 input per pair, unpadded (batch 1 needs no padding), truncated to max_seq_len."""
    import torch

    out = []
    g = torch.Generator().manual_seed(seed)
    low = 999 if vocab == 30522 else 0
    allowed = torch.tensor([i for i in range(low, vocab) if i not in specials], dtype=torch.long)
    cls, sep = frame_ids(vocab, specials)
    for a, b in pairs:
        if tokenizer is not None:
            enc = tokenizer(a, b, truncation=True, max_length=max_seq_len, return_tensors="pt")
            ids = enc["input_ids"]
        else:
            n_a, n_b = len(a.split()), len(b.split())
            n = min(n_a + n_b + 3, max_seq_len)
            ids = allowed[torch.randint(len(allowed), (1, n), generator=g)]
            ids[0, 0] = cls
            ids[0, min(n_a + 1, n - 1)] = sep
            ids[0, -1] = sep
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out
