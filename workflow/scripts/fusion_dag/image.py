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
    prob_columns,
    write_tsv,
)
from fusion_dag.checkpoint import save_branch_weights
from fusion_dag.features import (
    FeatureCache,
    check_backbone,
    check_cache_matches,
    feature_arrays,
    no_cache_reason,
)
from fusion_dag.folds import split_rows
from fusion_dag.views import view_weights, visit_means

log = logging.getLogger(__name__)

SMALL_CNN = "small_cnn"
FILTERS = (16, 32, 64)
DROPOUT = 0.3
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
    # Absent (a branch built before these keys): the small CNN as it was, so its checkpoints
    # and bundles still load; the config's image_model sets them (see small_cnn).
    "batch_norm": False,
    "standardize": False,
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


@keras.saving.register_keras_serializable(package="fusion_dag")
class Standardization(layers.Layer):
    """Per-channel standardisation, ``(x - mean) / std``, with the mean and standard deviation
    held as non-trainable weights (set from the training views by :func:`fit_standardization`).

    Why not ``keras.layers.Normalization``: it copies its adapted statistics into constants
    when adapted or loaded through Keras's own files, so ``set_weights`` (how the V3 checkpoint
    loads a branch by layer name) would leave it computing with the old values. Here the
    weights are the statistics: saved in the checkpoint, loaded by name, frozen with the rest.
    """

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        self.mean = self.add_weight(
            shape=channels, initializer="zeros", trainable=False, name="mean"
        )
        self.std = self.add_weight(shape=channels, initializer="ones", trainable=False, name="std")

    def call(self, inputs):
        return (inputs - ops.cast(self.mean, inputs.dtype)) / ops.cast(self.std, inputs.dtype)


def small_cnn(x, modality: str, batch_norm: bool = False, standardize: bool = False):
    """Three convolution blocks on pixels rescaled to 0-1: the default, fast on a CPU.

    ``standardize``: the rescaled pixels are then standardised per channel with the training
    views' statistics (layer ``{modality}_standardize``); ``batch_norm``: each convolution's
    activations are batch-normalised (``{modality}_bn{block}``). Faint thermal contrasts sit
    in a narrow band of the colour map: on pixels merely rescaled, the first layers'
    activations barely vary between classes and the network stays on its first plateau.
    bench/plateau.py measures both: standardisation helps; batch normalisation, at the demo's
    batch sizes, made the validation predictions collapse, so it is off by default.
    """
    x = layers.Rescaling(1.0 / 255, name=f"{modality}_rescale")(x)
    if standardize:
        x = Standardization(name=f"{modality}_standardize")(x)
    for block, filters in enumerate(FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"{modality}_conv{block}"
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{modality}_bn{block}")(x)
        x = layers.MaxPooling2D(name=f"{modality}_pool{block}")(x)
    return x


def fit_standardization(model, modality: str, images: np.ndarray, chunk: int = 512) -> None:
    """Set the branch's ``{modality}_standardize`` layer (if any) to the per-channel mean and
    standard deviation of ``images`` (uint8, the training views), on the 0-1 scale."""
    try:
        layer = model.get_layer(f"{modality}_standardize")
    except ValueError:
        return
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), chunk):
        pixels = np.asarray(images[start : start + chunk], dtype=np.float64) / 255.0
        total += pixels.sum(axis=(0, 1, 2))
        squares += (pixels**2).sum(axis=(0, 1, 2))
    count = len(images) * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    layer.set_weights([mean.astype("float32"), np.maximum(std, 1e-3).astype("float32")])
    log.info("Standardisation on %d training views: mean %s, std %s", len(images), mean, std)


