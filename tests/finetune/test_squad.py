"""SQuAD v1.1: official EM/F1, windows with a doc stride, span decoding mapped back to the context,
and the loader's checks of answer offsets."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from dstrain.config import UserError
from dstrain.finetune import squad as S

from tests.finetune.conftest import _minilm_tokenizer_dir


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(_minilm_tokenizer_dir()))


def test_normalize_answer_punctuation_articles_case_space():
    assert S.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert S.normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert S.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert S.exact_match_score("the Denver Broncos", "Denver Broncos.")
    assert not S.exact_match_score("Denver", "Denver Broncos")


def test_f1_hand_computed():
    # pred tokens [big, red, dog], gold [red, dog]: P = 2/3, R = 1, F1 = 0.8
    assert S.f1_score("the big red dog", "a red dog") == pytest.approx(0.8)
    assert S.f1_score("cat", "dog") == 0
    # repeated tokens match at most as often as in the gold answer: P = 1/2, R = 1
    assert S.f1_score("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_evaluate_max_over_ground_truths_and_unanswered():
    examples = [
        {"id": "1", "answers": {"text": ["Denver Broncos", "The Broncos", "Broncos"], "answer_start": [0, 0, 0]}},
        {"id": "2", "answers": {"text": ["Santa Clara, California"], "answer_start": [0]}},
        {"id": "3", "answers": {"text": ["Levi's Stadium"], "answer_start": [0]}},
    ]
    preds = {"1": "broncos", "2": "Santa Clara"}  # "3" unanswered: scores 0
    out = S.evaluate(examples, preds)
    # EM: 1 (matches "Broncos" after normalisation) + 0 + 0; F1: 1 + 2*(1*2/3)/(1+2/3)=0.8 + 0
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8) / 3)


def _boundary_example(tok, max_len=24, stride=8):
    """A context where the first window ends between the two words of the answer."""
    filler = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
              "sixteen seventeen eighteen nineteen twenty").split()
    for pos in range(len(filler)):
        words = filler[:pos] + ["Purple", "Elephant"] + filler[pos:]
        context = " ".join(words)
        ex = {"id": "b", "question": "what?", "context": context,
              "answers": {"text": ["Purple Elephant"], "answer_start": [context.index("Purple")]}}
        feats = S.eval_features(tok, [ex], max_len, stride)
        first = [o for o in feats[0]["offset_mapping"] if o is not None]
        s = ex["answers"]["answer_start"][0]
        if len(feats) > 1 and s <= first[-1][0] < s + len("Purple Elephant") and first[-1][1] <= s + len("Purple"):
            return ex, feats
    raise AssertionError("no layout put the window boundary inside the answer")


def test_answer_across_stride_boundary_is_decoded_from_the_window_that_holds_it(tok):
    ex, feats = _boundary_example(tok)
    s_char = ex["answers"]["answer_start"][0]
    starts = [np.zeros(len(f["input_ids"])) for f in feats]
    ends = [np.zeros(len(f["input_ids"])) for f in feats]
    for fi, f in enumerate(feats):
        for k, o in enumerate(f["offset_mapping"]):
            if o is None:
                continue
            if o[0] == s_char:  # "purple"
                starts[fi][k] = 5.0 if fi == 0 else 4.0
                ends[fi][k] = 1.0 if fi == 0 else 0.0
            if o[1] == s_char + len("Purple Elephant"):  # "elephant", only in a later window
                ends[fi][k] = 4.0
    # window 0 can only offer "Purple" (5 + 1 = 6); a later window offers "Purple Elephant" (4 + 4 = 8)
    preds, nbest = S.postprocess([ex], feats, starts, ends, n_best_size=5, max_answer_length=30)
    assert preds["b"] == "Purple Elephant"  # mapped back to the original text, case kept
    assert nbest["b"][0]["score"] == pytest.approx(8.0)
    assert "Purple" in [c["text"] for c in nbest["b"]]
    # the training features: the cut window points at [CLS], the full one at the answer's tokens
    train = S.train_features(tok, [ex], 24, 8)
    assert (train[0]["start_positions"], train[0]["end_positions"]) == (0, 0)
    full = [f for f in train if f["start_positions"] > 0]
    assert full, "some window must hold the whole answer"
    f = full[0]
    assert tok.decode(f["input_ids"][f["start_positions"]:f["end_positions"] + 1]) == "purple elephant"


def test_postprocess_rejects_invalid_spans(tok):
    ex = {"id": "x", "question": "q?", "context": "alpha beta gamma delta",
          "answers": {"text": ["beta"], "answer_start": [6]}}
    feats = S.eval_features(tok, [ex], 32, 8)
    n = len(feats[0]["input_ids"])
    start, end = np.zeros(n), np.zeros(n)
    start[0] = end[0] = 100.0  # [CLS] is not in the context: never an answer
    ctx = [k for k, o in enumerate(feats[0]["offset_mapping"]) if o is not None]
    start[ctx[2]], end[ctx[1]] = 10.0, 10.0  # end before start: invalid
    end[ctx[2]] = 3.0
    preds, _ = S.postprocess([ex], feats, [start], [end], n_best_size=20, max_answer_length=30)
    assert preds["x"] == "gamma"
    preds, _ = S.postprocess([ex], feats, [start], [end], n_best_size=20, max_answer_length=1)
    assert preds["x"] == "gamma"  # length 1 span still allowed


def test_official_json_loading_and_offset_errors(tmp_path):
    good = {"data": [{"title": "t", "paragraphs": [{"context": "The cat sat on the mat.", "qas": [
        {"id": "a", "question": "who sat?", "answers": [{"text": "The cat", "answer_start": 0},
                                                        {"text": "cat", "answer_start": 4}]}]}]}]}
    p = tmp_path / "dev-v1.1.json"
    p.write_text(json.dumps(good))
    ex = S.load_squad_json(p)
    assert ex[0]["answers"] == {"text": ["The cat", "cat"], "answer_start": [0, 4]}
    good["data"][0]["paragraphs"][0]["qas"][0]["answers"][1]["answer_start"] = 5
    p.write_text(json.dumps(good))
    with pytest.raises(UserError) as e:
        S.load_squad_json(p)
    msg = str(e.value)
    assert str(p) in msg and "qas[0]" in msg and "'cat'" in msg and "occurs at 4" in msg
    jl = tmp_path / "train.jsonl"
    jl.write_text(json.dumps({"id": "z", "question": "q", "context": "abc"}) + "\n")
    with pytest.raises(UserError, match=r"train.jsonl line 1: missing field 'answers'"):
        S.load_squad_json(jl)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no SQuAD file for the train split; expected one of train-v1.1.json"):
        S.find_squad_file(tmp_path / "empty", "train")


def test_doc_stride_too_large_is_a_clear_error(tok):
    ex = {"id": "x", "question": "a fairly long question with many words?", "context": "alpha beta",
          "answers": {"text": ["beta"], "answer_start": [6]}}
    with pytest.raises(UserError, match="--doc_stride 24: must be below the context room"):
        S.eval_features(tok, [ex], 32, 24)
