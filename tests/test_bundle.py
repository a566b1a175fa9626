"""The model spec, bundle choices and prediction arithmetic, without a workflow run."""

import logging

import numpy as np
import pandas as pd
import pytest

from fusion_dag.bundle import BundleError, choose_combination, load_bundle, model_spec
from fusion_dag.report import external_metrics
from fusion_dag.weights import fuse_rows

CLASSES = ["I", "P", "R"]
SAMPLES = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d"],
        "group": ["p1", "p1", "p2", "p3"],
        "label": ["I", "P", "R", "P"],
        "age": [60.0, 70.0, np.nan, 55.0],
        "sex": ["M", "F", "F", None],
    }
)
COMBINATIONS = {
    "metadata": ["metadata"],
    "metadata+thermal_map+depth_map": ["metadata", "thermal_map", "depth_map"],
}
SETTINGS = {
    "column": "thermal",
    "size": 24,
    "channels": 3,
    "value_range": None,
    "backbone": "small_cnn",
    "augmentation": None,
    "mixed_precision": False,
}


def spec(weights=None):
    modalities = {"thermal_map": SETTINGS, "depth_map": {**SETTINGS, "column": "depth"}}
    columns = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}
    fusion = {"metadata_weight": 0.7, "weights": weights}
    return model_spec(SAMPLES, columns, CLASSES, modalities, COMBINATIONS, fusion)


def test_spec_records_feature_order_and_types_and_the_largest_combination():
    recorded = spec()
    assert recorded["features"] == [
        {"name": "age", "type": "numeric"},
        {"name": "sex", "type": "text"},
    ]
    assert recorded["default_combination"] == "metadata+thermal_map+depth_map"
    assert choose_combination(recorded, "metadata") == ["metadata"]
    with pytest.raises(BundleError, match=r"'metadata\+thermal_map' is not in the bundle"):
        choose_combination(recorded, "metadata+thermal_map")


def probs(ids, rows):
    table = pd.DataFrame({"id": ids})
    table[[f"prob_{c}" for c in CLASSES]] = np.array(rows, dtype=float)
    return table


def test_rows_missing_an_image_are_fused_from_the_members_they_have():
    members = ["metadata", "thermal_map", "depth_map"]
    member_probs = {
        "metadata": probs(["a", "b", "c", "d"], [[1, 0, 0]] * 4),
        "thermal_map": probs(["a", "b", "c"], [[0, 1, 0]] * 3),
        "depth_map": probs(["a", "c"], [[0, 0, 1]] * 2),
    }
    weights = {"metadata": 0.5, "thermal_map": 0.3, "depth_map": 0.2}
    for fusion, expected_b in [
        ({"metadata_weight": 0.7, "weights": None}, [0.7, 0.3, 0.0]),
        ({"metadata_weight": 0.7, "weights": weights}, [0.625, 0.375, 0.0]),
    ]:
        table = fuse_rows(SAMPLES, member_probs, members, {**spec(), "fusion": fusion})
        assert table["members_used"].tolist() == [
            "metadata+thermal_map+depth_map",
            "metadata+thermal_map",
            "metadata+thermal_map+depth_map",
            "metadata",
        ]
        fused = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
        assert np.allclose(fused[1], expected_b)
        assert np.allclose(fused[3], [1, 0, 0])
        assert np.allclose(fused.sum(axis=1), 1.0)
    assert table["predicted"].tolist()[3] == "I"


def test_a_row_without_any_member_is_kept_unscored(caplog):
    member_probs = {"thermal_map": probs(["a"], [[0.2, 0.5, 0.3]])}
    with caplog.at_level(logging.WARNING):
        table = fuse_rows(SAMPLES, member_probs, ["thermal_map"], spec())
    assert len(table) == 4
    assert table["members_used"].tolist() == ["thermal_map", "", "", ""]
    assert table["prob_I"].isna().tolist() == [False, True, True, True]
    assert "3 rows have none of the members thermal_map" in caplog.text
    metrics = external_metrics(
        table, ["thermal_map"], CLASSES, {"bootstrap": 100, "confidence": 0.9}, 0
    )
    assert metrics.loc[0, "n_rows"] == 1 and metrics.loc[0, "n_unscored"] == 3


