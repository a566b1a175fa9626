"""Metrics of predictions: one fold's, and a pooled out-of-fold table's for any row weights.

Unweighted Cohen's kappa on validation rows is the primary metric (as in the original study);
quadratic weighted kappa credits near misses on the ordinal scale I < P < R. Train kappa and
the train-minus-validation gap are reported because overfitting, not raw accuracy, is what
broke the naive fusion; the gap measures it only where train kappa is in-sample (an image
branch's own training visits), since the forest's training rows are scored out-of-fold. How
sure a run can be of these numbers (bootstrap, corrected t-test, Holm) is
:mod:`fusion_dag.inference`'s: this module only says what a model scored on which rows.
"""

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices, prob_columns


def predicted_index(probs: pd.DataFrame, classes: list) -> np.ndarray:
    """Index of the most probable class per row (ties go to the earlier class)."""
    return probs[prob_columns(classes)].to_numpy().argmax(axis=1)


def predicted_shares(predicted: np.ndarray, classes: list) -> dict:
    """``pred_frac_{class}``: the share of rows predicted as each class (a branch that predicts
    one class everywhere shows as a share of 1)."""
    shares = np.bincount(predicted, minlength=len(classes)) / max(len(predicted), 1)
    return {f"pred_frac_{c}": float(s) for c, s in zip(classes, shares, strict=True)}


