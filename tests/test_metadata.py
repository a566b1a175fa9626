import collections

import numpy as np
import pytest
import skops.io
from sklearn.metrics import cohen_kappa_score
from sklearn.pipeline import Pipeline

from fusion_dag.demo import MODALITY_FOLDERS
from fusion_dag.folds import assign_folds
from fusion_dag.metadata import (
    feature_frame,
    fit_probabilities,
    fold_probabilities,
    load_pipeline,
    save_pipeline,
)
from fusion_dag.prepare import prepare_inputs
from tests.conftest import CLASSES, COLUMNS

SETTINGS = {"n_estimators": 40, "min_samples_leaf": 2, "class_weight": "balanced", "inner_folds": 3}
PROBS = [f"prob_{c}" for c in CLASSES]
IMAGES = list(MODALITY_FOLDERS)  # the demo's image path columns: never features


@pytest.fixture(scope="module")
def fitted(demo_table):
    samples, _, _ = prepare_inputs(
        demo_table, COLUMNS, CLASSES, {}, "error", ignored_columns=IMAGES
    )
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


def test_fit_probabilities_are_the_training_rows_in_sample(fitted):
    samples, _, probs, pipeline = fitted
    fit = fit_probabilities(pipeline, samples, probs, CLASSES)
    train = probs[probs["split"] == "train"]
    assert fit["id"].tolist() == train["id"].tolist() and set(fit["split"]) == {"train"}
    merged = train.merge(fit, on=["id", "split"], suffixes=("_oof", "_fit"))
    assert (merged["prob_I_oof"] != merged["prob_I_fit"]).mean() > 0.9


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


@pytest.fixture(scope="module")
def forest_fits(demo_table):
    """The rows every Pipeline.fit saw, for each outer fold: [(fold, ids), ...] in call order."""
    samples, _, _ = prepare_inputs(demo_table, COLUMNS, CLASSES, {}, "error")
    folds = assign_folds(samples, 3, 42, CLASSES)
    calls = []
    original = Pipeline.fit

    def spy(self, X, y=None, **params):
        calls.append((current_fold, samples.loc[X.index, "id"].tolist()))
        return original(self, X, y, **params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pipeline, "fit", spy)
        for current_fold in (1, 2, 3):
            fold_probabilities(samples, folds, current_fold, CLASSES, SETTINGS, 42, 1)
    return samples, folds, calls


def test_no_outer_validation_row_reaches_a_forest_fit(forest_fits):
    _, folds, calls = forest_fits
    # Per fold: one fit per inner fold (out-of-fold training probabilities) and the final fit.
    assert [fold for fold, _ in calls] == [
        f for f in (1, 2, 3) for _ in range(SETTINGS["inner_folds"] + 1)
    ]
    for fold, ids in calls:
        validation = set(folds.loc[folds["fold"] == fold, "id"])
        assert ids and not validation & set(ids), f"fold {fold}: validation rows in a fit"


def test_inner_out_of_fold_splits_are_grouped_by_patient_in_every_fold(forest_fits):
    samples, folds, calls = forest_fits
    group_of = samples.set_index("id")["group"]
    for fold in (1, 2, 3):
        training = set(folds.loc[folds["fold"] != fold, "id"])
        inner_fits = [set(ids) for f, ids in calls if f == fold][:-1]
        for fitted in inner_fits:
            held_out = training - fitted
            assert held_out, f"fold {fold}: an inner split held nothing out"
            shared = set(group_of[list(held_out)]) & set(group_of[list(fitted)])
            assert not shared, f"fold {fold}: patients {sorted(shared)[:3]} on both inner sides"
