import numpy as np
import pandas as pd
import pytest

from fusion_dag.report import (
    comparisons_table,
    headline_table,
    markdown_table,
    per_fold_table,
)
from tests.conftest import CLASSES

EVALUATION = {"bootstrap": 300, "confidence": 0.95}
INTERVALS = ["kappa", "qwk", "balanced_accuracy", "macro_f1", "brier", "log_loss", "ece"]
HEADLINE = (
    ["combination", "n_folds", "n_repeats", "n_rows"]
    + [
        column
        for metric in INTERVALS
        for column in (
            [f"{metric}_mean", "kappa_std", f"{metric}_ci_low", f"{metric}_ci_high"]
            if metric == "kappa"
            else [f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high"]
        )
    ]
    + ["accuracy_mean"]
    + [column for c in CLASSES for column in (f"f1_{c}_mean", f"recall_{c}_mean")]
    + ["train_kappa_mean", "gap_mean", "fit_kappa_mean"]
    + [f"pred_frac_{c}" for c in CLASSES]
)


def synthetic_oof(skill: float, repeats: int = 2, patients: int = 60, seed: int = 0):
    """Pooled out-of-fold predictions: 3 visits per patient, 3 folds, ``skill`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(patients, 3))
    rows = []
    for repeat in range(1, repeats + 1):
        folds = rng.permutation(np.arange(patients) % 3) + 1
        for patient in range(patients):
            for visit in range(3):
                label = labels[patient, visit]
                probs = rng.dirichlet(np.ones(3))
                probs = (1 - skill) * probs + skill * np.eye(3)[label]
                rows.append(
                    {
                        "repeat": repeat,
                        "fold": folds[patient],
                        "id": f"p{patient}_v{visit}",
                        "group": f"p{patient}",
                        "label": CLASSES[label],
                        **{f"prob_{c}": probs[k] for k, c in enumerate(CLASSES)},
                    }
                )
    return pd.DataFrame(rows)


def per_fold(combination, oof):
    return [
        {
            "combination": combination,
            "repeat": r,
            "fold": f,
            "kappa": 0.3,
            "train_kappa": 0.4,
            "fit_kappa": 0.9,
        }
        for r, f in sorted(set(zip(oof["repeat"], oof["fold"], strict=True)))
    ]


def test_headline_has_the_contract_columns_and_intervals_around_the_points():
    oofs = {"metadata": synthetic_oof(0.4), "thermal_map": synthetic_oof(0.1, seed=1)}
    records = per_fold("metadata", oofs["metadata"]) + per_fold("thermal_map", oofs["thermal_map"])
    headline = headline_table(per_fold_table(records), oofs, CLASSES, EVALUATION, 42)
    assert list(headline.columns) == HEADLINE
    assert headline["combination"].tolist() == ["metadata", "thermal_map"]
    row = headline.set_index("combination").loc["metadata"]
    assert (row["n_folds"], row["n_repeats"], row["n_rows"]) == (3, 2, 180)
    for metric in INTERVALS:
        assert row[f"{metric}_ci_low"] <= row[f"{metric}_mean"] <= row[f"{metric}_ci_high"]
    assert row["gap_mean"] == pytest.approx(0.4 - row["kappa_mean"])
    assert headline.loc[0, "kappa_mean"] > headline.loc[1, "kappa_mean"]


def test_a_model_compared_with_itself_differs_by_zero_with_no_evidence():
    oof = synthetic_oof(0.3)
    table = comparisons_table({"a+b": oof, "a": oof.copy()}, CLASSES, EVALUATION, 42)
    row = table.iloc[0]
    assert (row["combination"], row["versus"]) == ("a+b", "a")
    assert row["kappa_diff"] == 0.0 and row["kappa_diff_ci_low"] == row["kappa_diff_ci_high"] == 0.0
    assert row["p_value"] == 1.0 and row["verdict"] == "no evidence of a difference"


def test_comparison_uses_only_rows_both_sides_scored_and_finds_a_real_gain():
    strong, weak = synthetic_oof(0.6, seed=3), synthetic_oof(0.05, seed=3)
    weak = weak[~weak["group"].isin(["p0", "p1"])]  # a modality that dropped two patients
    table = comparisons_table({"a+b": strong, "b": weak}, CLASSES, EVALUATION, 42)
    row = table.iloc[0]
    assert row["n_rows"] == 180 - 6
    assert row["kappa_diff"] > 0 and row["kappa_diff_ci_low"] > 0
    assert row["verdict"] == "fusion better" and row["p_value"] < 0.05


def test_markdown_table_has_a_row_per_combination():
    frame = pd.DataFrame({"combination": ["metadata"], "kappa_mean": [0.25]})
    lines = markdown_table(frame).splitlines()
    assert len(lines) == 3 and "| metadata" in lines[2] and "0.250" in lines[2]
