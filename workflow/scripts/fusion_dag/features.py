"""The feature cache: a frozen backbone's pooled features of every view, computed once.

Why a stage of its own: a frozen ``keras.applications`` backbone is a fixed function of the
image. Its features depend on neither the fold, the repeat nor the epoch, yet an image job that
trains on pixels runs the backbone's full forward pass over every training view in every epoch
of every fold. keras.io's transfer-learning guide computes the features once and trains the head
on them; the ``features`` rule does so per modality, and every image job of that modality
(folds, repeats, final model; phase 1 of fine-tuning) trains its head on the cached features.

What can be cached: the pixels entering the backbone must be fixed. With no augmentation they
are; with ``{flip: horizontal}`` there are exactly two (the view and its mirror image), so both
are cached and a flip is drawn per view per epoch, as ``RandomFlip`` would draw it. Any other
augmentation (rotation, zoom, contrast, vertical flips) transforms the pixels differently every
epoch: those branches train on pixels and their image jobs log why (:func:`no_cache_reason`).

The cache is ``features.npy`` (float32, views x variants x feature dimension, memory-mapped
like the image cache), the backbone's weights it was computed with (``backbone.weights.h5``,
so every image job starts from exactly those, random initialisations included) and a sidecar
recording the backbone, its weights source, a SHA-256 of each of its layers' weights, the size,
channels, preprocessing and flip.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion_dag.artifacts import file_sha256, mapped_array, partial_path, read_json
from fusion_dag.backbones import BACKBONES, SMALL_CNN
from fusion_dag.checkpoint import CheckpointError

log = logging.getLogger(__name__)

# The one augmentation whose pixels are a fixed set (a view and its mirror image).
FLIP_ONLY = {"flip": "horizontal"}
# Views per batch when features are computed: fixed, so that no fold setting (batch_size) can
# change the cached numbers.
FEATURE_BATCH = 32
FORMAT = "fusion-dag-features/1"


class FeatureCacheError(CheckpointError):
    """A feature cache that does not belong to the branch that uses it (or a branch whose
    backbone is not the one the cache was computed with)."""


def active_augmentation(settings: dict) -> dict:
    """The configured augmentation without its null entries."""
    return {key: value for key, value in (settings.get("augmentation") or {}).items() if value}


def no_cache_reason(settings: dict) -> str | None:
    """Why a modality's branch trains on pixels instead of cached features; None when it can
    use a feature cache (a ``keras.applications`` backbone, ``feature_cache: true``, fixed
    pixels, float32 compute, and fixed weights: pretrained, or frozen when random)."""
    augmentation = active_augmentation(settings)
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return "small_cnn trains all its layers, so its features change every step"
    if not settings.get("feature_cache", True):
        return "feature_cache is false"
    if settings.get("backbone_weights") is None and settings.get("fine_tune") != "frozen":
        return (
            f"a backbone trained from random weights (backbone_weights null, fine_tune "
            f"{settings.get('fine_tune')}) has no fixed features to cache"
        )
    if settings.get("mixed_precision"):
        return "mixed_precision computes the backbone in float16; features are cached in float32"
    if augmentation and augmentation != FLIP_ONLY:
        return (
            f"augmentation {augmentation} transforms the pixels differently in every epoch, so "
            "the backbone's features are no fixed function of the view (only {flip: horizontal} "
            "can be cached: the view and its mirror image)"
        )
    return None


def flips(settings: dict) -> bool:
    """Whether a cached branch also needs the features of each view's horizontal flip."""
    return active_augmentation(settings) == FLIP_ONLY


def layer_hashes(backbone) -> list:
    """[position, name, SHA-256] of each weighted layer of a nested backbone (weights in layer
    order, shapes included), so a changed weight is named by its layer. Layers are matched by
    position: Keras numbers the names of unnamed inner layers per process (a second
    EfficientNet in one fusion job has ``normalization_1``), the architecture fixes the order."""
    hashes = []
    for position, layer in enumerate(backbone.layers):
        if not layer.weights:
            continue
        digest = hashlib.sha256()
        for weight in layer.weights:
            value = np.ascontiguousarray(np.asarray(weight))
            digest.update(str(value.shape).encode())
            digest.update(value.tobytes())
        hashes.append([position, layer.name, digest.hexdigest()])
    return hashes


