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
