import collections

import numpy as np
import pytest
import skops.io
from sklearn.metrics import cohen_kappa_score

from fusion_dag.folds import assign_folds
from fusion_dag.metadata import feature_frame, fold_probabilities, load_pipeline, save_pipeline
from fusion_dag.prepare import prepare_inputs
from tests.conftest import CLASSES, COLUMNS

SETTINGS = {"n_estimators": 40, "min_samples_leaf": 2, "class_weight": "balanced", "inner_folds": 3}
PROBS = [f"prob_{c}" for c in CLASSES]


@pytest.fixture(scope="module")
def fitted(demo_table):
    samples, _ = prepare_inputs(demo_table, demo_table.parent, COLUMNS, CLASSES, {}, "error")
    folds = assign_folds(samples, 3, 42, CLASSES)
    probs, pipeline = fold_probabilities(samples, folds, 1, CLASSES, SETTINGS, 42, 1)
    return samples, folds, probs, pipeline


def test_probability_table_contract(fitted):
    samples, folds, probs, _ = fitted
    assert list(probs.columns) == ["id", "split", *PROBS]
    assert sorted(probs["id"]) == sorted(samples["id"])
    validation = set(folds.loc[folds["fold"] == 1, "id"])
    assert set(probs.loc[probs["split"] == "val", "id"]) == validation
    np.testing.assert_allclose(probs[PROBS].sum(axis=1), 1.0)


def test_training_probabilities_are_out_of_fold(fitted):
    """In-sample forest probabilities are near perfect; out-of-fold ones must not be."""
    samples, _, probs, pipeline = fitted
    train = probs[probs["split"] == "train"].merge(samples, on="id")
    truth = train["label"].map(CLASSES.index)
    in_sample = pipeline.predict_proba(feature_frame(train[samples.columns]))
    in_sample_kappa = cohen_kappa_score(truth, in_sample.argmax(axis=1))
    out_of_fold_kappa = cohen_kappa_score(truth, train[PROBS].to_numpy().argmax(axis=1))
    assert in_sample_kappa > 0.8
    assert out_of_fold_kappa < in_sample_kappa - 0.3


def test_pipeline_round_trips_through_skops(fitted, tmp_path):
    samples, _, _, pipeline = fitted
    path = tmp_path / "model.skops"
    save_pipeline(pipeline, path)
    loaded = load_pipeline(path)
    features = feature_frame(samples)
    np.testing.assert_array_equal(loaded.predict_proba(features), pipeline.predict_proba(features))
    assert not (tmp_path / "model.skops.partial").exists()


def test_loading_refuses_unlisted_types(tmp_path):
    path = tmp_path / "other.skops"
    skops.io.dump({"counts": collections.Counter(a=1)}, path)
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException):
        load_pipeline(path)


def test_same_inputs_give_identical_probabilities(fitted):
    samples, folds, probs, _ = fitted
    again, _ = fold_probabilities(samples, folds, 1, CLASSES, SETTINGS, 42, 2)
    np.testing.assert_array_equal(again[PROBS].to_numpy(), probs[PROBS].to_numpy())