def test_a_final_branch_predicting_one_class_everywhere_is_collapsed():
    from fusion_dag.bundle import BundleError, check_collapsed, collapsed_branches

    learned = probs(["a", "b", "c"], [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    stuck = probs(["a", "b", "c"], [[0.3, 0.6, 0.1]] * 3)
    # A validation row of another class does not count: only training rows are the branch's fit.
    stuck_with_val = pd.concat([stuck, probs(["d"], [[0.9, 0.1, 0.0]])], ignore_index=True)
    for table in (learned, stuck, stuck_with_val):
        table["split"] = "train"
    stuck_with_val.loc[3, "split"] = "val"
    branches = {"thermal_map": learned, "wound_photo": stuck, "depth_map": stuck_with_val}
    collapsed = collapsed_branches(branches, CLASSES)
    assert collapsed == {"wound_photo": "P", "depth_map": "P"}
    with pytest.raises(BundleError, match="raise modalities.wound_photo.patience"):
        check_collapsed(collapsed, allow=False)
    check_collapsed(collapsed, allow=True)
    check_collapsed({}, allow=False)


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)


def test_a_forest_file_that_would_run_code_is_refused(tmp_path):
    """A skops file naming a callable (here os.system) is refused, not executed."""
    import os

    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    from fusion_dag.metadata import load_pipeline

    skops.io.dump(FunctionTransformer(func=os.system), tmp_path / "model.skops")
    with pytest.raises(Exception, match="[Uu]ntrusted"):
        load_pipeline(tmp_path / "model.skops")


def test_training_patients_are_salted_hashes_and_mark_the_visits_seen(tmp_path):
    from fusion_dag.artifacts import write_json
    from fusion_dag.bundle import PATIENTS, seen_in_training, training_patients

    record = training_patients(pd.Series(["p1", "p1", "p2"]))
    again = training_patients(pd.Series(["p1", "p2"]))
    text = str(record)
    assert len(record["patients"]) == 2 and "p1" not in text and "p2" not in text
    # A salt of its own per bundle: the same patients give unrelated digests.
    assert record["salt"] != again["salt"] and not set(record["patients"]) & set(again["patients"])
    assert (
        training_patients(["p1"], salt="s")["patients"]
        == training_patients(["p1"], "s")["patients"]
    )
    write_json(record, tmp_path / PATIENTS)
    groups = pd.Series(["p2", "p9", "p1", "p9"])
    seen = seen_in_training(tmp_path, {"files": {PATIENTS: "x"}}, groups)
    assert seen.tolist() == [True, False, True, False]
    # A bundle that records none: unknown, not "unseen".
    assert seen_in_training(tmp_path, {"files": {}}, groups).isna().all()


def seen_predictions(seen):
    """Six labelled visits of three patients, scored by metadata, ``seen`` per patient."""
    table = pd.DataFrame(
        {
            "id": list("abcdef"),
            "group": ["p1", "p1", "p2", "p2", "p3", "p3"],
            "label": ["I", "P", "R", "P", "I", "R"],
        }
    )
    table["seen_in_training"] = table["group"].map(seen).astype("boolean")
    table["members_used"] = "metadata"
    table[[f"prob_{c}" for c in CLASSES]] = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]] * 3
    return table


def test_metrics_leave_out_the_bundles_training_patients_and_say_so():
    from fusion_dag.predict import prediction_summary

    evaluation = {"bootstrap": 50, "confidence": 0.9}
    partly = seen_predictions({"p1": True, "p2": False, "p3": False})
    metrics = external_metrics(partly, ["metadata"], CLASSES, evaluation, 0)
    assert metrics.loc[0, "n_rows"] == 4 and metrics.loc[0, "n_groups"] == 2
    assert metrics.loc[0, "n_seen"] == 2
    summary = prediction_summary(partly, metrics, ["metadata"], "bundle")
    assert "WARNING: 2 rows of 1 patients were in the bundle's training" in summary
    assert "labelled rows of patients the bundle never saw" in summary and "kappa" in summary
    # Every patient trained the bundle: no metric, and the summary says why.
    every = seen_predictions({"p1": True, "p2": True, "p3": True})
    metrics = external_metrics(every, ["metadata"], CLASSES, evaluation, 0)
    assert metrics.empty
    summary = prediction_summary(every, metrics, ["metadata"], "bundle")
    assert "No metrics: every labelled visit's patient trained the bundle" in summary
    assert "kappa" not in summary and "no labels" not in summary


def test_the_bundle_stores_calibration_scores_and_predict_makes_sets_from_them(tmp_path):
    """Out-of-fold probabilities calibrate a combination's sets at bundle time (scores and
    labels only, no id or group); predict reads them back and marks each visit's set."""
    from fusion_dag.bundle import calibration_records, load_calibration, write_bundle
    from fusion_dag.predict import with_prediction_sets

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 2.0, 0.6], size=600)
    labels = [rng.choice(CLASSES, p=p) for p in probs]
    oof = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES]).assign(
        repeat=1, fold=np.arange(600) % 3 + 1, id=range(600), group=range(600), label=labels
    )
    records = calibration_records({"metadata": oof}, CLASSES, 0.9)
    scores, summary = records["metadata"]
    assert list(scores.columns) == ["label", "score"] and summary["calibration_visits"] == 600
    assert 0.85 < summary["cross_validated"]["set_coverage"] < 0.95
    manifest = write_bundle(tmp_path / "bundle", spec(), None, {}, {}, {}, calibration=records)
    assert "calibration/metadata.tsv" in manifest["files"]
    calibration = load_calibration(tmp_path / "bundle", manifest, "metadata")
    with pytest.raises(BundleError, match="'predict.coverage': bundle .* no calibration for x"):
        load_calibration(tmp_path / "bundle", manifest, "x")
    table = seen_predictions({"p1": False, "p2": False, "p3": False})
    table.loc[5, [f"prob_{c}" for c in CLASSES]] = np.nan
    table.insert(table.columns.get_loc("members_used") + 1, "predicted", "I")
    with_sets = with_prediction_sets(table, calibration, CLASSES, 0.9)
    assert with_sets["prediction_set"].iloc[5] == "" and with_sets["prediction_set"].iloc[0]
    metrics = external_metrics(
        with_sets, ["metadata"], CLASSES, {"bootstrap": 20, "confidence": 0.9}, 0
    )
    sets = with_sets["prediction_set"].iloc[:5].str.split("|")
    assert metrics.loc[0, "set_size"] == pytest.approx(sets.map(len).mean())
    covered = [label in s for label, s in zip(table["label"].iloc[:5], sets, strict=True)]
    assert metrics.loc[0, "set_coverage"] == pytest.approx(np.mean(covered))
