import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.folds import assign_folds, check_table_folds, check_training_classes
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
    """The last line of defence: a partition whose training rows lack a class is refused."""
    samples = samples_frame(demo_table)
    rare = samples[samples["label"] == "R"]["group"].iloc[0]
    samples = samples[(samples["label"] != "R") | (samples["group"] == rare)]
    samples = samples[~((samples["group"] == rare) & (samples["label"] != "R"))]
    folds = samples.assign(fold=samples["group"].eq(rare).map({True: 1, False: 2}))
    with pytest.raises(InputError, match="fold 1: class R has no training rows"):
        check_training_classes(folds, CLASSES)


def r_patients_only(samples, count):
    """``samples`` with the R visits of ``count`` patients only."""
    keep = samples[samples["label"] == "R"]["group"].unique()[:count]
    return samples[(samples["label"] != "R") | samples["group"].isin(keep)]


def test_more_folds_than_patients_of_the_rarest_class_are_refused(demo_table):
    samples = r_patients_only(samples_frame(demo_table), 2)
    with pytest.raises(
        InputError,
        match=r"'cv.folds': 3 folds need at least 3 patients of every class, and class R has "
        r"2 in the samples table; .*lower cv.folds to 2",
    ):
        assign_folds(samples, 3, 42, CLASSES)
    assert set(assign_folds(samples, 2, 42, CLASSES)["fold"]) == {1, 2}


def test_the_start_up_check_reads_the_users_table(demo_table, tmp_path):
    table = pd.read_csv(demo_table, dtype=str)
    keep = table[table["label"] == "R"]["patient_id"].unique()[:2]
    table = table[(table["label"] != "R") | table["patient_id"].isin(keep)]
    table["label"] = table["label"].str.lower()
    table.to_csv(tmp_path / "rare.csv", index=False)
    columns = {"id": "sample_id", "group": "patient_id", "label": "label"}
    with pytest.raises(InputError, match=r"class R has 2 in samples table .*rare.csv"):
        check_table_folds(tmp_path / "rare.csv", columns, CLASSES, 3, [])
    check_table_folds(tmp_path / "rare.csv", columns, CLASSES, 2, [])
    # A table that cannot be read is left to the prepare job, which names its problem.
    check_table_folds(tmp_path / "absent.csv", columns, CLASSES, 3, [])
    check_table_folds(tmp_path / "rare.csv", {**columns, "label": "grade"}, CLASSES, 3, [])
