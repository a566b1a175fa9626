import numpy as np
import pandas as pd
import pytest

from fusion_dag.evaluate import fold_metrics
from tests.conftest import CLASSES


def probability_table(predicted, splits):
    probs = np.eye(len(CLASSES))[predicted]
    table = pd.DataFrame({"id": [str(i) for i in range(len(predicted))], "split": splits})
    for index, name in enumerate(CLASSES):
        table[f"prob_{name}"] = probs[:, index]
    return table


def labels_table(truth):
    return pd.DataFrame(
        {"id": [str(i) for i in range(len(truth))], "label": [CLASSES[t] for t in truth]}
    )


def test_perfect_train_and_chance_validation():
    truth = [0, 1, 2, 1, 0, 1, 2, 1]
    predicted = [0, 1, 2, 1, 1, 1, 1, 1]
    splits = ["train"] * 4 + ["val"] * 4
    metrics = fold_metrics(probability_table(predicted, splits), labels_table(truth), CLASSES)
    assert metrics["train_kappa"] == pytest.approx(1.0)
    assert metrics["kappa"] == pytest.approx(0.0)
    assert metrics["gap"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["pred_frac_P"] == pytest.approx(1.0) and metrics["pred_frac_R"] == 0.0
    assert metrics["f1_I"] == 0.0 and metrics["n_val"] == 4


def test_quadratic_kappa_credits_near_misses():
    truth = [0, 2, 0, 1, 2, 0, 1, 2]
    near = [0, 2, 1, 1, 1, 0, 1, 2]
    far = [0, 2, 2, 1, 0, 0, 1, 2]
    splits = ["train"] * 2 + ["val"] * 6
    near_metrics = fold_metrics(probability_table(near, splits), labels_table(truth), CLASSES)
    far_metrics = fold_metrics(probability_table(far, splits), labels_table(truth), CLASSES)
    assert near_metrics["kappa"] == pytest.approx(far_metrics["kappa"])
    assert near_metrics["qwk"] > far_metrics["qwk"]
