"""The image branch: a small CNN or a ``keras.applications`` backbone trained alone per fold.

Why train the branch alone: a CNN trained inside the fusion model learns weak "complementary"
features that fit the training rows only (train kappa 0.96, validation 0.02 in the original
study). Trained alone, with early stopping on an inner patient-grouped split of the training
rows, it learns what the images themselves say; the fusion stage then loads it frozen.

A branch is, in order: the image input (uint8 values 0-255 from the cache), optional
augmentation layers (active in ``fit`` only), the backbone's own preprocessing, the backbone
(``small_cnn`` or one nested ``keras.applications`` model named ``{modality}_backbone``), and a
pooling, dropout and softmax head. Every layer is named ``{modality}_...``: the names are the
contract with the fusion stage, which loads the branch by layer name.
"""

import logging
import os
import time
from contextlib import contextmanager
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

from fusion_dag.artifacts import (
    GROUP,
    ID,
    LABEL,
    InputError,
    label_indices,
    partial_path,
    prob_columns,
)
from fusion_dag.checkpoint import save_branch_weights
from fusion_dag.folds import split_rows
from fusion_dag.views import view_weights, visit_means

log = logging.getLogger(__name__)

SMALL_CNN = "small_cnn"
FILTERS = (16, 32, 64)
# keras.applications backbones -> the module whose preprocess_input maps 0-255 pixels to the
# range the backbone was trained on (EfficientNet and MobileNetV3 rescale inside the model and
# take 0-255; ResNet50V2 takes [-1, 1]; DenseNet121 ImageNet-normalised values).
BACKBONES = {
    "EfficientNetB0": "efficientnet",
    "EfficientNetB2": "efficientnet",
    "MobileNetV3Small": "mobilenet_v3",
    "MobileNetV3Large": "mobilenet_v3",
    "ResNet50V2": "resnet_v2",
    "DenseNet121": "densenet",
}
# What the branch is built from when a setting is absent (the config's defaults).
BRANCH_DEFAULTS = {
    "backbone": SMALL_CNN,
    "backbone_weights": None,
    "fine_tune": "frozen",
    "augmentation": None,
    "mixed_precision": False,
}


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


@keras.saving.register_keras_serializable(package="fusion_dag")
class BackbonePreprocessing(layers.Layer):
    """A backbone's own ``keras.applications.<module>.preprocess_input`` as a named layer.

    A layer (not a Lambda) so the branch holds no code a weights file could carry, and the
    preprocessing travels with the architecture: the image stage, the fusion stage and a
    prediction all apply exactly the function the backbone's weights were trained with.
    """

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module

    def call(self, inputs):
        return getattr(keras.applications, self.module).preprocess_input(inputs)

    def get_config(self):
        return {**super().get_config(), "module": self.module}


