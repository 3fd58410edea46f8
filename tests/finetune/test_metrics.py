"""GLUE metrics against hand-computed values, including the cases where a metric is undefined."""

import math
import warnings

import pytest

from dstrain.finetune import metrics as M


def test_hand_computed_binary():
    # TP=2 (idx 0,1), FN=1 (idx 2), FP=1 (idx 3), TN=2 (idx 4,5)
    preds = [1, 1, 0, 1, 0, 0]
    labels = [1, 1, 1, 0, 0, 0]
    assert M.accuracy(preds, labels) == pytest.approx(4 / 6)
    assert M.f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert M.matthews_correlation(preds, labels) == pytest.approx(1 / 3)
    assert M.matthews_correlation([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_hand_computed_multiclass_mcc_and_f1_of_one_class():
    # Confusion matrix (rows true, columns predicted): [[1,1,0],[0,2,0],[1,0,1]]; trace c=4, s=6,
    # true counts t=[2,2,2], predicted p=[2,3,1]:
    # (c*s - p.t) / sqrt((s^2 - p.p)(s^2 - t.t)) = (24 - 12) / sqrt(22 * 24)
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    assert M.matthews_correlation(preds, labels) == pytest.approx(12 / math.sqrt(22 * 24))
    # F1 of class 1 alone: TP=2, FP=1 (idx 1), FN=0
    assert M.f1_binary(preds, labels) == pytest.approx(4 / 5)


def test_correlations_hand_computed_with_ties():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.spearmanr([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    # ranks of [10, 20, 20, 30] are [1, 2.5, 2.5, 4] (ties share their mean rank); Pearson r of those
    # and [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5)
    assert M.spearmanr([10, 20, 20, 30], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_undefined_metrics_are_zero_not_nan_and_silent():
    """A constant prediction (a collapsed model) must score 0, with no nan in metrics.json and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0
        assert M.f1_binary([0, 0], [0, 0]) == 0.0  # no positives at all
        assert M.pearson([1, 2, 3], [5, 5, 5]) == 0.0
        assert M.pearson([5, 5, 5], [1, 2, 3]) == 0.0
        assert M.spearmanr([1.5, 1.5, 1.5], [1, 2, 3]) == 0.0
        assert M.pearson([1.0], [2.0]) == 0.0  # one example: undefined
        empty = M.classification_metrics(("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr"), [], [])
        assert empty == dict.fromkeys(empty, 0.0) and len(empty) == 5


def test_task_metric_sets_use_usual_names():
    from dstrain.finetune.tasks import GLUE_TASKS

    assert GLUE_TASKS["cola"].metrics == ("matthews_correlation",)
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearmanr")
    assert GLUE_TASKS["mrpc"].metrics == GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
    out = M.classification_metrics(("accuracy", "f1"), [1, 0], [1, 1])
    assert out == {"accuracy": 0.5, "f1": pytest.approx(2 / 3)}