def pretrained_backbone(x, modality: str, image_shape: tuple, settings: dict):
    """A ``keras.applications`` backbone as one nested layer ``{modality}_backbone``.

    Grey-scale images are repeated over the three channels the backbone's weights expect (a
    named Concatenate layer), then the backbone's own ``preprocess_input`` is applied. With
    pretrained weights the backbone runs in inference mode (``training=False``), so its
    BatchNormalization statistics stay those it was trained with even when layers are
    fine-tuned, as keras.io's transfer-learning guide recommends. A frozen backbone runs in
    inference mode too (no stochastic depth or dropout inside it during ``fit``), so it is a
    fixed function of the image, the one its cached features record; trained from scratch
    (``backbone_weights: null`` and fine-tuned) it learns its own statistics.
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
    frozen = settings.get("fine_tune", "frozen") == "frozen"
    return backbone(x, training=False) if pretrained or frozen else backbone(x)


def branch_head(x, modality: str, n_classes: int, seed: int | None = None):
    """The head on pooled features: dropout, then the softmax layer ``{modality}_probs``
    (float32 whatever the compute precision, as Keras advises). One definition for the branch
    and for the head trained on cached features, so both have the same layers and names.
    ``seed`` seeds the dropout masks (None: Keras's global seed)."""
    x = layers.Dropout(DROPOUT, seed=seed, name=f"{modality}_dropout")(x)
    return layers.Dense(n_classes, activation="softmax", dtype="float32", name=f"{modality}_probs")(
        x
    )


def build_image_branch(
    modality: str, image_shape: tuple, n_classes: int, settings=None, seed: int | None = None
):
    """One modality's branch for images of ``image_shape`` (size, size, channels).

    ``settings`` are the modality's image settings (``backbone``, ``augmentation``,
    ``mixed_precision``, ``backbone_weights``; absent keys take :data:`BRANCH_DEFAULTS`). The
    weights are randomly initialised: pretrained backbone weights are loaded by
    :func:`load_backbone_weights`, a trained branch by the checkpoint loader. ``seed`` seeds the
    head's dropout (:func:`branch_head`).
    """
    settings = {**BRANCH_DEFAULTS, **(settings or {})}
    with dtype_policy(settings["mixed_precision"]):
        inputs = keras.Input(shape=tuple(image_shape), name=f"{modality}_input")
        x = inputs
        for layer in augmentation_layers(modality, settings["augmentation"]):
            x = layer(x)
        if settings["backbone"] == SMALL_CNN:
            x = small_cnn(x, modality, settings["batch_norm"], settings["standardize"])
        else:
            x = pretrained_backbone(x, modality, tuple(image_shape), settings)
        x = layers.GlobalAveragePooling2D(name=f"{modality}_gap")(x)
        outputs = branch_head(x, modality, n_classes, seed)
    return keras.Model(inputs, outputs, name=f"{modality}_branch")


def feature_extractor(model, modality: str):
    """The branch from its image input to its pooled features (``{modality}_gap``): what the
    feature cache holds. Augmentation layers pass images through unchanged outside ``fit``."""
    return keras.Model(model.input, model.get_layer(f"{modality}_gap").output)


def feature_head(model, modality: str, seed: int | None = None):
    """The branch's head as a model of its own on pooled features (input
    ``{modality}_features``), holding the branch's current head weights: trained on cached
    features, its weights go back into the branch by layer name (:func:`copy_head`)."""
    dimension = int(model.get_layer(f"{modality}_gap").output.shape[-1])
    n_classes = int(model.output.shape[-1])
    inputs = keras.Input(shape=(dimension,), name=f"{modality}_features")
    head = keras.Model(
        inputs, branch_head(inputs, modality, n_classes, seed), name=f"{modality}_head"
    )
    copy_head(model, head, modality)
    return head


def copy_head(source, target, modality: str) -> None:
    """Copy the head's weights (layer ``{modality}_probs``) from ``source`` into ``target``."""
    name = f"{modality}_probs"
    target.get_layer(name).set_weights(source.get_layer(name).get_weights())


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
    (the top k layers of the backbone). BatchNormalization layers stay frozen, as in keras.io's
    EfficientNet fine-tuning example, except in a backbone trained from random weights with
    ``all``, which must learn its own statistics. ``small_cnn`` always trains all its layers.
    """
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return
    backbone = model.get_layer(f"{modality}_backbone")
    fine_tune = settings.get("fine_tune", "frozen")
    backbone.trainable = fine_tune != "frozen"
    from_scratch = settings.get("backbone_weights") is None and fine_tune == "all"
    if fine_tune != "frozen" and not from_scratch:
        top = len(backbone.layers) if fine_tune == "all" else fine_tune
        for position, layer in enumerate(backbone.layers):
            in_top = position >= len(backbone.layers) - top
            layer.trainable = in_top and not isinstance(layer, layers.BatchNormalization)
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
    visit brings all its views, so a visit's views are never on two sides. ``features``, when
    the modality has a feature cache, holds the backbone's cached features of every view (row i
    is image i) and the backbone weights they were computed with.
    """

    images: np.ndarray
    views: pd.DataFrame
    folds: pd.DataFrame
    fold: int
    modality: str
    classes: list
    settings: dict
    seed: int
    features: FeatureCache | None = None

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


class FeatureBatches(keras.utils.PyDataset):
    """Training batches of cached features, for ``model.fit`` of the head.

    Each epoch a seeded generator draws a new order of the views and, when the cache holds
    flipped variants, one flip per view (``RandomFlip("horizontal")`` flips each image with
    probability 1/2): the head sees what it would see on pixels, from features computed once.
    Yields (features, labels, sample weights); ``shuffle=False`` keeps the views' order (for
    comparing with a fit on pixels in the same batches).
    """

    def __init__(self, cache: FeatureCache, views: tuple, batch_size: int, seed: int, shuffle=True):
        super().__init__()
        self.features = cache.features
        self.positions, self.labels, self.weights = views
        self.flip = bool(cache.sidecar["flip"])
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = np.random.default_rng(seed)
        self.draw()

    def draw(self) -> None:
        """The next epoch's order of the views and flip of each."""
        n_views = len(self.positions)
        self.order = self.generator.permutation(n_views) if self.shuffle else np.arange(n_views)
        self.variants = (
            self.generator.integers(0, 2, n_views) if self.flip else np.zeros(n_views, dtype=int)
        )

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __getitem__(self, index: int) -> tuple:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        x = self.features[self.positions[rows], self.variants[rows]]
        return x, self.labels[rows], self.weights[rows]

    def on_epoch_end(self) -> None:
        self.draw()


def fit_with_early_stopping(model, fit, stop: tuple, settings: dict, *callbacks):
    """Fit on ``fit`` (x, y, sample weights, or batches that yield them), stopping early on
    ``stop`` (x, y, sample weights: the inner patient-grouped split); the best epoch's weights
    are restored when training ends, stopped early or not. The weights carry the balanced class
    weights and the one-weight-per-visit rule (:meth:`BranchFold.training_arrays`). Shared by
    the image stage's phases and the ablation, so the strategies differ only in what they
    train, not how. Returns (Keras history, the 1-based epoch whose weights were restored, as
    ``EarlyStopping`` recorded it)."""
    warmup = settings.get("warmup_epochs", 0)
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=settings["patience"],
        restore_best_weights=True,
        start_from_epoch=warmup,
    )
    if settings.get("reduce_lr_patience", 0):
        reduce = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=settings["reduce_lr_patience"]
        )
        callbacks = (*callbacks, reduce)
    common = {
        "validation_data": stop,
        "epochs": settings["epochs"],
        "callbacks": [*callbacks, stopping],
        "verbose": 2,
    }
    if isinstance(fit, keras.utils.PyDataset):
        # The batches draw their own order each epoch (FeatureBatches).
        history = model.fit(fit, shuffle=False, **common)
    else:
        x_fit, y_fit, w_fit = fit
        history = model.fit(
            x_fit,
            y_fit,
            sample_weight=w_fit,
            batch_size=settings["batch_size"],
            shuffle=True,
            **common,
        )
    if stopping.best_weights is None:
        # Training ended within the warm-up: no epoch was compared, the last one stays.
        return history, len(history.epoch)
    return history, stopping.best_epoch + 1