def kappa(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Unweighted Cohen's kappa over the full label set."""
    return float(cohen_kappa_score(truth, predicted, labels=list(range(n_classes))))


def fold_metrics(probs: pd.DataFrame, labels: pd.DataFrame, classes: list) -> dict:
    """Validation metrics, train kappa, gap and predicted class shares for one fold.

    ``probs`` is a probability table (``id``, ``split``, ``prob_{class}``); ``labels`` maps
    ``id`` to ``label``.
    """
    table = probs.merge(labels[[ID, LABEL]], on=ID, validate="one_to_one")
    truth = label_indices(table[LABEL], classes)
    predicted = predicted_index(table, classes)
    val = table["split"].eq("val").to_numpy()
    train = ~val
    n = len(classes)
    all_labels = list(range(n))
    per_class_f1 = f1_score(
        truth[val], predicted[val], labels=all_labels, average=None, zero_division=0
    )
    macro_f1 = f1_score(
        truth[val], predicted[val], labels=all_labels, average="macro", zero_division=0
    )
    metrics = {
        "n_train": int(train.sum()),
        "n_val": int(val.sum()),
        "kappa": kappa(truth[val], predicted[val], n),
        "qwk": float(
            cohen_kappa_score(truth[val], predicted[val], labels=all_labels, weights="quadratic")
        ),
        "accuracy": float(accuracy_score(truth[val], predicted[val])),
        "macro_f1": float(macro_f1),
    }
    metrics.update({f"f1_{c}": float(f) for c, f in zip(classes, per_class_f1, strict=True)})
    metrics["train_kappa"] = kappa(truth[train], predicted[train], n)
    metrics["gap"] = metrics["train_kappa"] - metrics["kappa"]
    metrics.update(predicted_shares(predicted[val], classes))
    return metrics


def fit_kappa(fit_probs: pd.DataFrame, labels: pd.DataFrame, classes: list) -> float:
    """Kappa of in-sample probabilities on the training rows they were fit on (memorisation).

    Not a measure of quality: a forest scores near 1 here by construction. It is reported next
    to ``train_kappa`` so the difference between the two is visible.
    """
    table = fit_probs[fit_probs["split"] == "train"].merge(
        labels[[ID, LABEL]], on=ID, validate="one_to_one"
    )
    truth = label_indices(table[LABEL], classes)
    return kappa(truth, predicted_index(table, classes), len(classes))


def aligned_validation(metadata_probs: pd.DataFrame, image_probs: pd.DataFrame, labels, classes):
    """Validation rows present in both branches: (truth, metadata and image probabilities)."""
    columns = prob_columns(classes)
    validation = metadata_probs[metadata_probs["split"] == "val"]
    table = validation.merge(image_probs, on=[ID, "split"], suffixes=("_metadata", "_image"))
    table = table.merge(labels[[ID, LABEL]], on=ID, validate="one_to_one")
    truth = label_indices(table[LABEL], classes)
    return (
        truth,
        table[[f"{c}_metadata" for c in columns]].to_numpy(),
        table[[f"{c}_image" for c in columns]].to_numpy(),
    )


def weight_sweep(metadata_probs, image_probs, labels, classes, step: float = 0.05) -> pd.DataFrame:
    """Validation kappa of ``w * metadata + (1 - w) * image`` for w from 0 to 1.

    Computed from cached probabilities with no retraining, so a user can see where the
    configured weight sits on the curve. Reading the best weight off this curve and using it
    would be a training decision made on the validation fold: it is a diagnostic only.
    """
    truth, metadata, image = aligned_validation(metadata_probs, image_probs, labels, classes)
    weights = np.round(np.arange(0.0, 1.0 + step / 2, step), 10)
    kappas = [
        kappa(truth, (w * metadata + (1 - w) * image).argmax(axis=1), len(classes)) for w in weights
    ]
    return pd.DataFrame({"metadata_weight": weights, "kappa": kappas})


def branch_agreement(metadata_probs, image_probs, labels, classes) -> dict:
    """How the two branches' errors relate on validation rows.

    Fusion can only help where one branch is right when the other is wrong. ``both_wrong``
    against ``both_wrong_if_independent`` (the product of the two error rates) shows whether
    errors coincide more than chance; ``prediction_kappa`` is Cohen's kappa between the two
    branches' predicted classes.
    """
    truth, metadata, image = aligned_validation(metadata_probs, image_probs, labels, classes)
    metadata_wrong = metadata.argmax(axis=1) != truth
    image_wrong = image.argmax(axis=1) != truth
    return {
        "n_val": int(truth.size),
        "metadata_error": float(metadata_wrong.mean()),
        "image_error": float(image_wrong.mean()),
        "both_wrong": float((metadata_wrong & image_wrong).mean()),
        "both_wrong_if_independent": float(metadata_wrong.mean() * image_wrong.mean()),
        "prediction_kappa": kappa(metadata.argmax(axis=1), image.argmax(axis=1), len(classes)),
    }


# --- Pooled out-of-fold metrics for any row weights ----------------------------------------
#
# Every metric below is computed from row weights, so one code path gives the point estimate
# (all weights 1) and each patient-bootstrap resample of fusion_dag.inference (weights = how
# often the row's patient was drawn). Confusion-matrix metrics are the formulas of
# scikit-learn's cohen_kappa_score, balanced_accuracy_score, f1_score and recall_score with
# sample_weight (tests/test_evaluate.py checks they agree), evaluated for all resamples at once
# as one matrix product instead of 2,000 calls per metric.

CALIBRATION_BINS = 10
PROBABILITY_FLOOR = 1e-15


def oof_table(fold_probs: list, folds: pd.DataFrame, classes: list) -> pd.DataFrame:
    """Pooled out-of-fold predictions: each row's validation probabilities from the fold that
    held it out, per repeat. ``fold_probs`` holds ``(repeat, fold, probability table)``."""
    columns = prob_columns(classes)
    parts = []
    for repeat, fold, probs in fold_probs:
        validation = probs.loc[probs["split"] == "val", [ID, *columns]]
        parts.append(validation.assign(repeat=repeat, fold=fold))
    pooled = pd.concat(parts, ignore_index=True).merge(
        folds[[ID, GROUP, LABEL, "repeat", "fold"]], on=[ID, "repeat", "fold"], validate="1:1"
    )
    return pooled[["repeat", "fold", ID, GROUP, LABEL, *columns]]


def weighted_metrics(weights: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> dict:
    """Metrics for each row of ``weights`` (resamples x rows): name -> array (resamples,).

    ``truth`` are class indices and ``probs`` the predicted probabilities of the same rows.
    """
    n_classes = probs.shape[1]
    predicted = probs.argmax(axis=1)
    cells = np.zeros((len(truth), n_classes * n_classes))
    cells[np.arange(len(truth)), truth * n_classes + predicted] = 1.0
    confusion = (weights @ cells).reshape(-1, n_classes, n_classes)
    total = confusion.sum(axis=(1, 2))
    actual, chosen = confusion.sum(axis=2), confusion.sum(axis=1)
    expected = actual[:, :, None] * chosen[:, None, :] / total[:, None, None]
    index = np.arange(n_classes)
    distance = {
        "kappa": (index[:, None] != index[None, :]).astype(float),
        "qwk": (index[:, None] - index[None, :]) ** 2.0,
    }
    metrics = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, cost in distance.items():
            metrics[name] = 1.0 - (confusion * cost).sum(axis=(1, 2)) / (expected * cost).sum(
                axis=(1, 2)
            )
        hits = np.diagonal(confusion, axis1=1, axis2=2)
        recall = np.where(actual > 0, hits / actual, np.nan)
        metrics["balanced_accuracy"] = np.nanmean(recall, axis=1)
        f1_denominator = actual + chosen
        f1 = np.where(f1_denominator > 0, 2.0 * hits / f1_denominator, 0.0)
        metrics["macro_f1"] = f1.mean(axis=1)
        metrics["accuracy"] = hits.sum(axis=1) / total
        for k in range(n_classes):
            metrics[f"recall_{k}"] = np.nan_to_num(recall[:, k])
            metrics[f"f1_{k}"] = f1[:, k]
    onehot = np.eye(n_classes)[truth]
    clipped = np.clip(probs, PROBABILITY_FLOOR, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    metrics["brier"] = weights @ ((probs - onehot) ** 2).sum(axis=1) / total
    metrics["log_loss"] = weights @ -np.log(clipped[np.arange(len(truth)), truth]) / total
    metrics["ece"] = calibration_error(weights, truth, probs)
    metrics["auc"] = one_vs_rest_auc(weights, truth, probs)
    return metrics


def one_vs_rest_auc(weights: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC AUC for each row of ``weights``: scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro", sample_weight=...)``.

    A class's AUC is the weighted share of (positive, negative) pairs the positive's
    probability ranks higher, ties counted one half (the Mann-Whitney statistic). Sorting once
    and taking cumulative negative weight gives every resample at once; a resample that lacks
    a class's positives or negatives has no AUC (NaN).
    """
    aucs = []
    for k in range(probs.shape[1]):
        order = np.argsort(probs[:, k], kind="stable")
        score = probs[order, k]
        positive = truth[order] == k
        w = weights[:, order]
        negatives = np.hstack([np.zeros((len(w), 1)), np.cumsum(w * ~positive, axis=1)])
        below = negatives[:, np.searchsorted(score, score, side="left")]
        tied = negatives[:, np.searchsorted(score, score, side="right")] - below
        pairs = (w * positive * (below + 0.5 * tied)).sum(axis=1)
        n_positive, n_negative = (w * positive).sum(axis=1), (w * ~positive).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append(
                np.where(n_positive * n_negative > 0, pairs / (n_positive * n_negative), np.nan)
            )
    return np.mean(aucs, axis=0)


def calibration_bins(probs: np.ndarray) -> np.ndarray:
    """Top-label confidence bin of each row: CALIBRATION_BINS equal-width bins over [0, 1]."""
    confidence = probs.max(axis=1)
    return np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)


def calibration_error(weights: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Expected calibration error of the top label (Guo et al. 2017, ICML): the row-weighted
    mean over confidence bins of |accuracy - mean confidence|."""
    members = np.eye(CALIBRATION_BINS)[calibration_bins(probs)]
    correct = (probs.argmax(axis=1) == truth).astype(float)
    count = weights @ members
    gap = weights @ (members * correct[:, None]) - weights @ (members * probs.max(axis=1)[:, None])
    return np.abs(gap).sum(axis=1) / count.sum(axis=1)


def repeat_arrays(oof: pd.DataFrame, classes: list) -> list:
    """(groups, truth, probs) per repeat of a pooled out-of-fold table, in repeat order."""
    columns = prob_columns(classes)
    return [
        (
            rows[GROUP].astype(str).to_numpy(),
            label_indices(rows[LABEL], classes),
            rows[columns].to_numpy(dtype=float),
        )
        for _, rows in oof.sort_values(["repeat", ID]).groupby("repeat", sort=True)
    ]
