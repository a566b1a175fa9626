"""Conformal prediction sets: each visit's set of classes that holds its true class with a
chosen probability (``predict.coverage``), calibrated on the run's out-of-fold probabilities.

Why sets: the fused probabilities of a visit can sit between two classes (I and P at 0.45 and
0.42); ``predicted`` still names one. A set ``I|P`` says the model cannot tell them apart, and
its coverage is a guarantee, not a hope: split-conformal prediction gives sets that contain the
true class in at least ``coverage`` of new visits exchangeable with the calibration visits,
whatever the model.

Choices, and why:

* Calibration visits: the combination's pooled out-of-fold probabilities of the first repeat
  (``results/fusion/{combination}/oof.tsv``): every labelled visit once, each scored by models
  that never saw its patient (folds are patient-grouped), as a new patient is by the bundle. The
  other repeats score the same visits again; pooled, they would count each visit several
  times and overstate the calibration's size in the finite-sample quantile.
* Score: ``1 - p(class)`` (the hinge, or LAC, score), the score with the smallest sets on
  average for a given coverage. APS (adding the probabilities of the classes ranked above)
  adapts the set size better to hard visits but gives larger sets on average; with three
  classes the hinge sets already grow where the probabilities are flatter (tested).
* Class-conditional (Mondrian by the true class): each class's threshold comes from the
  calibration visits of that class, so the coverage holds for every class, the rare R (about
  11 %) included; one marginal threshold would over-cover P and under-cover R.
* Non-smoothed p-values: deterministic sets, coverage at least the target (conservative by at
  most one calibration visit per class).

The implementation is crepes' ``ConformalClassifier`` (maintained, scikit-learn-free, works on
precomputed scores: no estimator to wrap, unlike MAPIE's, whose classifiers need a fitted
estimator; both install with our pins).
"""

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, LABEL, prob_columns

SEPARATOR = "|"
METHOD = "split conformal, hinge score 1 - p(class), class-conditional (crepes)"


def scores(probs: np.ndarray) -> np.ndarray:
    """Each visit's nonconformity score for every class: ``1 - p(class)``."""
    from crepes.extras import hinge

    return hinge(np.asarray(probs, dtype=float))


def class_index(labels, classes: list) -> np.ndarray:
    """Each label's position in ``classes``."""
    return pd.Series(labels).map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=int)


def calibration_table(oof: pd.DataFrame, classes: list) -> pd.DataFrame:
    """The calibration visits of a combination's pooled out-of-fold table: the first repeat's
    labelled visits, with ``group``, ``fold``, ``label`` and ``score`` (of the true class).

    The groups are kept here for the cross-validated coverage (:func:`cross_validated_sets`);
    the bundle stores only ``label`` and ``score``.
    """
    first = oof[(oof["repeat"] == oof["repeat"].min()) & oof[LABEL].notna()]
    first = first.dropna(subset=prob_columns(classes))
    truth = class_index(first[LABEL], classes)
    all_scores = scores(first[prob_columns(classes)].to_numpy())
    return pd.DataFrame(
        {
            GROUP: first[GROUP].to_numpy(),
            "fold": first["fold"].to_numpy(),
            LABEL: first[LABEL].to_numpy(),
            "score": all_scores[np.arange(len(first)), truth],
        }
    )


def prediction_sets(
    probs: np.ndarray, calibration: pd.DataFrame, classes: list, coverage: float
) -> np.ndarray:
    """A boolean (visits x classes) matrix: class ``c`` is in a visit's set when its score is
    not above the ``coverage`` quantile of class ``c``'s calibration scores (a p-value of at
    least ``1 - coverage``, crepes' class-conditional conformal classifier)."""
    from crepes import ConformalClassifier

    missing = sorted(set(classes) - set(calibration[LABEL]))
    if missing:
        raise ValueError(f"no calibration visit of class {', '.join(missing)}")
    classifier = ConformalClassifier().fit(
        calibration["score"].to_numpy(dtype=float), bins=calibration[LABEL].to_numpy()
    )
    alphas = scores(probs)
    p_values = np.column_stack(
        [
            classifier.predict_p(alphas, np.full(len(alphas), name), smoothing=False)[:, index]
            for index, name in enumerate(classes)
        ]
    )
    return p_values >= 1 - coverage


def set_labels(sets: np.ndarray, classes: list) -> list:
    """Each visit's set as text, classes in order: ``I|P`` (empty: no class reached it)."""
    return [SEPARATOR.join(np.asarray(classes)[row]) for row in sets.astype(bool)]


def set_quality(sets: np.ndarray, labels, classes: list) -> dict:
    """``set_coverage`` (share of visits whose set holds their class) and ``set_size`` (mean
    number of classes in a set) of labelled visits."""
    truth = class_index(labels, classes)
    covered = sets[np.arange(len(truth)), truth]
    return {"set_coverage": float(covered.mean()), "set_size": float(sets.sum(axis=1).mean())}


def cross_validated_sets(
    oof: pd.DataFrame, calibration: pd.DataFrame, classes: list, coverage: float
) -> dict:
    """Empirical coverage and mean set size in cross-validation: each fold's visits get sets
    calibrated on the other folds' visits only (folds are patient-grouped, so no patient
    calibrates its own sets); pooled over the folds of the first repeat."""
    first = oof[(oof["repeat"] == oof["repeat"].min()) & oof[LABEL].notna()]
    first = first.dropna(subset=prob_columns(classes)).reset_index(drop=True)
    sets = np.zeros((len(first), len(classes)), dtype=bool)
    for fold in sorted(first["fold"].unique()):
        held = (first["fold"] == fold).to_numpy()
        others = calibration[calibration["fold"] != fold]
        sets[held] = prediction_sets(
            first.loc[held, prob_columns(classes)].to_numpy(), others, classes, coverage
        )
    return {"coverage": coverage, "visits": len(first), **set_quality(sets, first[LABEL], classes)}
