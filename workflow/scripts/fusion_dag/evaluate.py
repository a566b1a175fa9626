"""Metrics for one fold of one combination.

Unweighted Cohen's kappa on validation rows is the primary metric (as in the original study);
quadratic weighted kappa credits near misses on the ordinal scale I < P < R. Train kappa and
the train-minus-validation gap are reported because overfitting, not raw accuracy, is what
broke the naive fusion.
"""

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from fusion_dag.artifacts import ID, LABEL


def predicted_index(probs: pd.DataFrame, classes: list) -> np.ndarray:
    """Index of the most probable class per row (ties go to the earlier class)."""
    return probs[[f"prob_{c}" for c in classes]].to_numpy().argmax(axis=1)


def kappa(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Unweighted Cohen's kappa over the full label set."""
    return float(cohen_kappa_score(truth, predicted, labels=list(range(n_classes))))


def fold_metrics(probs: pd.DataFrame, labels: pd.DataFrame, classes: list) -> dict:
    """Validation metrics, train kappa, gap and predicted class shares for one fold.

    ``probs`` is a probability table (``id``, ``split``, ``prob_{class}``); ``labels`` maps
    ``id`` to ``label``.
    """
    table = probs.merge(labels[[ID, LABEL]], on=ID, validate="one_to_one")
    truth = table[LABEL].map(classes.index).to_numpy()
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
    shares = np.bincount(predicted[val], minlength=n) / max(int(val.sum()), 1)
    metrics.update({f"pred_frac_{c}": float(s) for c, s in zip(classes, shares, strict=True)})
    return metrics


def validation_predictions(probs: pd.DataFrame, labels: pd.DataFrame, classes: list):
    """(truth, predicted) class indices on the validation rows of one probability table."""
    table = probs[probs["split"] == "val"].merge(labels[[ID, LABEL]], on=ID, validate="one_to_one")
    return table[LABEL].map(classes.index).to_numpy(), predicted_index(table, classes)


def aligned_validation(rf_probs: pd.DataFrame, image_probs: pd.DataFrame, labels, classes):
    """Validation rows present in both branches: (truth, rf probabilities, image probabilities)."""
    columns = [f"prob_{c}" for c in classes]
    rf = rf_probs[rf_probs["split"] == "val"]
    table = rf.merge(image_probs, on=[ID, "split"], suffixes=("_rf", "_image"))
    table = table.merge(labels[[ID, LABEL]], on=ID, validate="one_to_one")
    truth = table[LABEL].map(classes.index).to_numpy()
    return (
        truth,
        table[[f"{c}_rf" for c in columns]].to_numpy(),
        table[[f"{c}_image" for c in columns]].to_numpy(),
    )


def weight_sweep(rf_probs, image_probs, labels, classes, step: float = 0.05) -> pd.DataFrame:
    """Validation kappa of ``w * rf + (1 - w) * image`` for w from 0 to 1.

    Computed from cached probabilities with no retraining, so a user can see where the
    configured weight sits on the curve. Reading the best weight off this curve and using it
    would be a training decision made on the validation fold: it is a diagnostic only.
    """
    truth, rf, image = aligned_validation(rf_probs, image_probs, labels, classes)
    weights = np.round(np.arange(0.0, 1.0 + step / 2, step), 10)
    kappas = [
        kappa(truth, (w * rf + (1 - w) * image).argmax(axis=1), len(classes)) for w in weights
    ]
    return pd.DataFrame({"metadata_weight": weights, "kappa": kappas})


def branch_agreement(rf_probs, image_probs, labels, classes) -> dict:
    """How the two branches' errors relate on validation rows.

    Fusion can only help where one branch is right when the other is wrong. ``both_wrong``
    against ``both_wrong_if_independent`` (the product of the two error rates) shows whether
    errors coincide more than chance; ``prediction_kappa`` is Cohen's kappa between the two
    branches' predicted classes.
    """
    truth, rf, image = aligned_validation(rf_probs, image_probs, labels, classes)
    rf_wrong = rf.argmax(axis=1) != truth
    image_wrong = image.argmax(axis=1) != truth
    return {
        "n_val": int(truth.size),
        "rf_error": float(rf_wrong.mean()),
        "image_error": float(image_wrong.mean()),
        "both_wrong": float((rf_wrong & image_wrong).mean()),
        "both_wrong_if_independent": float(rf_wrong.mean() * image_wrong.mean()),
        "prediction_kappa": kappa(rf.argmax(axis=1), image.argmax(axis=1), len(classes)),
    }
