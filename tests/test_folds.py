import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.folds import assign_folds
from tests.conftest import CLASSES


def samples_frame(demo_table):
    table = pd.read_csv(demo_table, dtype=str)
    return pd.DataFrame(
        {"id": table["sample_id"], "group": table["patient_id"], "label": table["label"]}
    )


def test_no_patient_spans_two_folds(demo_table):
    folds = assign_folds(samples_frame(demo_table), 3, 42, CLASSES)
    assert folds.groupby("group")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == [1, 2, 3]


def test_every_class_in_every_training_split(demo_table):
    folds = assign_folds(samples_frame(demo_table), 3, 42, CLASSES)
    for fold in (1, 2, 3):
        assert set(folds.loc[folds["fold"] != fold, "label"]) == set(CLASSES)


def test_folds_are_reproducible_and_seeded(demo_table):
    samples = samples_frame(demo_table)
    first = assign_folds(samples, 3, 42, CLASSES)
    pd.testing.assert_frame_equal(first, assign_folds(samples, 3, 42, CLASSES))
    assert not first["fold"].equals(assign_folds(samples, 3, 1, CLASSES)["fold"])


def test_fewer_groups_than_folds(demo_table):
    samples = samples_frame(demo_table)
    few = samples[samples["group"].isin(samples["group"].unique()[:2])]
    with pytest.raises(InputError, match="2 groups .* cv.folds=3"):
        assign_folds(few, 3, 42, CLASSES)


def test_class_missing_from_training_rows(demo_table):
    samples = samples_frame(demo_table)
    rare = samples[samples["label"] == "R"]["group"].iloc[0]
    samples = samples[(samples["label"] != "R") | (samples["group"] == rare)]
    samples = samples[~((samples["group"] == rare) & (samples["label"] != "R"))]
    with pytest.raises(InputError, match="class R has no training rows"):
        assign_folds(samples, 3, 42, CLASSES)
