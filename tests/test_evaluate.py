import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from fusion_dag.evaluate import branch_agreement, fold_metrics, weight_sweep
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


def branch_tables(rf_predicted, image_predicted):
    splits = ["val"] * len(rf_predicted)
    return probability_table(rf_predicted, splits), probability_table(image_predicted, splits)


def test_weight_sweep_ends_at_each_branch_alone():
    truth = [0, 1, 2, 1, 0, 2, 1, 1]
    rf, image = branch_tables([0, 1, 1, 1, 0, 2, 1, 0], [2, 1, 2, 0, 0, 2, 2, 1])
    sweep = weight_sweep(rf, image, labels_table(truth), CLASSES)
    assert sweep["metadata_weight"].tolist()[:3] == [0.0, 0.05, 0.1] and len(sweep) == 21
    rf_alone = cohen_kappa_score(truth, [0, 1, 1, 1, 0, 2, 1, 0])
    image_alone = cohen_kappa_score(truth, [2, 1, 2, 0, 0, 2, 2, 1])
    assert sweep["kappa"].iloc[-1] == pytest.approx(rf_alone)
    assert sweep["kappa"].iloc[0] == pytest.approx(image_alone)


def test_branch_agreement_counts_shared_errors():
    truth = [0, 1, 2, 1]
    rf, image = branch_tables([0, 1, 0, 0], [0, 2, 0, 1])
    agreement = branch_agreement(rf, image, labels_table(truth), CLASSES)
    assert agreement["rf_error"] == 0.5 and agreement["image_error"] == 0.5
    assert agreement["both_wrong"] == 0.25
    assert agreement["both_wrong_if_independent"] == 0.25
