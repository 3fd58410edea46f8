"""SQuAD v1.1: loading, features with a doc stride, n-best span decoding, and the official EM/F1.

An example is {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}} (the hub's
layout). Data comes from `datasets.load_dataset("squad")` or from `--data_dir` holding the official JSON
files (`train-v1.1.json`, `dev-v1.1.json`, or `train.json`/`dev.json`) or JSON Lines in the hub layout.
Every answer is checked against its context (context[start:start+len(text)] == text) before training.

Features follow the Hugging Face `run_qa` recipe: the question and a window of the context of at most
`max_seq_length` tokens, windows overlapping by `doc_stride` tokens. `normalize_answer`,
`exact_match_score`, `f1_score` and `evaluate` are the official v1.1 evaluation script's logic.
"""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path

import numpy as np

from dstrain.config import UserError

# ---------------------------------------------------------------------------------------------- loading


def _check_example(ex: dict, where: str, need_answers: bool = True) -> dict:
    for key in ("id", "question", "context", "answers"):
        if key not in ex:
            raise UserError(f"{where}: missing field {key!r}; SQuAD records need id, question, context, answers")
    texts, starts = ex["answers"].get("text", []), ex["answers"].get("answer_start", [])
    if len(texts) != len(starts):
        raise UserError(f"{where} (id {ex['id']}): {len(texts)} answer texts but {len(starts)} answer_start values")
    if need_answers and not texts:
        raise UserError(f"{where} (id {ex['id']}): no answers; SQuAD v1.1 questions all have an answer")
    for text, start in zip(texts, starts):
        if not isinstance(start, int) or ex["context"][start:start + len(text)] != text:
            found = ex["context"].find(text)
            hint = f" (the text occurs at {found})" if found >= 0 else " (the text does not occur in the context)"
            raise UserError(f"{where} (id {ex['id']}): answer {text!r} does not match the context at "
                            f"answer_start {start}{hint}; fix answer_start or the answer text")
    return ex


def load_squad_json(path: Path) -> list[dict]:
    """Official SQuAD JSON ({"data": [{"paragraphs": [{"context", "qas": [...]}]}]}) or JSON Lines."""
    if path.suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if text.strip():
                    try:
                        r = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path} line {line}: not valid JSON ({e})") from None
                    out.append(_check_example(r, f"{path} line {line}"))
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an official SQuAD JSON file with a top-level \"data\" list ({e})") from None
    out = []
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path} data[{a}].paragraphs[{p}].qas[{q}]"
                if "context" not in para:
                    raise UserError(f"{path} data[{a}].paragraphs[{p}]: missing field 'context'")
                answers = qa.get("answers", [])
                ex = {"id": qa.get("id"), "question": qa.get("question"), "context": para["context"],
                      "answers": {"text": [x.get("text") for x in answers],
                                  "answer_start": [x.get("answer_start") for x in answers]}}
                if ex["id"] is None or ex["question"] is None:
                    raise UserError(f"{where}: missing 'id' or 'question'")
                out.append(_check_example(ex, where))
    if not out:
        raise UserError(f"{path}: no questions")
    return out


def find_squad_file(data_dir: Path, split: str) -> Path:
    stems = {"train": ("train-v1.1", "train"), "validation": ("dev-v1.1", "dev", "validation")}[split]
    for stem in stems:
        for ext in (".json", ".jsonl"):
            p = data_dir / f"{stem}{ext}"
            if p.is_file():
                return p
    raise UserError(f"--data_dir {data_dir}: no SQuAD file for the {split} split; expected one of "
                    f"{', '.join(s + '.json' for s in stems)} (or .jsonl)")


def load_squad(data_dir: str, splits: tuple[str, ...]) -> dict[str, list[dict]]:
    if data_dir:
        d = Path(data_dir)
        if not d.is_dir():
            raise UserError(f"--data_dir {d}: no such folder")
        return {s: load_squad_json(find_squad_file(d, s)) for s in splits}
    import datasets  # only when hub data is asked for

    out = {}
    for s in splits:
        try:
            ds = datasets.load_dataset("squad", split=s)
        except Exception as e:
            raise UserError(f"--task squad: could not load SQuAD from the Hugging Face hub ({e}). Download "
                            f"train-v1.1.json and dev-v1.1.json and pass --data_dir DIR.") from None
        out[s] = [_check_example(dict(r), f"hub squad {s} row {i}") for i, r in enumerate(ds)]
    return out


# --------------------------------------------------------------------------------------------- features