@contextmanager
def dtype_policy(mixed_precision: bool):
    """Build layers under ``mixed_float16`` (float16 compute, float32 weights) or ``float32``.

    Set per branch and restored after, so one modality's setting never leaks into another's.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def augmentation_layers(modality: str, augmentation: dict | None) -> list:
    """Keras preprocessing layers for the configured augmentation (none when not set).

    They transform images in ``fit`` only; ``predict`` and the fusion stage pass images through
    unchanged. ``flip`` is a RandomFlip mode; ``rotation``, ``zoom`` and ``contrast`` are the
    layers' factors (fractions of a full turn, of the size and of the contrast).
    """
    augmentation = augmentation or {}
    made = {
        "flip": lambda v: layers.RandomFlip(v, name=f"{modality}_flip"),
        "rotation": lambda v: layers.RandomRotation(v, name=f"{modality}_rotation"),
        "zoom": lambda v: layers.RandomZoom(v, name=f"{modality}_zoom"),
        "contrast": lambda v: layers.RandomContrast(v, name=f"{modality}_contrast"),
    }
    return [made[key](value) for key, value in augmentation.items() if value]


def small_cnn(x, modality: str):
    """Three convolution blocks on pixels rescaled to 0-1: the default, fast on a CPU."""
    x = layers.Rescaling(1.0 / 255, name=f"{modality}_rescale")(x)
    for block, filters in enumerate(FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{modality}_conv{block}"
        )(x)
        x = layers.MaxPooling2D(name=f"{modality}_pool{block}")(x)
    return x


def pretrained_backbone(x, modality: str, image_shape: tuple, settings: dict):
    """A ``keras.applications`` backbone as one nested layer ``{modality}_backbone``.

    Grey-scale images are repeated over the three channels the backbone's weights expect (a
    named Concatenate layer), then the backbone's own ``preprocess_input`` is applied. With
    pretrained weights the backbone runs in inference mode (``training=False``), so its
    BatchNormalization statistics stay those it was trained with even when layers are
    fine-tuned, as keras.io's transfer-learning guide recommends; trained from scratch
    (``backbone_weights: null``) it learns its own statistics.
    """
    name = settings["backbone"]
    size = image_shape[0]
    if image_shape[-1] == 1:
        x = layers.Concatenate(name=f"{modality}_grey_to_rgb")([x, x, x])
    x = BackbonePreprocessing(BACKBONES[name], name=f"{modality}_preprocess")(x)
    backbone = getattr(keras.applications, name)(
        include_top=False, weights=None, input_shape=(size, size, 3), name=f"{modality}_backbone"
    )
    pretrained = settings.get("backbone_weights") is not None
    return backbone(x, training=False) if pretrained else backbone(x)


def build_image_branch(modality: str, image_shape: tuple, n_classes: int, settings=None):
    """One modality's branch for images of ``image_shape`` (size, size, channels).

    ``settings`` are the modality's image settings (``backbone``, ``augmentation``,
    ``mixed_precision``, ``backbone_weights``; absent keys take :data:`BRANCH_DEFAULTS`). The
    weights are randomly initialised: pretrained backbone weights are loaded by
    :func:`load_backbone_weights`, a trained branch by the checkpoint loader.
    """
    settings = {**BRANCH_DEFAULTS, **(settings or {})}
    with dtype_policy(settings["mixed_precision"]):
        inputs = keras.Input(shape=tuple(image_shape), name=f"{modality}_input")
        x = inputs
        for layer in augmentation_layers(modality, settings["augmentation"]):
            x = layer(x)
        if settings["backbone"] == SMALL_CNN:
            x = small_cnn(x, modality)
        else:
            x = pretrained_backbone(x, modality, tuple(image_shape), settings)
        x = layers.GlobalAveragePooling2D(name=f"{modality}_gap")(x)
        x = layers.Dropout(0.3, name=f"{modality}_dropout")(x)
        # Probabilities in float32 whatever the compute precision, as Keras advises.
        outputs = layers.Dense(
            n_classes, activation="softmax", dtype="float32", name=f"{modality}_probs"
        )(x)
    return keras.Model(inputs, outputs, name=f"{modality}_branch")


def load_backbone_weights(model, modality: str, settings: dict) -> None:
    """Load the configured pretrained weights into the branch's nested backbone.

    ``imagenet``: Keras's own ImageNet weights (downloaded once into ``~/.keras/models`` on the
    user's machine); a path: a Keras ``.weights.h5`` file of the same backbone built with
    ``include_top=False`` (no network needed). Nothing to load for ``small_cnn`` or
    ``backbone_weights: null``.
    """
    source = settings.get("backbone_weights")
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN or source is None:
        return
    backbone = model.get_layer(f"{modality}_backbone")
    if source == "imagenet":
        reference = getattr(keras.applications, settings["backbone"])(
            include_top=False, weights="imagenet", input_shape=backbone.input.shape[1:]
        )
        backbone.set_weights(reference.get_weights())
    else:
        backbone.load_weights(source)
    log.info("Backbone %s: weights loaded from %s", settings["backbone"], source)


def set_fine_tuning(model, modality: str, settings: dict) -> None:
    """Choose which backbone layers train: ``frozen`` (the head only), ``all``, or an integer k
    (the top k layers of the backbone, BatchNormalization layers excepted, as in keras.io's
    EfficientNet fine-tuning example). ``small_cnn`` always trains all its layers.
    """
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return
    backbone = model.get_layer(f"{modality}_backbone")
    fine_tune = settings.get("fine_tune", "frozen")
    backbone.trainable = fine_tune != "frozen"
    if isinstance(fine_tune, int):
        for position, layer in enumerate(backbone.layers):
            top = position >= len(backbone.layers) - fine_tune
            layer.trainable = top and not isinstance(layer, layers.BatchNormalization)
    log.info(
        "Backbone %s, fine_tune %s: %d of %d backbone weights trainable",
        settings["backbone"],
        fine_tune,
        len(backbone.trainable_weights),
        len(backbone.weights),
    )


def image_rows(folds: pd.DataFrame, views: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The fold table's visits that have at least one view, with their outer ``split``."""
    table = folds[folds[ID].isin(views[ID])].reset_index(drop=True)
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
    """One image modality on one outer fold: the cached views and how to train on them.

    ``images`` is the memory-mapped cache and ``views`` its views table (row i is image i;
    ``id`` names each view's visit); ``folds`` the outer fold table of visits; ``settings`` the
    modality's ``image_model`` settings. Splits are made on visits (patient-grouped), then each
    visit brings all its views, so a visit's views are never on two sides.
    """

    images: np.ndarray
    views: pd.DataFrame
    folds: pd.DataFrame
    fold: int
    modality: str
    classes: list
    settings: dict
    seed: int

    def rows(self) -> pd.DataFrame:
        """The fold table's visits that have a view, with their outer ``split``."""
        return image_rows(self.folds, self.views, self.fold)

    def views_of(self, visits: pd.DataFrame) -> pd.DataFrame:
        """The views of ``visits`` (in cache order), with each view's cache ``position`` and
        its visit's ``label``, ``group`` and ``split``."""
        views = self.views[["view", ID]].assign(position=np.arange(len(self.views)))
        wanted = [c for c in (ID, LABEL, GROUP, "split") if c in visits.columns]
        return views.merge(visits[wanted], on=ID, how="inner", validate="many_to_one")

    def pixels(self, views: pd.DataFrame) -> np.ndarray:
        """The cached images of ``views``, in their order."""
        return self.images[views["position"].to_numpy()]

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        """Class indices of ``rows``."""
        return label_indices(rows[LABEL], self.classes)

    def weights(self, views: pd.DataFrame, class_weights: dict | None) -> np.ndarray:
        """Each view's weight in the loss: its class's weight (1 without ``class_weights``)
        divided by its visit's number of views, so each visit weighs the same in the loss and
        in early stopping whatever its number of views (:func:`~fusion_dag.views.view_weights`)."""
        y = self.labels(views)
        per_class = np.ones(len(y))
        if class_weights is not None:
            per_class = np.array([class_weights[label] for label in y], dtype=float)
        return view_weights(views[ID], per_class)

    def training_arrays(self, visits: pd.DataFrame, class_weights: dict | None) -> tuple:
        """(images, labels, weights) of every view of ``visits`` (see :meth:`weights`)."""
        views = self.views_of(visits)
        return self.pixels(views), self.labels(views), self.weights(views, class_weights)


