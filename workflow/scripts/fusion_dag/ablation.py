"""The ablation: the original study's fusion strategies, side by side on the same folds.

Why: users need to see on their own data why V3 holds. V1 (one learned fusion weight) and V2
(fixed weights) both train the image branch from random initialisation inside the fusion
model; each is run with training-row forest probabilities taken in-sample (the original's
mistake) and out-of-fold (this workflow's default), so the table separates the two causes of
overfitting. V3 is the ``fusion`` rule's own result and is not recomputed here.
"""

import logging

import keras
import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, prob_columns
from fusion_dag.branch import build_image_branch, load_backbone_weights, set_fine_tuning
from fusion_dag.evaluate import fold_metrics
from fusion_dag.folds import inner_split
from fusion_dag.image import (
    BranchFold,
    balanced_class_weights,
    fit_with_early_stopping,
)
from fusion_dag.views import visit_means

log = logging.getLogger(__name__)

STRATEGIES = ("V1", "V2")
RF_SOURCES = ("in_sample", "out_of_fold")


# V1 starts its learned weight from the configured one, as a logit; the ends 0 and 1 have no
# finite logit, so the start is kept this far inside them (and the log says so).
WEIGHT_MARGIN = 0.01


def initial_logit(weight: float) -> float:
    """The logit V1's learned weight starts from: the configured weight, kept off 0 and 1."""
    start = min(max(weight, WEIGHT_MARGIN), 1.0 - WEIGHT_MARGIN)
    if start != weight:
        log.info(
            "V1 starts its learned weight at %.2f (configured %.2f has no logit)", start, weight
        )
    return float(np.log(start / (1.0 - start)))


@keras.saving.register_keras_serializable(package="fusion_dag")
class WeightedFusion(keras.layers.Layer):
    """``w * metadata + (1 - w) * image``; with ``learned``, ``w = sigmoid(logit)`` is trained (V1),
    starting from ``initial_weight``; without, it stays fixed (V2)."""

    def __init__(self, initial_weight: float, learned: bool, **kwargs):
        super().__init__(**kwargs)
        self.initial_weight = initial_weight
        self.learned = learned

    def build(self, input_shape):
        self.logit = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(initial_logit(self.initial_weight)),
            trainable=self.learned,
            name="logit",
        )

    def call(self, inputs):
        metadata, image = inputs
        weight = keras.ops.sigmoid(self.logit)
        return weight * metadata + (1.0 - weight) * image

    def get_config(self):
        return {
            **super().get_config(),
            "initial_weight": self.initial_weight,
            "learned": self.learned,
        }


def build_joint_model(task: BranchFold, weight: float, learned: bool):
    """The task's image branch (pretrained backbone weights and fine-tuning as in the image
    stage) plus ``metadata_probs``, fused inside one model that trains both."""
    modality, n_classes = task.modality, len(task.classes)
    branch = build_image_branch(modality, task.images.shape[1:], n_classes, task.settings)
    load_backbone_weights(branch, modality, task.settings)
    set_fine_tuning(branch, modality, task.settings)
    metadata_probs = keras.Input(shape=(n_classes,), name="metadata_probs")
    fused = WeightedFusion(weight, learned, name="fusion_weighted")([metadata_probs, branch.output])
    return keras.Model([metadata_probs, branch.input], fused, name=f"fusion_joint_{modality}")


def train_joint(
    task: BranchFold, strategy: str, metadata_probs: pd.DataFrame, metadata_weight: float
) -> tuple[pd.DataFrame, dict]:
    """Train a V1 or V2 model on the fold's training rows; return (probabilities, run record).

    The run record holds the epochs run, the best (restored) epoch and, for V1, the learned
    metadata weight, so the ablation table shows how far training moved the fusion. Same
    optimizer, epochs, class weights and inner patient-grouped early stopping as the image
    branch, so the strategies differ only in how fusion is trained.
    """
    settings = task.settings
    keras.utils.set_random_seed(task.seed)
    columns = prob_columns(task.classes)
    table = task.rows().merge(metadata_probs, on=[ID, "split"], validate="one_to_one")
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], task.seed)
    class_weights = balanced_class_weights(task.labels(train[~held_out]))

    def arrays(visits: pd.DataFrame, weights: dict | None):
        """Every view of ``visits`` with its visit's forest probabilities, as the image stage
        weighs views (one weight per visit)."""
        views = task.views_of(visits)
        forest = views[[ID]].merge(
            visits[[ID, *columns]], on=ID, how="left", validate="many_to_one"
        )
        x = {
            "metadata_probs": forest[columns].to_numpy(dtype="float32"),
            f"{task.modality}_input": task.pixels(views),
        }
        return (x, task.labels(views), task.weights(views, weights)), views

    fit, _ = arrays(train[~held_out], class_weights)
    stop, _ = arrays(train[held_out], None)
    model = build_joint_model(task, metadata_weight, learned=strategy == "V1")
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="sparse_categorical_crossentropy",
    )
    history, best_epoch = fit_with_early_stopping(model, fit, stop, settings)
    (x_all, _, _), views = arrays(table, None)
    view_probs = views[[ID, "split"]].reset_index(drop=True)
    view_probs[columns] = model.predict(x_all, batch_size=settings["batch_size"], verbose=0)
    run = {
        "epochs": len(history.epoch),
        "best_epoch": best_epoch,
        "learned_weight": np.nan,
    }
    if strategy == "V1":
        run["learned_weight"] = float(keras.ops.sigmoid(model.get_layer("fusion_weighted").logit))
        log.info("%s: learned metadata weight %.3f", strategy, run["learned_weight"])
    log.info(
        "%s: %d epochs (best %d), %d patients in training",
        strategy,
        run["epochs"],
        run["best_epoch"],
        train[GROUP].nunique(),
    )
    # The fused probability is linear in the image's, so a visit's is its views' mean.
    return visit_means(view_probs, columns), run


def ablation_fold(
    task: BranchFold, oof_probs: pd.DataFrame, fit_probs: pd.DataFrame, metadata_weight: float
) -> tuple[list, pd.DataFrame]:
    """Every V1/V2 variant on one fold: (metrics records, probabilities of every variant).

    ``oof_probs`` are the fold's forest probabilities (out-of-fold on training rows);
    ``fit_probs`` the training rows predicted by the forest that saw them (in-sample), which
    is how the original study fed its fusion. The probabilities (with ``strategy`` and
    ``rf_source`` columns) let the aggregation compare each variant with V3 on the same rows.
    """
    classes, folds, fold = task.classes, task.folds, task.fold
    sources = {
        "in_sample": pd.concat(
            [fit_probs, oof_probs[oof_probs["split"] == "val"]], ignore_index=True
        ),
        "out_of_fold": oof_probs,
    }
    records, tables = [], []
    for strategy in STRATEGIES:
        for source in RF_SOURCES:
            log.info("Fold %d: training %s with %s forest probabilities", fold, strategy, source)
            probs, run = train_joint(task, strategy, sources[source], metadata_weight)
            tables.append(probs.assign(strategy=strategy, rf_source=source))
            metrics = fold_metrics(probs, folds, classes)
            records.append(
                {
                    "strategy": strategy,
                    "rf_source": source,
                    "fold": fold,
                    **run,
                    **metrics,
                }
            )
    return records, pd.concat(tables, ignore_index=True)
