"""GLUE metrics against hand-computed values and against scikit-learn / scipy."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from dstrain.finetune import metrics as M


def test_hand_computed_binary():
    # TP=2 (idx 0,1), FN=1 (idx 2), FP=1 (idx 3), TN=2 (idx 4,5)
    preds = [1, 1, 0, 1, 0, 0]
    labels = [1, 1, 1, 0, 0, 0]
    assert M.accuracy(preds, labels) == pytest.approx(4 / 6)
    assert M.f1_binary(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert M.matthews_correlation(preds, labels) == pytest.approx(1 / 3)


def test_hand_computed_degenerate_cases():
    assert M.matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction: undefined -> 0
    assert M.matthews_correlation([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert M.f1_binary([0, 0], [0, 0]) == 0.0
    assert M.pearson([1, 2, 3], [5, 5, 5]) == 0.0
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks of [10, 20, 20, 30] are [1, 2.5, 2.5, 4]; of [1, 2, 3, 4] themselves
    assert list(M._average_ranks([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    assert M.spearmanr([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn_and_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    preds = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    assert M.accuracy(preds, labels) == pytest.approx(accuracy_score(labels, preds))
    assert M.f1_binary(preds, labels) == pytest.approx(f1_score(labels, preds))
    assert M.matthews_correlation(preds, labels) == pytest.approx(matthews_corrcoef(labels, preds))
    three = rng.integers(0, 3, 200)
    three_p = np.where(rng.random(200) < 0.6, three, rng.integers(0, 3, 200))
    assert M.matthews_correlation(three_p, three) == pytest.approx(matthews_corrcoef(three, three_p))
    x = rng.normal(size=100)
    y = x + rng.normal(size=100)
    yq = np.round(y)  # many ties
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearmanr(x, yq) == pytest.approx(stats.spearmanr(x, yq)[0])
    assert M.spearmanr(np.round(x), yq) == pytest.approx(stats.spearmanr(np.round(x), yq)[0])


def test_task_metric_sets_use_usual_names():
    from dstrain.finetune.tasks import GLUE_TASKS

    assert GLUE_TASKS["cola"].metrics == ("matthews_correlation",)
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearmanr")
    assert GLUE_TASKS["mrpc"].metrics == GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
    out = M.classification_metrics(("accuracy", "f1"), [1, 0], [1, 1])
    assert out == {"accuracy": 0.5, "f1": pytest.approx(2 / 3)}
