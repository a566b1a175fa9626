"""Conformal prediction sets on simulated probabilities (no workflow run)."""

import numpy as np
import pandas as pd
import pytest

from fusion_dag.conformal import (
    calibration_table,
    cross_validated_sets,
    prediction_sets,
    set_labels,
    set_quality,
)

CLASSES = ["I", "P", "R"]


def calibrated(n, concentration, seed):
    """Probabilities of a calibrated model: each visit's class drawn from its probabilities."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(concentration, size=n)
    labels = np.array([rng.choice(CLASSES, p=p) for p in probs])
    return probs, labels


def oof_table(probs, labels, folds=5, seed=0):
    """A pooled out-of-fold table of one repeat, one visit per patient."""
    table = pd.DataFrame(probs, columns=[f"prob_{c}" for c in CLASSES])
    table.insert(0, "repeat", 1)
    table.insert(1, "fold", np.random.default_rng(seed).integers(1, folds + 1, len(probs)))
    table.insert(2, "id", [f"v{i}" for i in range(len(probs))])
    table.insert(3, "group", [f"p{i}" for i in range(len(probs))])
    table.insert(4, "label", labels)
    return table


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_sets_reach_their_coverage_within_sampling_error_in_every_class(coverage):
    concentration = [1.0, 2.0, 0.6]
    probs, labels = calibrated(3000, concentration, seed=1)
    calibration = calibration_table(oof_table(probs, labels), CLASSES)
    new_probs, new_labels = calibrated(6000, concentration, seed=2)
    sets = prediction_sets(new_probs, calibration, CLASSES, coverage)
    quality = set_quality(sets, new_labels, CLASSES)
    # Sampling error of both the new visits and the calibration quantile (3 standard errors).
    spread = coverage * (1 - coverage)
    error = 3 * np.sqrt(spread * (1 / len(new_labels) + 1 / len(calibration)))
    assert abs(quality["set_coverage"] - coverage) < error
    for name in CLASSES:  # class-conditional: the rare class is covered too
        rows, cal = new_labels == name, (calibration["label"] == name).sum()
        covered = set_quality(sets[rows], new_labels[rows], CLASSES)["set_coverage"]
        assert covered > coverage - 3 * np.sqrt(spread * (1 / rows.sum() + 1 / cal))
    # A higher coverage needs larger sets.
    assert (
        set_quality(prediction_sets(new_probs, calibration, CLASSES, 0.95), new_labels, CLASSES)[
            "set_size"
        ]
        > quality["set_size"]
    )


def test_sets_are_larger_where_the_probabilities_are_flatter():
    probs, labels = calibrated(3000, [1.0, 1.0, 1.0], seed=3)
    calibration = calibration_table(oof_table(probs, labels), CLASSES)
    peaked = np.array([[0.90, 0.07, 0.03], [0.05, 0.90, 0.05]])
    flat = np.array([[0.36, 0.33, 0.31], [0.30, 0.36, 0.34]])
    sets = prediction_sets(np.vstack([peaked, flat]), calibration, CLASSES, 0.9)
    sizes = sets.sum(axis=1)
    assert sizes[2:].min() > sizes[:2].max()
    assert set_labels(sets[:2], CLASSES) == ["I", "P"]
    assert set_labels(sets[2:], CLASSES) == ["I|P|R", "I|P|R"]


def test_cross_validated_sets_calibrate_each_fold_on_the_others():
    probs, labels = calibrated(1500, [1.0, 2.0, 0.6], seed=4)
    oof = oof_table(probs, labels)
    # A second repeat of the same visits is not calibration data (each visit counts once).
    again = oof.assign(repeat=2, prob_I=1.0, prob_P=0.0, prob_R=0.0)
    calibration = calibration_table(pd.concat([oof, again]), CLASSES)
    assert len(calibration) == 1500
    result = cross_validated_sets(pd.concat([oof, again]), calibration, CLASSES, 0.9)
    assert result["visits"] == 1500
    assert abs(result["set_coverage"] - 0.9) < 3 * np.sqrt(0.09 * 2 / 1500)
    assert 1 < result["set_size"] < 3
    # Without a class in the calibration, no set can be made for it: one clear error.
    with pytest.raises(ValueError, match="no calibration visit of class R"):
        prediction_sets(probs, calibration[calibration["label"] != "R"], CLASSES, 0.9)
