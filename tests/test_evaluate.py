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
    assert agreement["metadata_error"] == 0.5 and agreement["image_error"] == 0.5
    assert agreement["both_wrong"] == 0.25
    assert agreement["both_wrong_if_independent"] == 0.25


def test_weighted_metrics_agree_with_scikit_learn_sample_weights():
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, recall_score

    from fusion_dag.evaluate import weighted_metrics

    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    probs[np.arange(300), truth] += rng.random(300)
    probs /= probs.sum(axis=1, keepdims=True)
    weight = rng.integers(0, 4, 300).astype(float)
    predicted = probs.argmax(axis=1)
    got = {k: v[0] for k, v in weighted_metrics(weight[None, :], truth, probs).items()}
    labels = [0, 1, 2]
    expected = {
        "kappa": cohen_kappa_score(truth, predicted, labels=labels, sample_weight=weight),
        "qwk": cohen_kappa_score(
            truth, predicted, labels=labels, weights="quadratic", sample_weight=weight
        ),
        "balanced_accuracy": balanced_accuracy_score(truth, predicted, sample_weight=weight),
        "macro_f1": f1_score(truth, predicted, average="macro", sample_weight=weight),
        "log_loss": log_loss(truth, probs, labels=labels, sample_weight=weight),
        "brier": np.average(((probs - np.eye(3)[truth]) ** 2).sum(axis=1), weights=weight),
    }
    recall = recall_score(truth, predicted, average=None, labels=labels, sample_weight=weight)
    expected.update({f"recall_{k}": r for k, r in enumerate(recall)})
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_one_vs_rest_auc_agrees_with_scikit_learn_on_tied_and_weighted_scores():
    from sklearn.metrics import roc_auc_score

    from fusion_dag.evaluate import one_vs_rest_auc

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    probs[:100] = np.round(probs[:100], 1)  # a third of the scores tied
    probs /= probs.sum(axis=1, keepdims=True)
    weights = rng.integers(0, 3, (4, 300)).astype(float)  # four resamples, some rows drawn 0 times
    expected = [
        roc_auc_score(truth, probs, multi_class="ovr", average="macro", sample_weight=w)
        for w in weights
    ]
    assert one_vs_rest_auc(weights, truth, probs) == pytest.approx(expected, abs=1e-12)
    # A resample without any row of a class has no AUC.
    assert np.isnan(one_vs_rest_auc(np.where(truth == 2, 0.0, 1.0)[None, :], truth, probs)[0])


def test_oof_table_pools_each_rows_validation_prediction_per_repeat():
    from fusion_dag.evaluate import oof_table

    folds = pd.DataFrame(
        {
            "id": ["a", "b", "a", "b"],
            "group": ["g1", "g2", "g1", "g2"],
            "label": ["I", "P", "I", "P"],
            "repeat": [1, 1, 2, 2],
            "fold": [1, 2, 2, 1],
        }
    )

    def probs(validation_id, value):
        rows = pd.DataFrame({"id": ["a", "b"], "split": ["train", "train"]})
        rows.loc[rows["id"] == validation_id, "split"] = "val"
        rows[[f"prob_{c}" for c in CLASSES]] = value
        return rows

    parts = [
        (1, 1, probs("a", 0.1)),
        (1, 2, probs("b", 0.2)),
        (2, 1, probs("b", 0.3)),
        (2, 2, probs("a", 0.4)),
    ]
    oof = oof_table(parts, folds, CLASSES)
    assert list(oof.columns[:5]) == ["repeat", "fold", "id", "group", "label"]
    values = oof.set_index(["repeat", "id"])["prob_I"].to_dict()
    assert values == {(1, "a"): 0.1, (1, "b"): 0.2, (2, "b"): 0.3, (2, "a"): 0.4}