class CachedBatches(keras.utils.PyDataset):
    """Model inputs gathered a batch at a time, for ``model.predict``.

    Why: indexing a memory-mapped cache with every row copies every image into memory at
    once, and Keras copies the array again on its way in; with three modalities at four times
    the study's size a fusion job peaked at 2.5 GB that way. Gathering each batch when it is
    predicted keeps a job's memory flat in the number of rows. ``inputs`` maps each model input
    name to (array, row positions in it), all of one length; batches follow that order, so
    ``predict``'s outputs line up with the positions.
    """

    def __init__(self, inputs: dict, batch_size: int):
        super().__init__()
        self.inputs = inputs
        self.batch_size = batch_size
        self.n_rows = len(next(iter(inputs.values()))[1])

    def __len__(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        batch = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return ({name: array[rows[batch]] for name, (array, rows) in self.inputs.items()},)


def fit_with_early_stopping(model, fit: tuple, stop: tuple, settings: dict, *callbacks):
    """Fit on ``fit`` (x, y, sample weights), stopping early on ``stop`` (x, y, sample
    weights: the inner patient-grouped split); the best epoch's weights are restored when
    training ends, stopped early or not. The weights carry the balanced class weights and the
    one-weight-per-visit rule (:meth:`BranchFold.training_arrays`). Shared by the image stage
    and the ablation, so the strategies differ only in what they train, not how. Returns
    (Keras history, the 1-based epoch whose weights were restored, as ``EarlyStopping``
    recorded it)."""
    x_fit, y_fit, w_fit = fit
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=settings["patience"], restore_best_weights=True
    )
    history = model.fit(
        x_fit,
        y_fit,
        sample_weight=w_fit,
        validation_data=stop,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        callbacks=[*callbacks, stopping],
        shuffle=True,
        verbose=2,
    )
    return history, stopping.best_epoch + 1


