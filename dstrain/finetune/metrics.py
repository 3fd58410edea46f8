"""The official metrics of the GLUE tasks, as pure numpy functions (no sklearn/scipy at run time).

GLUE scores are fractions in [0, 1] (as the `glue` metric of Hugging Face `evaluate` reports them);
SQuAD EM/F1 are percentages, as the official v1.1 script prints them (see squad.py).
"""

from __future__ import annotations

import numpy as np


def accuracy(preds, labels) -> float:
    """mean(pred_i == label_i) over N examples; preds, labels: (N,) ints."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else 0.0


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN); 0 when there are no positives at all."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = int(((preds == positive) & (labels == positive)).sum())
    fp = int(((preds == positive) & (labels != positive)).sum())
    fn = int(((preds != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_correlation(preds, labels) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004, as sklearn computes it).

    With C the confusion matrix, t_k = row sums (true), p_k = column sums (predicted), c = trace, s = N:
        MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) * (s^2 - sum_k t_k^2)),   0 if undefined.
    For two classes this is (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    idx = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for y, p in zip(labels, preds):
        cm[idx[y], idx[p]] += 1
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (p * t).sum()) / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    """Pearson r = cov(x, y) / (std(x) std(y)); 0 when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt((xm * xm).sum() * (ym * ym).sum())
    return float((xm * ym).sum() / denom) if denom > 0 else 0.0


def _average_ranks(x) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearmanr(x, y) -> float:
    """Spearman rho = Pearson r of the average ranks (ties handled as scipy does)."""
    return pearson(_average_ranks(x), _average_ranks(y))


# The metric set each GLUE task reports, under the names `evaluate.load("glue", task)` uses.
def classification_metrics(task_metrics: tuple[str, ...], preds, labels) -> dict[str, float]:
    """Compute the named metrics; preds/labels are ints (classification) or floats (regression)."""
    fns = {"accuracy": accuracy, "f1": f1_binary, "matthews_correlation": matthews_correlation,
           "pearson": pearson, "spearmanr": spearmanr}
    return {name: fns[name](preds, labels) for name in task_metrics}