def _tokenize(tokenizer, examples: list[dict], max_seq_length: int, doc_stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("--task squad needs a fast (Rust) tokenizer for character offsets; the model's tokenizer "
                        "folder has no tokenizer.json. Pass --tokenizer with a fast tokenizer.")
    pad_right = tokenizer.padding_side == "right"
    q = [e["question"].lstrip() for e in examples]  # leading spaces waste the window (as run_qa does)
    c = [e["context"] for e in examples]
    longest_q = max((len(ids) for ids in tokenizer(q, add_special_tokens=False)["input_ids"]), default=0)
    room = max_seq_length - longest_q - 3  # [CLS] question [SEP] context [SEP]
    if doc_stride >= room:
        raise UserError(f"--doc_stride {doc_stride}: must be below the context room of a window, {room} tokens "
                        f"(--max_seq_length {max_seq_length} minus the longest question, {longest_q} tokens, "
                        f"minus 3 special tokens); lower --doc_stride or raise --max_seq_length")
    return tokenizer(q if pad_right else c, c if pad_right else q,
                     truncation="only_second" if pad_right else "only_first",
                     max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                     return_offsets_mapping=True, padding=False), (1 if pad_right else 0)


def train_features(tokenizer, examples: list[dict], max_seq_length: int, doc_stride: int) -> list[dict]:
    """One feature per context window: input ids plus the answer's token start/end.

    Windows that do not contain the whole first answer point both positions at [CLS] (index 0), as in
    the BERT recipe, so the model learns "not in this window" there.
    """
    enc, ctx_id = _tokenize(tokenizer, examples, max_seq_length, doc_stride)
    feats = []
    for i in range(len(enc["input_ids"])):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq_ids = enc.sequence_ids(i)
        offsets = enc["offset_mapping"][i]
        s_char = ex["answers"]["answer_start"][0]
        e_char = s_char + len(ex["answers"]["text"][0])
        ctx = [k for k, s in enumerate(seq_ids) if s == ctx_id]
        start = end = 0
        if ctx and offsets[ctx[0]][0] <= s_char and offsets[ctx[-1]][1] >= e_char:
            start = next(k for k in ctx if offsets[k][1] > s_char)
            end = next(k for k in reversed(ctx) if offsets[k][0] < e_char)
        f = {k: enc[k][i] for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        f.update(start_positions=start, end_positions=end)
        feats.append(f)
    return feats


def eval_features(tokenizer, examples: list[dict], max_seq_length: int, doc_stride: int) -> list[dict]:
    """Features with `example_index` and `offset_mapping` (None outside the context) for decoding."""
    enc, ctx_id = _tokenize(tokenizer, examples, max_seq_length, doc_stride)
    feats = []
    for i in range(len(enc["input_ids"])):
        seq_ids = enc.sequence_ids(i)
        f = {k: enc[k][i] for k in enc.keys() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        f["example_index"] = enc["overflow_to_sample_mapping"][i]
        f["offset_mapping"] = [tuple(o) if seq_ids[k] == ctx_id else None
                               for k, o in enumerate(enc["offset_mapping"][i])]
        feats.append(f)
    return feats


def postprocess(examples: list[dict], features: list[dict], start_logits: list, end_logits: list,
                n_best_size: int = 20, max_answer_length: int = 30) -> tuple[dict[str, str], dict[str, list]]:
    """Best answer text per example id from the logits of all its windows.

    For each window, the `n_best_size` highest start and end logits are paired; a pair (s, e) is kept
    when both are context tokens, e >= s and e - s + 1 <= max_answer_length; its score is
    start_logit[s] + end_logit[e] and its text is context[offset[s][0] : offset[e][1]]. The best score
    over all windows of the example wins. start_logits[i], end_logits[i]: (len(features[i].input_ids),).
    Returns ({id: text}, {id: n-best list of {"text", "score"}}).
    """
    by_example = collections.defaultdict(list)
    for i, f in enumerate(features):
        by_example[f["example_index"]].append(i)
    preds, nbest = {}, {}
    for ei, ex in enumerate(examples):
        cands = []
        for fi in by_example.get(ei, []):
            sl, el = np.asarray(start_logits[fi]), np.asarray(end_logits[fi])
            offsets = features[fi]["offset_mapping"]
            for s in np.argsort(sl)[::-1][:n_best_size]:
                for e in np.argsort(el)[::-1][:n_best_size]:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    cands.append((float(sl[s] + el[e]), ex["context"][offsets[s][0]:offsets[e][1]]))
        cands.sort(key=lambda c: -c[0])
        top = cands[:n_best_size]
        preds[ex["id"]] = top[0][1] if top else ""
        nbest[ex["id"]] = [{"text": t, "score": s} for s, t in top]
    return preds, nbest


# ----------------------------------------------- the official SQuAD v1.1 evaluation (evaluate-v1.1.py)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, gt) for gt in ground_truths)


def evaluate(examples: list[dict], predictions: dict[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over all questions; an unanswered question scores 0."""
    f1 = exact_match = total = 0
    for ex in examples:
        total += 1
        if ex["id"] not in predictions:
            continue  # the official script prints "Unanswered question ... will receive score 0."
        gts = ex["answers"]["text"]
        pred = predictions[ex["id"]]
        exact_match += metric_max_over_ground_truths(exact_match_score, pred, gts)
        f1 += metric_max_over_ground_truths(f1_score, pred, gts)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}