def training_phases(settings: dict) -> list:
    """The branch's training phases, in order.

    ``head``: the head on the frozen backbone (from cached features when there are);
    ``fine_tune``: then the top backbone layers on pixels at ``fine_tune_learning_rate``, as
    keras.io fine-tunes pretrained weights only once the new head has converged (a random
    head's large gradients would destroy the pretrained features); ``all``: every trainable
    layer at once at ``learning_rate`` (``small_cnn``, a backbone trained from random weights).
    """
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return ["all"]
    if settings.get("fine_tune", "frozen") == "frozen":
        return ["head"]
    if settings.get("backbone_weights") is None:
        return ["all"]
    return ["head", "fine_tune"]


def uses_cached_features(task: BranchFold) -> bool:
    """Whether the trained branch's backbone is still the one its features were cached with
    (a frozen backbone), so its views can be scored from the cache."""
    return task.features is not None and training_phases(task.settings) == ["head"]


def compile_branch(model, learning_rate: float, n_classes: int) -> None:
    """Adam at ``learning_rate``, cross-entropy, accuracy and the streaming kappa."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", CohenKappa(n_classes)],
    )


def initial_branch(task: BranchFold):
    """The branch as training starts: randomly initialised, its backbone holding the configured
    pretrained weights, or with a feature cache exactly the weights the features were computed
    with (checked by hash, so the head learns on the backbone it will run on)."""
    settings = task.settings
    model = build_image_branch(task.modality, task.images.shape[1:], len(task.classes), settings)
    if task.features is None:
        load_backbone_weights(model, task.modality, settings)
        return model
    check_cache_matches(task.features, settings, task.images)
    load_backbone_weights(
        model, task.modality, {**settings, "backbone_weights": str(task.features.backbone)}
    )
    check_backbone(
        model.get_layer(f"{task.modality}_backbone"), task.features.sidecar, task.features.backbone
    )
    return model


def set_phase_trainable(model, modality: str, settings: dict, phase: str) -> None:
    """Freeze the backbone for the ``head`` phase; otherwise train what ``fine_tune`` says."""
    if phase == "head":
        model.get_layer(f"{modality}_backbone").trainable = False
        log.info("Backbone %s frozen: the head trains alone", settings["backbone"])
    else:
        set_fine_tuning(model, modality, settings)


def run_phase(model, task: BranchFold, phase: str, views: tuple, pixels) -> tuple:
    """Train one phase (:func:`training_phases`) with early stopping on the inner split.

    ``views`` is ((fit views, their sample weights), (stop views, theirs)); ``pixels()``
    returns the (fit, stop) arrays of images, labels and weights, read from the image cache the
    first time a phase needs them. The head phase with a feature cache trains
    :func:`feature_head` on the cached features and copies it back into the branch. Returns
    (history, best epoch, what it trained on).
    """
    settings = task.settings
    set_phase_trainable(model, task.modality, settings, phase)
    rate = settings["learning_rate"]
    if phase == "fine_tune":
        rate = settings.get("fine_tune_learning_rate", 1e-5)
    (fit_views, fit_weights), (stop_views, stop_weights) = views
    if phase == "head" and task.features is not None:
        head = feature_head(model, task.modality, seed=task.seed)
        compile_branch(head, rate, len(task.classes))
        fit = FeatureBatches(
            task.features,
            (fit_views["position"].to_numpy(), task.labels(fit_views), fit_weights),
            settings["batch_size"],
            task.seed,
        )
        stop_features = feature_arrays(task.features, stop_views["position"].to_numpy())
        stop = (stop_features, task.labels(stop_views), stop_weights)
        history, best_epoch = fit_with_early_stopping(head, fit, stop, settings)
        copy_head(head, model, task.modality)
        source = "cached features" + (" and their flips" if task.features.sidecar["flip"] else "")
    else:
        compile_branch(model, rate, len(task.classes))
        fit, stop = pixels()
        history, best_epoch = fit_with_early_stopping(model, fit, stop, settings)
        source = "pixels"
    return history, best_epoch, f"{phase} on {source}, learning rate {rate:g}"


def train_branch(task: BranchFold, checkpoint_path: Path, history_path: Path):
    """Train one modality's branch on one outer fold's training visits; return the best model.

    The inner split for early stopping is drawn on visits (patient-grouped), then every view
    of a visit goes where its visit goes. Each phase (:func:`training_phases`) stops early on
    the inner split's loss and restores its best epoch; a fine-tuning phase that does not
    improve on the head phase's best loss gives the head phase's weights back. The weights are
    written, keyed by layer name, once training has finished, and ``history.tsv`` holds every
    epoch with its ``phase`` (1, 2). Returns (model, ``best_epoch`` counted over all phases,
    ``fit_images_per_second``, ``phases``: each phase's epochs and best epoch).
    """
    settings = task.settings
    table = task.rows()
    train = table[table["split"] == "train"].reset_index(drop=True)
    held_out = inner_split(train, settings["validation_fraction"], task.seed)
    fit_rows, stop_rows = train[~held_out], train[held_out]
    class_weights = balanced_class_weights(task.labels(fit_rows))
    fit_views, stop_views = task.views_of(fit_rows), task.views_of(stop_rows)
    log.info(
        "Fold %d, %s: %d training visits (%d views, %d patients), %d held out for early "
        "stopping (%d views, %d patients)",
        task.fold,
        task.modality,
        len(fit_rows),
        len(fit_views),
        fit_rows[GROUP].nunique(),
        len(stop_rows),
        len(stop_views),
        stop_rows[GROUP].nunique(),
    )
    views = (
        (fit_views, task.weights(fit_views, class_weights)),
        (stop_views, task.weights(stop_views, None)),
    )
    loaded = {}

    def pixels():
        # Read from the cache once, and only when a phase trains on pixels.
        if not loaded:
            loaded["arrays"] = tuple((task.pixels(v), task.labels(v), w) for v, w in views)
        return loaded["arrays"]

    model = initial_branch(task)
    if settings.get("standardize"):
        fit_standardization(model, task.modality, task.pixels(fit_views))
    started = time.perf_counter()
    frames, phases, kept, epochs_before = [], [], None, 0
    for number, phase in enumerate(training_phases(settings), start=1):
        history, best_epoch, what = run_phase(model, task, phase, views, pixels)
        best_loss = history.history["val_loss"][best_epoch - 1]
        record = {"phase": number, "name": phase, "epochs": len(history.epoch)}
        record |= {"best_epoch": best_epoch, "best_val_loss": float(best_loss)}
        log.info(
            "Phase %d (%s): %d epochs, best epoch %d (validation loss %.4f)",
            number,
            what,
            record["epochs"],
            best_epoch,
            best_loss,
        )
        if kept is not None and best_loss >= kept["best_val_loss"]:
            model.set_weights(kept["weights"])
            log.info(
                "Phase %d did not improve on phase %d's validation loss (%.4f): phase %d's "
                "weights are kept",
                number,
                kept["phase"],
                kept["best_val_loss"],
                kept["phase"],
            )
        else:
            kept = {**record, "epoch": epochs_before + best_epoch, "weights": model.get_weights()}
        frame = pd.DataFrame(history.history)
        frames.append(frame.assign(epoch=epochs_before + np.arange(len(frame)), phase=number))
        epochs_before += len(frame)
        phases.append(record)
    seconds = time.perf_counter() - started
    images_per_second = sum(len(fit_views) * p["epochs"] for p in phases) / seconds
    log.info("Trained %d epochs at %.0f views/s", epochs_before, images_per_second)
    save_branch_weights(model, task.modality, checkpoint_path)
    history_table = pd.concat(frames, ignore_index=True)
    metrics = sorted(c for c in history_table.columns if c not in ("epoch", "phase"))
    write_tsv(history_table[["epoch", "phase", *metrics]], history_path)
    return model, {
        "best_epoch": kept["epoch"],
        "fit_images_per_second": images_per_second,
        "phases": phases,
    }


def view_probabilities(model, task: BranchFold, visits: pd.DataFrame) -> pd.DataFrame:
    """``view``, ``id``, ``split`` and ``prob_{class}`` of every view of ``visits``: from the
    cached features when the backbone stayed frozen (the head on the features the backbone
    gives), else from the pixels through the whole branch."""
    views = task.views_of(visits)
    positions = views["position"].to_numpy()
    if uses_cached_features(task):
        head = feature_head(model, task.modality)
        features = feature_arrays(task.features, positions)
        probs = head.predict(features, batch_size=task.settings["batch_size"], verbose=0)
    else:
        inputs = {model.input.name: (task.images, positions)}
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


def log_feature_source(task: BranchFold) -> None:
    """State whether the branch's head trains on cached features, and if not, why."""
    if task.settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return
    if task.features is not None:
        log.info(
            "Feature cache: %d views x %d variants x %d features (%s, weights %s, sha256 %s...)",
            *task.features.features.shape,
            task.features.sidecar["backbone"],
            task.features.sidecar["weights_source"] or "randomly initialised",
            task.features.sidecar["backbone_sha256"][:12],
        )
    else:
        reason = no_cache_reason(task.settings) or "none was given to this job"
        log.info("No feature cache for %s: %s; the branch trains on pixels", task.modality, reason)


def train_stage(task: BranchFold, checkpoint_path: Path, history_path: Path, threads: int):
    """An image job, fold or final: configure TensorFlow, train the branch alone, predict every
    view; return (model, visit probabilities, view probabilities, the job's record: best epoch,
    training throughput and how TensorFlow ran)."""
    runtime = configure_tensorflow(task.settings["intra_op_threads"], threads, task.seed)
    log_feature_source(task)
    model, fit = train_branch(task, checkpoint_path, history_path)
    probs, view_probs = branch_probabilities(model, task)
    warn_if_collapsed(probs, task.classes, fit["best_epoch"], task.modality)
    return model, probs, view_probs, {**fit, "runtime": {"threads": threads, **runtime}}
