"""The temporal split: patients ordered in time, the later ones held out, never straddling."""

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError
from fusion_dag.image import image_rows
from fusion_dag.metadata import fold_probabilities
from fusion_dag.temporal import (
    EARLIER,
    LATER,
    order_values,
    temporal_partition,
    temporal_sides,
    temporal_table,
)
from tests.conftest import CLASSES, TINY, run_snakemake, scheduled_jobs


def visits(n_patients: int = 20, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A prepared table and the table as read: 1 to 4 visits per patient, in shuffled order,
    each patient's visits on increasing dates from a start of its own."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        start = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 700)))
        for visit in range(int(rng.integers(1, 5))):
            date = start + pd.Timedelta(days=30 * visit)
            rows.append((f"p{patient}", date.strftime("%Y-%m-%d"), rng.choice(CLASSES)))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    table = pd.DataFrame(rows, columns=["patient_id", "visit_date", "label"])
    table["sample_id"] = [f"v{i}" for i in range(len(table))]
    samples = pd.DataFrame(
        {ID: table["sample_id"], GROUP: table["patient_id"], LABEL: table["label"]}
    )
    return samples, table


@pytest.mark.parametrize("test", [0.1, 0.3, 0.5])
def test_every_patient_is_on_one_side_and_the_later_side_is_the_latest_patients(test):
    samples, table = visits()
    folds, patients = temporal_partition(
        samples, table, {"column": "visit_date", "test": test}, "t.csv"
    )
    assert folds[ID].tolist() == samples[ID].tolist()
    # No patient straddles the split.
    assert (folds.groupby(GROUP)["fold"].nunique() == 1).all()
    assert set(folds["fold"]) == {LATER, EARLIER} and (folds["repeat"] == 0).all()
    # The later side is the last `test` share of patients by their first visit date.
    first = pd.to_datetime(table["visit_date"]).groupby(table["patient_id"]).min()
    later = set(folds.loc[folds["fold"] == LATER, GROUP])
    assert len(later) == int(np.ceil(test * 20))
    assert first[list(later)].min() > first.drop(list(later)).max()
    assert patients.set_index(GROUP).loc[sorted(later), "side"].eq("later").all()
    assert patients["visits"].sum() == len(samples)


def test_the_temporal_models_never_see_a_later_patients_visit():
    """The fold stages fit on the temporal partition's fold 1 held out: the forest's and an
    image branch's training rows are the earlier patients' visits, every later visit is
    scored as validation."""
    samples, table = visits(n_patients=30, seed=4)
    folds, _ = temporal_partition(samples, table, {"column": "visit_date", "test": 0.3}, "t")
    earlier = set(folds.loc[folds["fold"] == EARLIER, ID])
    later = set(folds.loc[folds["fold"] == LATER, ID])
    features = samples.assign(age=np.arange(len(samples), dtype=float))
    settings = {**TINY["metadata_model"], "n_estimators": 5}
    probs, _ = fold_probabilities(features, folds, LATER, CLASSES, settings, 0, 1)
    assert set(probs.loc[probs["split"] == "train", ID]) == earlier
    assert set(probs.loc[probs["split"] == "val", ID]) == later
    views = pd.DataFrame({ID: samples[ID].iloc[::2]})
    rows = image_rows(folds, views, LATER)
    assert set(rows.loc[rows["split"] == "train", ID]) <= earlier
    assert set(rows.loc[rows["split"] == "val", ID]) <= later


def test_patients_tied_at_the_cut_go_together():
    first = pd.Series([1, 2, 3, 3, 3, 4], index=list("abcdef"))
    sides = temporal_sides(first, 0.3)  # 2 of 6 later: the cut falls among the 3s
    assert sides[["c", "d", "e", "f"]].eq("later").all()
    assert sides[["a", "b"]].eq("earlier").all()
    with pytest.raises(InputError, match="ties at the cut"):
        temporal_sides(pd.Series([5, 5, 5], index=list("abc")), 0.3)


def test_without_a_column_the_patients_order_in_the_table_decides():
    samples, table = visits(seed=1)
    folds, patients = temporal_partition(samples, table, {"column": None, "test": 0.25}, "t")
    order = list(dict.fromkeys(samples[GROUP]))
    later = set(folds.loc[folds["fold"] == LATER, GROUP])
    assert later == set(order[-5:])


def test_a_column_that_is_no_date_or_number_names_its_rows():
    values = pd.Series(["2021-01-02", "soon", None, "2021-03-01"])
    with pytest.raises(InputError, match="'when' is neither a number nor an ISO date.*rows 2"):
        order_values(values, "when", "t.csv")
    numbers = order_values(pd.Series(["3", " 1", None]), "n", "t.csv")
    assert numbers.iloc[:2].tolist() == [3.0, 1.0] and np.isnan(numbers.iloc[2])


def test_the_temporal_table_scores_only_the_later_patients_beside_the_cv_row():
    samples, table = visits(n_patients=40, seed=2)
    folds, _ = temporal_partition(samples, table, {"column": "visit_date", "test": 0.3}, "t")
    rng = np.random.default_rng(0)
    probs = pd.DataFrame(
        rng.dirichlet([1, 1, 1], len(folds)), columns=["prob_I", "prob_P", "prob_R"]
    )
    probs.insert(0, ID, folds[ID])
    probs.insert(1, "split", np.where(folds["fold"] == LATER, "val", "train"))
    headline = pd.DataFrame(
        [
            {"combination": "metadata", "rows": "complete"}
            | {
                f"{m}_{p}": 0.3
                for m in ("kappa", "qwk", "balanced_accuracy", "auc", "brier", "ece")
                for p in ("mean", "ci_low", "ci_high")
            }
        ]
    )
    evaluation = {"bootstrap": 200, "confidence": 0.95}
    result = temporal_table({"metadata": probs}, folds, headline, CLASSES, evaluation, 0)
    row = result.iloc[0]
    later = folds[folds["fold"] == LATER]
    assert row["n_rows"] == len(later) and row["n_patients"] == later[GROUP].nunique()
    assert row["n_train_patients"] + row["n_patients"] == samples[GROUP].nunique()
    assert row["kappa_ci_low"] <= row["kappa"] <= row["kappa_ci_high"]
    assert row["cv_kappa"] == 0.3 and row["kappa_diff"] == pytest.approx(row["kappa"] - 0.3)


@pytest.mark.workflow
def test_the_temporal_target_trains_one_partition_more_and_names_the_key(tmp_path):
    result = run_snakemake(tmp_path, "-n", "temporal", config=TINY)
    assert result.returncode != 0
    assert "Invalid config key 'evaluation.temporal'" in result.stdout + result.stderr
    config = {**TINY, "evaluation": {"temporal": {"column": None, "test": 0.3}}}
    result = run_snakemake(tmp_path, "-n", "temporal", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = scheduled_jobs(result.stdout + result.stderr)
    # One partition more than the cross-validation's folds: repeat 0, fold 1.
    partitions = TINY["cv"]["folds"] + 1
    assert jobs["temporal_split"] == 1 and jobs["temporal_results"] == 1
    assert jobs["metadata"] == partitions and jobs["image"] == partitions
    assert jobs["fusion"] == 3 * partitions
    assert jobs["folds"] == 1


@pytest.mark.workflow
def test_a_temporal_column_the_table_lacks_stops_the_dry_run(tmp_path, demo_table):
    config = {**TINY, "samples": str(demo_table), "image_dir": str(demo_table.parent)}
    evaluation = {"temporal": {"column": "visit_date", "test": 0.3}}
    result = run_snakemake(tmp_path, "-n", "temporal", config={**config, "evaluation": evaluation})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Invalid config key 'evaluation.temporal.column': 'visit_date' is not a column" in output
    # A share outside (0, 1) is the schema's error.
    evaluation = {"temporal": {"column": None, "test": 1.5}}
    result = run_snakemake(tmp_path, "-n", "temporal", config={**config, "evaluation": evaluation})
    assert result.returncode != 0
    assert "evaluation.temporal.test" in result.stdout + result.stderr
