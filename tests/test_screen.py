import numpy as np
import pandas as pd

from fusion_dag.folds import without_screened
from fusion_dag.screen import screen_fold, training_rows
from tests.conftest import CLASSES

SETTINGS = {"n_estimators": 60, "min_samples_leaf": 2, "class_weight": "balanced", "inner_folds": 3}


def samples_and_folds(seed=0, patients=90):
    """Visits whose label a feature nearly decides (``signal``), with a noise column and a
    text column; three patient-grouped folds."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(2, 5, patients)
    group = np.repeat([f"p{i:02d}" for i in range(patients)], visits)
    label = rng.choice(CLASSES, len(group), p=[0.3, 0.55, 0.15])
    signal = pd.Series(label).map({"I": 0.0, "P": 1.0, "R": 2.0}).to_numpy()
    samples = pd.DataFrame(
        {
            "id": [f"v{i:03d}" for i in range(len(group))],
            "group": group,
            "label": label,
            "signal": signal + rng.normal(scale=0.15, size=len(group)),
            "noise": rng.normal(size=len(group)),
            "site": rng.choice(["a", "b"], len(group)),
        }
    )
    folds = samples[["id", "group", "label"]].assign(
        repeat=1, fold=pd.Series(group).str[1:].astype(int).mod(3).add(1).to_numpy()
    )
    return samples, folds


def screened(samples, folds, fold=2):
    return screen_fold(samples, folds, fold, CLASSES, SETTINGS, 42, 1)


def test_planted_label_errors_in_training_are_screened_and_validation_never_is():
    samples, folds = samples_and_folds()
    rng = np.random.default_rng(3)
    train_ids = training_rows(samples, folds, 2)["id"]
    planted = rng.choice(train_ids, 20, replace=False)
    wrong = samples["id"].isin(planted)
    shifted = {"I": "R", "P": "I", "R": "P"}
    samples.loc[wrong, "label"] = samples.loc[wrong, "label"].map(shifted)
    folds["label"] = samples["label"]
    table = screened(samples, folds)
    assert list(table.columns) == ["id", "group", "label", "prob_label"]
    found = set(table["id"]) & set(planted)
    # Most planted errors found (a random screen of as many visits would find about 2), and
    # few correct labels screened.
    assert len(found) >= 12 and len(found) >= 0.8 * len(table)
    assert not set(table["id"]) & set(folds.loc[folds["fold"] == 2, "id"])
    assert table["prob_label"].is_monotonic_increasing  # least plausible first
    left = without_screened(folds, table)
    assert len(left) == len(folds) - len(table)
    assert (left["fold"] == 2).sum() == (folds["fold"] == 2).sum()


def test_validation_labels_and_features_never_reach_a_folds_screen():
    """Permuting fold 2's validation visits' labels and shuffling their metadata changes no
    screened visit of fold 2; the same permutation of its training visits does."""
    samples, folds = samples_and_folds(seed=1)
    before = screened(samples, folds)
    rng = np.random.default_rng(7)

    def permuted(rows):
        changed, changed_folds = samples.copy(), folds.copy()
        order = rng.permutation(rows)
        changed.loc[rows, "label"] = samples.loc[order, "label"].to_numpy()
        changed_folds["label"] = changed["label"]
        for column in ("signal", "noise", "site"):
            changed.loc[rows, column] = samples.loc[rng.permutation(rows), column].to_numpy()
        return changed, changed_folds

    validation = np.flatnonzero(folds["fold"] == 2)
    pd.testing.assert_frame_equal(screened(*permuted(validation)), before)
    training = np.flatnonzero(folds["fold"] != 2)
    assert not screened(*permuted(training)).equals(before)
