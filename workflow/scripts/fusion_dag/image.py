"""The image branch: an image cache per modality and a small CNN trained alone per fold.

Why train the branch alone: a CNN trained inside the fusion model learns weak "complementary"
features that fit the training rows only (train kappa 0.96, validation 0.02 in the original
study). Trained alone, with early stopping on an inner patient-grouped split of the training
rows, it learns what the images themselves say; the fusion stage then loads it frozen.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

# TensorFlow's C++ start-up notices are not job output; this must be set before it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError, partial_path, probability_table
from fusion_dag.cache import CHANNELS
from fusion_dag.checkpoint import save_branch_weights
from fusion_dag.folds import split_rows

log = logging.getLogger(__name__)

FILTERS = (16, 32, 64)


def configure_tensorflow(intra_op_threads: int, inter_op_threads: int, seed: int) -> dict:
    """Make training repeatable and size TensorFlow's thread pools; return the settings used.

    Why two numbers: TensorFlow's intra-op pool splits each kernel's arithmetic (convolutions,
    reductions) over its threads, and the split changes floating-point summation order, so a
    branch trained with 1 and with 2 intra-op threads ends with different weights even with op
    determinism on. That count therefore comes from the config (``image_model.intra_op_threads``)
    and decides the numbers; the job's Snakemake ``threads`` only size the inter-op pool, which
    runs independent ops side by side and cannot change a result. Must run before TensorFlow
    creates its thread pools, so before any model is built.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        # Only when this process already ran TensorFlow (tests); a job calls this first.
        log.warning("TensorFlow is already initialised; its thread pools stay as they are")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    used = {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "op_determinism": True,
        "seed": seed,
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
    }
    devices = [d.name for d in tf.config.list_logical_devices()]
    log.info(
        "TensorFlow %s: %d intra-op threads (image_model.intra_op_threads), %d inter-op threads "
        "(job threads), op determinism on, seed %d; devices: %s",
        tf.__version__,
        used["intra_op_threads"],
        used["inter_op_threads"],
        seed,
        ", ".join(devices),
    )
    return used


