"""Building an image branch: the TensorFlow runtime, the layers and the weights it starts from.

Why apart from training (:mod:`fusion_dag.image`): the feature cache, the fusion stage, the
heatmaps, the ablation and a prediction build the same branch, layer for layer, without
training it; they need the builder, not the splits, batches and phases.

A branch is, in order: the image input (uint8 values 0-255 from the cache), optional
augmentation layers (active in ``fit`` only), the backbone's own preprocessing, the backbone
(``small_cnn`` or one nested ``keras.applications`` model named ``{modality}_backbone``), and a
pooling, dropout and softmax head. Every layer is named ``{modality}_...``: the names are the
contract with the fusion stage, which loads the branch by layer name.
"""

import logging
import os
from contextlib import contextmanager

import numpy as np

# TensorFlow's C++ start-up notices are not job output; this must be set before it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from fusion_dag.backbones import BACKBONES, SMALL_CNN

log = logging.getLogger(__name__)

FILTERS = (16, 32, 64)
DROPOUT = 0.3
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
    "pooling": "average",
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
    """Set the branch's ``{modality}_standardize`` layer to the per-channel mean and standard
    deviation of ``images`` (uint8, the training views), on the 0-1 scale.

    Why the training views only: the statistics are part of the model, so they must not see
    the visits it is judged on. Why in chunks: the views may be a large memory-mapped cache."""
    layer = model.get_layer(f"{modality}_standardize")
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
    ``mixed_precision``, ``backbone_weights``, ``standardize``, ``batch_norm``, ``pooling``;
    absent keys take :data:`BRANCH_DEFAULTS`).

    Why ``pooling: flatten`` for the small CNN: global average pooling makes the branch blind
    to where in the crop a pattern sits, but a crop is centred on its wound box, so position
    is information (the wound's core against its rim and the skin around it). On the faint
    thermal views the averaged branch underfit (training kappa about 0.15) where flattening
    the last feature map learned in a few epochs (bench/plateau.py). A keras.applications
    backbone always averages: its pooled features are what the feature cache holds.

    The weights are randomly initialised: pretrained backbone weights are loaded by
    :func:`load_backbone_weights`, a trained branch by the checkpoint loader, the
    standardisation by :func:`fit_standardization`. ``seed`` seeds the head's dropout
    (:func:`branch_head`).
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
        if settings["backbone"] == SMALL_CNN and settings["pooling"] == "flatten":
            x = layers.Flatten(name=f"{modality}_flatten")(x)
        else:
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
