import pandas as pd
import pytest

from fusion_dag.report import headline_table, markdown_table, per_fold_table
from tests.conftest import CLASSES

HEADLINE = (
    [
        "combination",
        "n_folds",
        "kappa_mean",
        "kappa_std",
        "qwk_mean",
        "accuracy_mean",
        "macro_f1_mean",
    ]
    + [f"f1_{c}_mean" for c in CLASSES]
    + ["train_kappa_mean", "gap_mean"]
    + [f"pred_frac_{c}" for c in CLASSES]
)


def record(combination, fold, kappa, n_val, pred_frac_r):
    metrics = {"kappa": kappa, "qwk": kappa, "accuracy": 0.5, "macro_f1": 0.4}
    metrics.update({f"f1_{c}": 0.3 for c in CLASSES})
    metrics.update({"train_kappa": kappa + 0.1, "gap": 0.1, "n_val": n_val, "n_train": 10})
    metrics.update(
        {"pred_frac_I": 0.0, "pred_frac_P": 1.0 - pred_frac_r, "pred_frac_R": pred_frac_r}
    )
    return {"combination": combination, "fold": fold, **metrics}


def test_headline_aggregates_folds_in_the_requested_order():
    records = [record("metadata", 2, 0.3, 30, 0.0), record("metadata", 1, 0.1, 10, 1.0)]
    records.append(record("thermal_map", 1, 0.2, 10, 0.0))
    per_fold = per_fold_table(records)
    assert per_fold["fold"].tolist() == [1, 2, 1]
    headline = headline_table(per_fold, ["thermal_map", "metadata"], CLASSES)
    assert list(headline.columns) == HEADLINE
    assert headline["combination"].tolist() == ["thermal_map", "metadata"]
    row = headline.set_index("combination").loc["metadata"]
    assert row["kappa_mean"] == pytest.approx(0.2)
    assert row["kappa_std"] == pytest.approx(pd.Series([0.1, 0.3]).std())
    assert row["pred_frac_R"] == pytest.approx(10 / 40)
    assert row["n_folds"] == 2


def test_markdown_table_has_a_row_per_combination():
    headline = headline_table(
        per_fold_table([record("metadata", 1, 0.25, 10, 0.1)]), ["metadata"], CLASSES
    )
    lines = markdown_table(headline).splitlines()
    assert len(lines) == 3 and "| metadata" in lines[2] and "0.250" in lines[2]
