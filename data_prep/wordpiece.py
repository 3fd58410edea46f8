"""A deterministic WordPiece vocabulary trainer (the `tokenizers` one is not: huggingface/tokenizers#1794).

`tokenizers.trainers.WordPieceTrainer` gives a different vocabulary on every run of the same corpus: it
numbers the `##` pieces in hash-map order, and those numbers break ties between equally frequent merges.
The study must be deterministic for a seed, so the vocabulary is learned here with the same algorithm
(BPE merges over word counts, `##` marking a piece that continues a word, as the WordPiece trainer does)
and ties broken by the pieces' text. The result is handed to `tokenizers.models.WordPiece`, so encoding is
the library's greedy longest-match-first, as before.

    counts = Counter(words)                    # pre-tokenized, normalized words
    vocab = learn_vocab(counts, vocab_size=3000, min_frequency=2, special_tokens=["[PAD]", ...])

Merge loop: the pair (a, b) of adjacent pieces with the highest count (sum over words of count(word) x
occurrences in it) becomes one piece a + b without b's "##"; ties go to the smaller (a, b) as strings.
Only the words holding the merged pair are rewritten, and their pairs re-counted, so each merge costs the
size of those words, not the corpus. A heap of (-count, a, b) entries, checked against the live count when
popped, finds the best pair.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Iterable, Mapping


def learn_vocab(word_counts: Mapping[str, int], vocab_size: int, min_frequency: int,
                special_tokens: Iterable[str], prefix: str = "##") -> list[str]:
    """Vocabulary in id order: special tokens, the alphabet, its `##` forms, then merged pieces in merge order.

    Stops at `vocab_size` pieces, or earlier when no pair occurs at least `min_frequency` times.
    """
    vocab = list(dict.fromkeys(special_tokens))
    words = sorted(word_counts)  # a fixed order: nothing below depends on hash or insertion order
    counts = [int(word_counts[w]) for w in words]
    pieces = [[w[0]] + [prefix + c for c in w[1:]] for w in words]
    alphabet = sorted({c for w in words for c in w})
    continuing = sorted({p for ps in pieces for p in ps[1:]})
    seen = set(vocab)
    for p in alphabet + continuing:
        if p not in seen:
            vocab.append(p)
            seen.add(p)

    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(i: int, sign: int) -> set[tuple[str, str]]:
        ps, touched = pieces[i], set()
        for pair in zip(ps, ps[1:]):
            pair_count[pair] += sign * counts[i]
            (where[pair].add if sign > 0 else where[pair].discard)(i)
            touched.add(pair)
        return touched

    for i in range(len(words)):
        add(i, +1)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        live = pair_count.get((a, b), 0)
        if live != -neg:  # stale entry: the pair's count changed since it was pushed
            if live > 0:
                heapq.heappush(heap, (-live, a, b))
            continue
        if live < min_frequency:
            break
        new = a + (b[len(prefix):] if b.startswith(prefix) else b)
        touched: set[tuple[str, str]] = set()
        for i in sorted(where[(a, b)]):
            touched |= add(i, -1)
            ps, out, k = pieces[i], [], 0
            while k < len(ps):
                if k + 1 < len(ps) and ps[k] == a and ps[k + 1] == b:
                    out.append(new)
                    k += 2
                else:
                    out.append(ps[k])
                    k += 1
            pieces[i] = out
            touched |= add(i, +1)
        for pair in touched:
            c = pair_count.get(pair, 0)
            if c <= 0:
                pair_count.pop(pair, None)
                where.pop(pair, None)
            elif pair != (a, b):
                heapq.heappush(heap, (-c, *pair))
        pair_count.pop((a, b), None)
        where.pop((a, b), None)
        if new not in seen:
            vocab.append(new)
            seen.add(new)
    return vocab