def combined_hash(hashes: list) -> str:
    """One SHA-256 of a backbone's layer hashes in order (the sidecar's ``backbone_sha256``)."""
    return hashlib.sha256("".join(digest for _, _, digest in hashes).encode()).hexdigest()


def compute_features(extractor, images: np.ndarray, flip: bool, target: np.ndarray) -> None:
    """Fill ``target`` (views x variants x dimension) with ``extractor``'s outputs on every
    image (variant 0) and, with ``flip``, on its horizontal mirror image (variant 1: the
    width axis reversed, what ``RandomFlip("horizontal")`` does to a view), a fixed number of
    views at a time. Logs progress every tenth of the views."""
    n_views = len(images)
    batches_per_report = max(1, -(-n_views // (10 * FEATURE_BATCH)))
    for number, start in enumerate(range(0, n_views, FEATURE_BATCH), start=1):
        batch = np.asarray(images[start : start + FEATURE_BATCH], dtype="float32")
        target[start : start + len(batch), 0] = extractor.predict_on_batch(batch)
        if flip:
            target[start : start + len(batch), 1] = extractor.predict_on_batch(batch[:, :, ::-1])
        if number % batches_per_report == 0 or start + len(batch) == n_views:
            log.info("Features of %d of %d views", start + len(batch), n_views)


def build_feature_cache(images, modality: str, n_classes: int, settings: dict, paths: dict):
    """The features job: build the branch as the image jobs build it, give its backbone the
    configured weights (pretrained, or a seeded random initialisation), and write the cache
    (:func:`write_feature_cache`); return its sidecar.

    ``settings`` needs ``backbone``, ``backbone_weights`` and ``augmentation``. The branch
    module is imported here, not at the top, because it loads TensorFlow: the image and fusion
    jobs import this module before their job log holds stderr, and only the features job
    calls this function.
    """
    from fusion_dag.branch import build_image_branch, feature_extractor, load_backbone_weights

    branch_settings = {**settings, "mixed_precision": False}
    branch = build_image_branch(modality, images.shape[1:], n_classes, branch_settings)
    load_backbone_weights(branch, modality, branch_settings)
    backbone = branch.get_layer(f"{modality}_backbone")
    return write_feature_cache(
        feature_extractor(branch, modality),
        backbone,
        images,
        settings,
        paths,
        BACKBONES[settings["backbone"]],
    )


def write_feature_cache(
    extractor, backbone, images, settings: dict, paths: dict, preprocessing: str
):
    """Compute and write a modality's feature cache; return its sidecar.

    ``paths`` names ``features`` (.npy), ``backbone`` (.weights.h5) and ``sidecar`` (.json);
    ``extractor`` maps the branch's image input to its pooled features and ``backbone`` is its
    nested backbone, already holding the weights the image jobs must use; ``preprocessing``
    the ``keras.applications`` module whose ``preprocess_input`` the branch applies. Every file
    is written under a temporary name and renamed, so a failed job leaves no cache behind.
    """
    flip = flips(settings)
    dimension = int(extractor.output.shape[-1])
    features_partial = partial_path(paths["features"])
    target = np.lib.format.open_memmap(
        features_partial, mode="w+", dtype=np.float32, shape=(len(images), 1 + flip, dimension)
    )
    compute_features(extractor, images, flip, target)
    target.flush()
    del target
    backbone_partial = Path(paths["backbone"]).with_name("partial." + Path(paths["backbone"]).name)
    backbone.save_weights(str(backbone_partial))
    hashes = layer_hashes(backbone)
    sidecar = {
        "format": FORMAT,
        "backbone": settings["backbone"],
        "weights_source": settings.get("backbone_weights"),
        "backbone_sha256": combined_hash(hashes),
        "layer_sha256": hashes,
        "size": int(images.shape[1]),
        "channels": int(images.shape[-1]),
        "preprocessing": preprocessing,
        "flip": flip,
        "views": len(images),
        "dimension": dimension,
        "features_sha256": file_sha256(features_partial),
    }
    os.replace(features_partial, paths["features"])
    os.replace(backbone_partial, paths["backbone"])
    partial = partial_path(paths["sidecar"])
    partial.write_text(json.dumps(sidecar, indent=2))
    os.replace(partial, paths["sidecar"])
    return sidecar


@dataclass(frozen=True)
class FeatureCache:
    """A modality's cached features (memory-mapped), its sidecar and its backbone's weights
    file."""

    features: np.ndarray
    sidecar: dict
    backbone: Path | None = None


# The sidecar's hashes: of the features file, and of the backbone they were computed with.
FEATURE_HASHES = ("features_sha256", "backbone_sha256", "layer_sha256")


def load_feature_cache(features: Path, sidecar: Path, backbone: Path | None = None):
    """Memory-map a feature cache and read its sidecar; refuse features that are not the
    ones the sidecar describes: a file cut short, another shape, other bytes than its recorded
    hash, or a sidecar without its hashes."""
    rebuild = f"delete {features} and run again to recompute it (rule features)"
    record = read_json(sidecar)
    missing = [key for key in FEATURE_HASHES if key not in record]
    if missing:
        raise FeatureCacheError(
            f"feature cache sidecar {sidecar} records no {', '.join(missing)}; {rebuild}"
        )
    array = mapped_array(features, "feature cache", rebuild, FeatureCacheError)
    expected = (record.get("views"), 1 + bool(record.get("flip")), record.get("dimension"))
    if array.shape != expected:
        raise FeatureCacheError(
            f"feature cache {features} has shape {array.shape}, its sidecar {sidecar} "
            f"describes {expected}; {rebuild}"
        )
    actual = file_sha256(features)
    if actual != record["features_sha256"]:
        raise FeatureCacheError(
            f"feature cache {features} has sha256 {actual[:12]}..., its sidecar {sidecar} says "
            f"{str(record['features_sha256'])[:12]}...; {rebuild}"
        )
    return FeatureCache(array, record, Path(backbone) if backbone else None)


def input_feature_cache(inputs) -> FeatureCache | None:
    """The feature cache a job's inputs name (``features``, ``features_sidecar``,
    ``features_backbone``), or None when its modality has none."""
    if not inputs.get("features"):
        return None
    return load_feature_cache(
        inputs.get("features"), inputs.get("features_sidecar"), inputs.get("features_backbone")
    )


def check_cache_matches(cache: FeatureCache, settings: dict, images: np.ndarray) -> None:
    """Refuse a feature cache made for another backbone, weights source, size, channel count,
    flip or number of views than the branch that is about to use it."""
    sidecar = cache.sidecar
    wanted = {
        "backbone": settings["backbone"],
        "weights_source": settings.get("backbone_weights"),
        "size": int(images.shape[1]),
        "channels": int(images.shape[-1]),
        "flip": flips(settings),
        "views": len(images),
    }
    problems = [
        f"{key} is {sidecar.get(key)!r}, the branch needs {value!r}"
        for key, value in wanted.items()
        if sidecar.get(key) != value
    ]
    if problems:
        raise FeatureCacheError("feature cache refused: " + "; ".join(problems))


def check_backbone(backbone, sidecar: dict, checkpoint) -> None:
    """The V3 check with a cache, part 1: the loaded branch's backbone weights must equal, by
    hash, those the features were computed with; a difference names the backbone's layers."""
    found = {position: digest for position, _, digest in layer_hashes(backbone)}
    expected = {position: digest for position, _, digest in sidecar["layer_sha256"]}
    changed = sorted(p for p in set(found) | set(expected) if found.get(p) != expected.get(p))
    if changed:
        names = [backbone.layers[p].name if p < len(backbone.layers) else f"#{p}" for p in changed]
        shown = ", ".join(f"{backbone.name}/{name}" for name in names[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise FeatureCacheError(
            f"checkpoint {checkpoint}: backbone weights differ from those the cached features "
            f"were computed with, in layer {shown}{more}; re-run the image stage"
        )
    log.info(
        "Backbone weights of %s equal the feature cache's by hash (%s..., %d layers)",
        backbone.name,
        sidecar["backbone_sha256"][:12],
        len(found),
    )


def feature_arrays(cache: FeatureCache, positions: np.ndarray) -> np.ndarray:
    """The unflipped features of the views at ``positions`` (for prediction and early
    stopping), in that order."""
    return np.asarray(cache.features[positions, 0])