def build_image_branch(modality: str, size: int, n_classes: int):
    """A compact CNN whose layers are all named ``{modality}_...``.

    The names are the contract with the fusion stage, which loads these layers by name.
    """
    inputs = keras.Input(shape=(size, size, CHANNELS), name=f"{modality}_input")
    x = layers.Rescaling(1.0 / 255, name=f"{modality}_rescale")(inputs)
    x = layers.RandomFlip("horizontal", name=f"{modality}_flip")(x)
    for block, filters in enumerate(FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{modality}_conv{block}"
        )(x)
        x = layers.MaxPooling2D(name=f"{modality}_pool{block}")(x)
    x = layers.GlobalAveragePooling2D(name=f"{modality}_gap")(x)
    x = layers.Dropout(0.3, name=f"{modality}_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name=f"{modality}_probs")(x)
    return keras.Model(inputs, outputs, name=f"{modality}_branch")


def image_rows(folds: pd.DataFrame, positions: pd.Series, fold: int) -> pd.DataFrame:
    """The fold table's rows that have a cached image, with their outer ``split``."""
    table = folds[folds[ID].isin(positions.index)].reset_index(drop=True)
    table["split"] = split_rows(table, fold).to_numpy()
    return table


def balanced_class_weights(y: np.ndarray) -> dict:
    """Keras ``class_weight`` that makes each present class count equally in the loss."""
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return dict(zip(present.tolist(), weights.tolist(), strict=True))


def inner_split(train: pd.DataFrame, validation_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training rows held out for early stopping.

    Patient-grouped and label-stratified, like the outer folds, so early stopping is decided
    on patients the network has not seen, and never on the outer validation fold. The held-out
    share is one of ``round(1 / validation_fraction)`` inner folds (StratifiedGroupKFold keeps
    patients whole and classes balanced, which an exact fraction of rows cannot promise); the
    log states the share actually held out.
    """
    n_splits = max(2, round(1.0 / validation_fraction))
    if train[GROUP].nunique() < n_splits:
        raise InputError(
            f"{train[GROUP].nunique()} training groups are too few for "
            f"image_model.validation_fraction={validation_fraction}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(train, train[LABEL], train[GROUP]))
    mask = np.zeros(len(train), dtype=bool)
    mask[held_out] = True
    log.info(
        "Early stopping holds out 1 of %d patient-grouped inner folds (validation_fraction "
        "%.2f): %d of %d training rows (%.1f %%)",
        n_splits,
        validation_fraction,
        mask.sum(),
        len(mask),
        100.0 * mask.mean(),
    )
    return mask


@keras.saving.register_keras_serializable(package="fusion_dag")
class CohenKappa(keras.metrics.Metric):
    """Unweighted Cohen's kappa as a streaming Keras metric (a confusion matrix per epoch).

    Keras evaluates it during the training and validation passes it already makes, so the
    per-epoch ``kappa`` and ``val_kappa`` cost no extra predictions. Training ``kappa`` is
    accumulated batch by batch while the weights change, with dropout active, as with any Keras
    training metric. Class weights are not applied to it.
    """

    def __init__(self, n_classes: int, name: str = "kappa", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = n_classes
        self.confusion = self.add_variable(
            shape=(n_classes, n_classes), initializer="zeros", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.n_classes)
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.n_classes)
        self.confusion.assign_add(ops.matmul(ops.transpose(truth), predicted))

    def result(self):
        total = ops.maximum(ops.sum(self.confusion), 1.0)
        observed = ops.trace(self.confusion) / total
        expected = ops.sum(ops.sum(self.confusion, 1) * ops.sum(self.confusion, 0)) / (
            total * total
        )
        return ops.where(expected < 1.0, (observed - expected) / (1.0 - expected), 0.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.n_classes, self.n_classes)))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


@dataclass(frozen=True)
class BranchFold:
    """One image modality on one outer fold: the cached images and how to train on them.

    ``images`` is the memory-mapped cache and ``positions`` the cache row of each sample id;
    ``folds`` the outer fold table; ``settings`` the modality's ``image_model`` settings.
    """

    images: np.ndarray
    positions: pd.Series
    folds: pd.DataFrame
    fold: int
    modality: str
    classes: list
    settings: dict
    seed: int

    def rows(self) -> pd.DataFrame:
        """The fold table's rows that have an image, with their outer ``split``."""
        return image_rows(self.folds, self.positions, self.fold)

    def pixels(self, rows: pd.DataFrame) -> np.ndarray:
        """The cached images of ``rows``, in their order."""
        return self.images[self.positions[rows[ID]].to_numpy()]

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        """Class indices of ``rows``."""
        return rows[LABEL].map(self.classes.index).to_numpy()


def fit_with_early_stopping(model, fit: tuple, stop: tuple, settings: dict, *callbacks):
    """Fit on ``fit`` (x, y) with balanced class weights, stopping early on ``stop`` (the inner
    patient-grouped split); the best epoch's weights are restored when training ends, stopped
    early or not. Shared by the image stage and the ablation, so the strategies differ only in
    what they train, not how."""
    x_fit, y_fit = fit
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings["patience"], restore_best_weights=True
    )
    return model.fit(
        x_fit,
        y_fit,
        validation_data=stop,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        class_weight=balanced_class_weights(y_fit),
        callbacks=[*callbacks, stopping],
        shuffle=True,
        verbose=2,
    )


def train_branch(task: BranchFold, checkpoint_path: Path, history_path: Path):
    """Train one modality's branch on one outer fold's training rows; return the best model.

    Early stopping and the best epoch follow the inner split's loss; the best epoch's weights
    are restored and written, keyed by layer name, once training has finished. Returns
    (model with the best epoch's weights, training throughput in images per second).
    """
    settings = task.settings
    table = task.rows()
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], task.seed)
    fit_rows, stop_rows = train[~held_out], train[held_out]
    y_fit, y_stop = task.labels(fit_rows), task.labels(stop_rows)
    x_fit, x_stop = task.pixels(fit_rows), task.pixels(stop_rows)
    log.info(
        "Fold %d, %s: %d training rows (%d patients), %d held out for early stopping (%d)",
        task.fold,
        task.modality,
        len(fit_rows),
        fit_rows[GROUP].nunique(),
        len(stop_rows),
        stop_rows[GROUP].nunique(),
    )
    model = build_image_branch(task.modality, task.images.shape[1], len(task.classes))
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", CohenKappa(len(task.classes))],
    )
    history_partial = partial_path(history_path)
    started = time.perf_counter()
    history = fit_with_early_stopping(
        model,
        (x_fit, y_fit),
        (x_stop, y_stop),
        settings,
        keras.callbacks.CSVLogger(str(history_partial), separator="\t"),
    )
    images_per_second = len(x_fit) * len(history.epoch) / (time.perf_counter() - started)
    log.info("Trained %d epochs at %.0f images/s", len(history.epoch), images_per_second)
    save_branch_weights(model, task.modality, checkpoint_path)
    os.replace(history_partial, history_path)
    return model, images_per_second


def best_epoch(history_path: Path) -> int:
    """The 1-based epoch whose weights the checkpoint holds (lowest early-stopping loss)."""
    history = pd.read_csv(history_path, sep="\t")
    return int(history.loc[history["val_loss"].idxmin(), "epoch"]) + 1


def branch_probabilities(model, task: BranchFold) -> pd.DataFrame:
    """The contract's probability table for every sample that has an image."""
    table = task.rows()
    probs = model.predict(task.pixels(table), batch_size=task.settings["batch_size"], verbose=0)
    return probability_table(table[ID], table["split"], probs, task.classes)
