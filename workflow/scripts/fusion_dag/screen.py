"""Label screening (``label_screen: {method: confident_learning}``): per outer fold, the
training visits whose given label the forest's inner out-of-fold probabilities make implausible
leave that fold's training (metadata and image stages); validation visits are never screened
and are scored as usual.

Why confident learning (Northcutt et al. 2021, cleanlab's ``find_label_issues``): it estimates,
from out-of-sample probabilities, how often each given class is really another (the confident
joint, with per-class thresholds: the mean probability of a class among the visits labelled
with it), and flags as many visits as that estimate says are wrong, those least likely under
their given label. No cut-off is tuned, so nothing is chosen on validation visits, unlike the
original study's "polishing" (counts of validation misclassifications, per-class cut-offs
tuned by Bayesian search, then a second cross-validation on the visits left).

Why the forest's probabilities: they are out of sample for every training visit (the inner
patient-grouped folds, :func:`~fusion_dag.metadata.inner_probabilities`, with the seed the
metadata stage uses, so they are the ``train`` rows of its ``probs.tsv``), and every visit has
metadata, where only some have images. A fold's screen reads its training rows only.
"""

import logging

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices
from fusion_dag.folds import split_rows
from fusion_dag.metadata import inner_probabilities

log = logging.getLogger(__name__)

METHOD = "confident_learning"


def training_rows(samples: pd.DataFrame, folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The samples of the fold's training visits, in samples order."""
    fold_of = samples[[ID]].merge(folds[[ID, "fold"]], on=ID, how="left", validate="one_to_one")
    return samples[(split_rows(fold_of, fold) == "train").to_numpy()].reset_index(drop=True)


def label_issues(rows: pd.DataFrame, y: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The ``rows`` whose given label (class indices ``y``) their out-of-sample ``probs`` make
    implausible, by confident learning (cleanlab's ``find_label_issues``, as many as its
    confident joint estimates, least plausible first): ``id``, ``group``, ``label``,
    ``prob_label`` (the probability of the given label). One call for the nested screen and
    the protocol's leaky one, which differ only in which probabilities they read."""
    from cleanlab.filter import find_label_issues

    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    screened = rows.loc[rows.index[issues], [ID, GROUP, LABEL]].reset_index(drop=True)
    screened["prob_label"] = probs[issues, y[issues]]
    return screened


def screen_fold(
    samples: pd.DataFrame,
    folds: pd.DataFrame,
    fold: int,
    classes: list,
    settings: dict,
    seed: int,
    n_jobs: int,
) -> pd.DataFrame:
    """The fold's screened training visits: ``id``, ``group``, ``label`` and ``prob_label`` (the
    inner out-of-fold probability of the given label), least plausible first.

    ``settings`` is ``metadata_model``; ``seed`` the repeat's (as the metadata stage's).
    """
    train = training_rows(samples, folds, fold)
    y = label_indices(train[LABEL], classes)
    screened = label_issues(train, y, inner_probabilities(train, y, settings, seed, n_jobs))
    counts = screened[LABEL].value_counts()
    log.info(
        "Fold %d: %d of %d training visits screened (%s); validation visits are never screened",
        fold,
        len(screened),
        len(train),
        ", ".join(f"{c} {int(counts.get(c, 0))}" for c in classes),
    )
    return screened
