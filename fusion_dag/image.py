"""The image branch: an image cache per modality and a small CNN trained alone per fold.

Why train the branch alone: a CNN trained inside the fusion model learns weak "complementary"
features that fit the training rows only (train kappa 0.96, validation 0.02 in the original
study). Trained alone, with early stopping on an inner patient-grouped split of the training
rows, it learns what the images themselves say; the fusion stage then loads it frozen.
"""

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from fusion_dag.artifacts import (
    GROUP,
    ID,
    LABEL,
    file_sha256,
    partial_path,
    probability_table,
)
from fusion_dag.folds import split_rows
from fusion_dag.prepare import InputError

log = logging.getLogger(__name__)

CHANNELS = 3
FILTERS = (16, 32, 64)


def build_cache(paths: pd.Series, size: int, cache_path: Path) -> None:
    """Decode and resize every image once into a uint8 array of shape (n, size, size, 3).

    The array is saved as ``.npy`` so image jobs can memory-map it instead of holding
    every image in memory. Grayscale images are repeated over three channels.
    """
    partial = partial_path(cache_path)
    cache = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, CHANNELS)
    )
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        cache[row] = np.asarray(resized, dtype=np.uint8)
    cache.flush()
    del cache
    os.replace(partial, cache_path)


def load_cache(cache_path: Path, ids_path: Path) -> tuple[np.ndarray, pd.Series]:
    """Memory-map an image cache; return (images, position of each sample id)."""
    images = np.load(cache_path, mmap_mode="r")
    ids = pd.read_csv(ids_path, sep="\t", dtype={ID: str})[ID]
    if len(ids) != len(images):
        raise InputError(f"image cache {cache_path} has {len(images)} images for {len(ids)} ids")
    return images, pd.Series(np.arange(len(ids)), index=ids.to_numpy())