def train_branch(task: BranchFold, checkpoint_path: Path, history_path: Path):
    """Train one modality's branch on one outer fold's training visits; return the best model.

    The inner split for early stopping is drawn on visits (patient-grouped), then every view
    of a visit goes where its visit goes. Early stopping and the best epoch follow the inner
    split's loss; the best epoch's weights are restored and written, keyed by layer name, once
    training has finished. Returns (model with the best epoch's weights, ``best_epoch`` and
    ``fit_images_per_second``).
    """
    settings = task.settings
    table = task.rows()
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], task.seed)
    fit_rows, stop_rows = train[~held_out], train[held_out]
    class_weights = balanced_class_weights(task.labels(fit_rows))
    fit = task.training_arrays(fit_rows, class_weights)
    stop = task.training_arrays(stop_rows, None)
    log.info(
        "Fold %d, %s: %d training visits (%d views, %d patients), %d held out for early "
        "stopping (%d views, %d patients)",
        task.fold,
        task.modality,
        len(fit_rows),
        len(fit[0]),
        fit_rows[GROUP].nunique(),
        len(stop_rows),
        len(stop[0]),
        stop_rows[GROUP].nunique(),
    )
    model = build_image_branch(task.modality, task.images.shape[1:], len(task.classes), settings)
    load_backbone_weights(model, task.modality, settings)
    set_fine_tuning(model, task.modality, settings)
    model.compile(
        optimizer=keras.optimizers.Adam(settings["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", CohenKappa(len(task.classes))],
    )
    history_partial = partial_path(history_path)
    started = time.perf_counter()
    history, best_epoch = fit_with_early_stopping(
        model,
        fit,
        stop,
        settings,
        keras.callbacks.CSVLogger(str(history_partial), separator="\t"),
    )
    images_per_second = len(fit[0]) * len(history.epoch) / (time.perf_counter() - started)
    log.info("Trained %d epochs at %.0f images/s", len(history.epoch), images_per_second)
    save_branch_weights(model, task.modality, checkpoint_path)
    os.replace(history_partial, history_path)
    return model, {"best_epoch": best_epoch, "fit_images_per_second": images_per_second}


def view_probabilities(model, task: BranchFold, visits: pd.DataFrame) -> pd.DataFrame:
    """``view``, ``id``, ``split`` and ``prob_{class}`` of every view of ``visits``."""
    views = task.views_of(visits)
    inputs = {model.input.name: (task.images, views["position"].to_numpy())}
    probs = model.predict(CachedBatches(inputs, task.settings["batch_size"]), verbose=0)
    table = views[["view", ID, "split"]].reset_index(drop=True)
    return pd.concat([table, pd.DataFrame(probs, columns=prob_columns(task.classes))], axis=1)


def branch_probabilities(model, task: BranchFold) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the contract's visit probability table, the per-view table) for every visit with a
    view: a visit's probability is the mean of its views'
    (:func:`~fusion_dag.views.visit_means`)."""
    view_probs = view_probabilities(model, task, task.rows())
    visits = visit_means(view_probs, prob_columns(task.classes))
    return visits, view_probs


def warn_if_collapsed(probs: pd.DataFrame, classes: list, best_epoch: int, modality: str):
    """Log a warning when the branch predicts one class for every training row.

    A small network can stop at its first plateau (best epoch 1, the class prior), which no
    error catches: its kappa is 0 and fusion then only shifts the forest's probabilities.
    """
    train = probs[probs["split"] == "train"]
    predicted = train[prob_columns(classes)].to_numpy().argmax(axis=1)
    if len(train) and len(np.unique(predicted)) == 1:
        log.warning(
            "%s branch predicts class %s for every training row (best epoch %d): it has not "
            "learned from the images; raise modalities.%s.patience or epochs, or check the images",
            modality,
            classes[predicted[0]],
            best_epoch,
            modality,
        )


def train_stage(task: BranchFold, checkpoint_path: Path, history_path: Path, threads: int):
    """An image job, fold or final: configure TensorFlow, train the branch alone, predict every
    view; return (model, visit probabilities, view probabilities, the job's record: best epoch,
    training throughput and how TensorFlow ran)."""
    runtime = configure_tensorflow(task.settings["intra_op_threads"], threads, task.seed)
    model, fit = train_branch(task, checkpoint_path, history_path)
    probs, view_probs = branch_probabilities(model, task)
    warn_if_collapsed(probs, task.classes, fit["best_epoch"], task.modality)
    return model, probs, view_probs, {**fit, "runtime": {"threads": threads, **runtime}}
