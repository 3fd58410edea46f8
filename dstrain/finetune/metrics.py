"""The official metrics of the GLUE tasks, computed with scikit-learn and scipy.

GLUE scores are fractions in [0, 1] (as the `glue` metric of Hugging Face `evaluate` reports them, which
calls the same library functions); SQuAD EM/F1 are percentages, as the official v1.1 script prints them
(see squad.py). Where a metric is undefined (a constant prediction or label column, no positives, no
examples) it is 0.0, never nan: a nan would poison the median over seeds and the macro of `glue_table`,
and 0 is what scikit-learn's MCC already returns in that case.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(preds, labels) -> float:
    """mean(pred_i == label_i) over N examples; preds, labels: (N,) ints."""
    return float(skm.accuracy_score(labels, preds)) if len(labels) else 0.0


def f1_binary(preds, labels, positive: int = 1) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN); 0 when there are no positives at all.

    `labels=[positive]` scores that one class whatever other label values occur (MRPC and QQP have 0/1).
    """
    if not len(labels):
        return 0.0
    return float(skm.f1_score(labels, preds, labels=[positive], average="micro", zero_division=0))


def matthews_correlation(preds, labels) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004, sklearn's matthews_corrcoef).

    For two classes (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when undefined (a constant
    prediction, e.g. a CoLA model that always answers "acceptable").
    """
    return float(skm.matthews_corrcoef(labels, preds)) if len(labels) else 0.0


def _constant(x) -> bool:
    return len(x) < 2 or bool(np.ptp(np.asarray(x, dtype=np.float64)) == 0)


def pearson(x, y) -> float:
    """Pearson r = cov(x, y) / (std(x) std(y)); 0 when either side is constant (scipy: nan + warning)."""
    return 0.0 if _constant(x) or _constant(y) else float(stats.pearsonr(x, y).statistic)


def spearmanr(x, y) -> float:
    """Spearman rho = Pearson r of the average ranks (ties share their mean rank); 0 when a side is constant."""
    return 0.0 if _constant(x) or _constant(y) else float(stats.spearmanr(x, y).statistic)


# The metric set each GLUE task reports, under the names `evaluate.load("glue", task)` uses.
def classification_metrics(task_metrics: tuple[str, ...], preds, labels) -> dict[str, float]:
    """Compute the named metrics; preds/labels are ints (classification) or floats (regression)."""
    fns = {"accuracy": accuracy, "f1": f1_binary, "matthews_correlation": matthews_correlation,
           "pearson": pearson, "spearmanr": spearmanr}
    return {name: fns[name](preds, labels) for name in task_metrics}