def configure_tensorflow(threads: int, seed: int) -> None:
    """Make training repeatable and keep TensorFlow within the job's threads.

    Must run before TensorFlow creates its thread pools, so before any model is built.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:
        # Only when this process already ran TensorFlow (tests); a job calls this first.
        log.warning("TensorFlow is already initialised; its thread pools stay as they are")
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    devices = [d.name for d in tf.config.list_logical_devices()]
    log.info("TensorFlow %s, %d threads, devices: %s", tf.__version__, threads, ", ".join(devices))


def build_image_branch(modality: str, size: int, n_classes: int):
    """A compact CNN whose layers are all named ``{modality}_...``.

    The names are the contract with the fusion stage, which loads these layers by name.
    """
    import keras
    from keras import layers

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
    on patients the network has not seen, and never on the outer validation fold.
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
    return mask


def cohen_kappa_metric(n_classes: int, name: str = "kappa"):
    """Unweighted Cohen's kappa as a streaming Keras metric (a confusion matrix per epoch).

    Keras evaluates it during the training and validation passes it already makes, so the
    per-epoch ``kappa`` and ``val_kappa`` cost no extra predictions. Training ``kappa`` is
    accumulated batch by batch while the weights change, with dropout active, as with any Keras
    training metric. Class weights are not applied to it.
    """
    import keras
    from keras import ops

    class CohenKappa(keras.metrics.Metric):
        def __init__(self, **kwargs):
            super().__init__(name=name, **kwargs)
            self.confusion = self.add_variable(
                shape=(n_classes, n_classes), initializer="zeros", name="confusion"
            )

        def update_state(self, y_true, y_pred, sample_weight=None):
            truth = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n_classes)
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), n_classes)
            self.confusion.assign_add(ops.matmul(ops.transpose(truth), predicted))

        def result(self):
            total = ops.maximum(ops.sum(self.confusion), 1.0)
            observed = ops.trace(self.confusion) / total
            expected = ops.sum(ops.sum(self.confusion, 1) * ops.sum(self.confusion, 0)) / (
                total * total
            )
            return ops.where(expected < 1.0, (observed - expected) / (1.0 - expected), 0.0)

        def reset_state(self):
            self.confusion.assign(ops.zeros((n_classes, n_classes)))

    return CohenKappa()


def train_branch(
    images: np.ndarray,
    positions: pd.Series,
    folds: pd.DataFrame,
    fold: int,
    modality: str,
    classes: list,
    settings: dict,
    seed: int,
    checkpoint_path: Path,
    history_path: Path,
):
    """Train one modality's branch on one outer fold's training rows; return the best model.

    Early stopping and the best-epoch checkpoint follow the inner split's loss. The checkpoint
    is written under a temporary name by Keras and renamed once training has finished. Returns
    (model with the best epoch's weights, training throughput in images per second).
    """
    import keras

    table = image_rows(folds, positions, fold)
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], seed)
    fit_rows, stop_rows = train[~held_out], train[held_out]
    y_fit = fit_rows[LABEL].map(classes.index).to_numpy()
    y_stop = stop_rows[LABEL].map(classes.index).to_numpy()
    x_fit = images[positions[fit_rows[ID]].to_numpy()]
    x_stop = images[positions[stop_rows[ID]].to_numpy()]
    log.info(
        "Fold %d, %s: %d training rows (%d patients), %d held out for early stopping (%d)",
        fold,
        modality,
        len(fit_rows),
        fit_rows[GROUP].nunique(),
        len(stop_rows),
        stop_rows[GROUP].nunique(),
    )
    model = build_image_branch(modality, images.shape[1], len(classes))
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", cohen_kappa_metric(len(classes))],
    )
    checkpoint_partial = Path(checkpoint_path).with_name("checkpoint.partial.weights.h5")
    history_partial = partial_path(history_path)
    batch_size = settings["batch_size"]
    callbacks = [
        keras.callbacks.CSVLogger(str(history_partial), separator="\t"),
        keras.callbacks.ModelCheckpoint(
            str(checkpoint_partial),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        ),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings["patience"]),
    ]
    started = time.perf_counter()
    history = model.fit(
        x_fit,
        y_fit,
        validation_data=(x_stop, y_stop),
        epochs=settings["epochs"],
        batch_size=batch_size,
        class_weight=balanced_class_weights(y_fit),
        callbacks=callbacks,
        shuffle=True,
        verbose=2,
    )
    images_per_second = len(x_fit) * len(history.epoch) / (time.perf_counter() - started)
    log.info("Trained %d epochs at %.0f images/s", len(history.epoch), images_per_second)
    model.load_weights(checkpoint_partial)
    os.replace(checkpoint_partial, checkpoint_path)
    os.replace(history_partial, history_path)
    return model, images_per_second


def layer_shapes(model, modality: str) -> dict:
    """Weight shapes of every ``{modality}_`` layer that has weights, by layer name."""
    return {
        layer.name: [list(w.shape) for w in layer.weights]
        for layer in model.layers
        if layer.weights and layer.name.startswith(f"{modality}_")
    }


def checkpoint_manifest(model, modality: str, fold: int, classes: list, checkpoint: Path) -> dict:
    """The sidecar written next to a checkpoint: what it is for and what it must contain.

    The fusion stage refuses a checkpoint whose bytes, modality, image size, classes or layers
    differ from this record or from the model it builds.
    """
    return {
        "modality": modality,
        "fold": fold,
        "image_size": int(model.input.shape[1]),
        "classes": list(classes),
        "layers": layer_shapes(model, modality),
        "sha256": file_sha256(checkpoint),
    }


def best_epoch(history_path: Path) -> int:
    """The 1-based epoch whose weights the checkpoint holds (lowest early-stopping loss)."""
    history = pd.read_csv(history_path, sep="\t")
    return int(history.loc[history["val_loss"].idxmin(), "epoch"]) + 1


def branch_probabilities(
    model,
    images: np.ndarray,
    positions: pd.Series,
    folds: pd.DataFrame,
    fold: int,
    classes: list,
    batch_size: int,
) -> pd.DataFrame:
    """The contract's probability table for every sample that has an image."""
    table = image_rows(folds, positions, fold)
    x = images[positions[table[ID]].to_numpy()]
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return probability_table(table[ID], table["split"], probs, classes)
