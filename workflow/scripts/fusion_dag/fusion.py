"""Fusion of branch probabilities with fixed weights (the V3 contract).

Why fixed weights: a fusion layer that learns its weights, or an image branch trained inside
the fusion model, overfits the training rows (train kappa 0.96, validation 0.02 in the original
study). V3 fuses ``w * metadata + (1 - w) * image`` with ``w`` from the config and no gradient step;
several image modalities share ``1 - w`` equally. With ``fusion.learn`` the weights (and a
temperature) are chosen per fold on outer-training visits scored out of sample
(:mod:`fusion_dag.learn`), then fused here the same way: no gradient step either.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, prob_columns, read_json, read_tsv
from fusion_dag.checkpoint import CheckpointError, load_frozen_branch, verify_sidecar
from fusion_dag.features import FeatureCache, check_backbone, feature_arrays, input_feature_cache
from fusion_dag.views import visit_means
from fusion_dag.weights import METADATA, aligned_probs, shared_rows

log = logging.getLogger(__name__)

# The files of one image member a fusion job reads: its checkpoint, sidecar and visit
# probabilities, and (to fuse it with another member) its per-view probabilities, its image
# cache and the cache's views, and its feature cache (features, sidecar, backbone) when it has one.
MEMBER_FILES = (
    "checkpoint",
    "sidecar",
    "probs",
    "view_probs",
    "cache",
    "views",
    "features",
    "features_sidecar",
    "features_backbone",
)


def build_fusion_model(members: list, n_classes: int, weights: dict):
    """The fixed-weight fusion of the members' visit probabilities: one input per member
    (``metadata_probs``, ``{modality}_probs``), each scaled by its weight (a ``Rescaling``
    layer: a constant, not a variable) and added (``fusion_add``). Nothing in it trains.

    The image branches are separate frozen models (:func:`fuse_v3`): a branch scores views, a
    visit's image probability is its views' mean, and only then are visits fused.
    """
    import keras
    from keras import layers

    inputs, terms = [], []
    for member in members:
        name = "metadata_probs" if member == METADATA else f"{member}_probs"
        probs = keras.Input(shape=(n_classes,), name=name)
        inputs.append(probs)
        terms.append(layers.Rescaling(weights[member], name=f"fusion_weight_{member}")(probs))
    fused = layers.Add(name="fusion_add")(terms) if len(terms) > 1 else terms[0]
    return keras.Model(inputs, fused, name="fusion_v3")


REPRODUCTION_TOLERANCE = 1e-5
# Views a branch with a feature cache scores from pixels too, spread over the views in order:
# its head already reproduces every view from the cached features; these prove the whole loaded
# branch (backbone included) gives the same probabilities from the images.
PIXEL_CHECK_VIEWS = 8


@dataclass(frozen=True)
class ImageMember:
    """What a fusion job needs of one pretrained image branch.

    ``probs`` is the image stage's visit probability table; ``checkpoint`` and ``sidecar`` the
    branch's weights file and its sidecar record; ``settings`` the modality's image settings the
    branch is rebuilt from (``backbone``, ``augmentation``, ``mixed_precision``). ``images``
    (the memory-mapped cache), ``views`` (its views table, row i is image i) and
    ``view_probs`` (the image stage's per-view probabilities) are there only when the branch
    is fused with another member: an image alone needs no pixels. ``features`` is the
    modality's feature cache when its branch has one (frozen backbone).
    """

    probs: pd.DataFrame
    checkpoint: Path
    sidecar: dict
    settings: dict
    images: np.ndarray | None = None
    views: pd.DataFrame | None = None
    view_probs: pd.DataFrame | None = None
    features: FeatureCache | None = None


def read_image_member(files: dict, settings: dict) -> ImageMember:
    """An :class:`ImageMember` from its files (``MEMBER_FILES`` -> path; ``view_probs``,
    ``cache``, ``views`` and the feature cache's files may be None)."""
    images = views = view_probs = None
    if files.get("cache"):
        from fusion_dag.cache import load_cache

        images, views = load_cache(files["cache"], files["views"])
        view_probs = read_tsv(files["view_probs"])
    features = input_feature_cache(files)
    return ImageMember(
        probs=read_tsv(files["probs"]),
        checkpoint=Path(files["checkpoint"]),
        sidecar=read_json(files["sidecar"]),
        settings=settings,
        images=images,
        views=views,
        view_probs=view_probs,
        features=features,
    )


def tensorflow_runtime(members: list, settings: dict, threads: int) -> dict | None:
    """Configure TensorFlow when fusing ``members`` builds a Keras model (an image branch meets
    another member); return the runtime settings, or None when no model is built.

    A member alone passes its probabilities through, so those jobs never start TensorFlow.
    ``settings`` holds the job's ``intra_op_threads`` and ``seed``; ``threads`` its Snakemake
    threads.
    """
    if len(members) == 1 or all(member == METADATA for member in members):
        return None
    from fusion_dag.branch import configure_tensorflow

    runtime = configure_tensorflow(settings["intra_op_threads"], threads, settings["seed"])
    return {"threads": threads, **runtime}


def reproduction_check(outputs: np.ndarray, expected: np.ndarray, modality: str, what: str):
    """Log and enforce the V3 check: recomputed probabilities equal the image stage's per view
    (<= :data:`REPRODUCTION_TOLERANCE`)."""
    difference = float(np.abs(outputs - expected).max())
    log.info(
        "Frozen %s branch reproduces the image stage on %d views: max abs diff %.2e (%s)",
        modality,
        len(outputs),
        difference,
        what,
    )
    if difference > REPRODUCTION_TOLERANCE:
        raise CheckpointError(
            f"frozen {modality} branch differs from the image stage's per-view probabilities "
            f"{what} by {difference:.2e} (> {REPRODUCTION_TOLERANCE:g}); retrain the image stage"
        )


def frozen_visit_probs(modality: str, member: ImageMember, required: dict, batch_size: int):
    """The visit probabilities of a pretrained branch, recomputed by the frozen branch.

    The branch is rebuilt as the image stage built it, verified, loaded by layer name and
    frozen (:func:`~fusion_dag.checkpoint.load_frozen_branch`); every view the image stage
    scored is scored again and must reproduce the stage's per-view probabilities; then each
    visit's views are averaged, as the image stage averaged them. Views are read from the
    image cache a batch at a time, or, with a feature cache, the loaded backbone's weights must
    equal the cache's by hash, the loaded head scores every view from the cached features, and
    :data:`PIXEL_CHECK_VIEWS` views also go through the whole branch from pixels.
    """
    from fusion_dag.branch import build_image_branch, feature_head
    from fusion_dag.image import CachedBatches

    classes = required["classes"]
    columns = prob_columns(classes)
    branch = build_image_branch(modality, member.images.shape[1:], len(classes), member.settings)
    branch_required = {**required, "backbone": member.settings["backbone"]}
    load_frozen_branch(branch, modality, member.checkpoint, member.sidecar, branch_required)
    if branch.trainable_weights:
        raise RuntimeError(
            f"{modality} branch has {len(branch.trainable_weights)} trainable weights"
        )
    position = pd.Series(np.arange(len(member.views)), index=member.views["view"].to_numpy())
    rows = position[member.view_probs["view"]].to_numpy()
    expected = member.view_probs[columns].to_numpy()
    if member.features is None:
        batches = CachedBatches({f"{modality}_input": (member.images, rows)}, batch_size)
        outputs = branch.predict(batches, verbose=0)
        reproduction_check(outputs, expected, modality, "from pixels")
    else:
        check_backbone(
            branch.get_layer(f"{modality}_backbone"), member.features.sidecar, member.checkpoint
        )
        head = feature_head(branch, modality)
        features = feature_arrays(member.features, rows)
        outputs = head.predict(features, batch_size=batch_size, verbose=0)
        reproduction_check(outputs, expected, modality, "from cached features")
        spot = np.unique(np.linspace(0, len(rows) - 1, PIXEL_CHECK_VIEWS).round().astype(int))
        pixels = {f"{modality}_input": np.asarray(member.images[rows[spot]])}
        from_pixels = branch.predict(pixels, verbose=0)
        reproduction_check(from_pixels, expected[spot], modality, "from pixels, whole branch")
    recomputed = member.view_probs[["view", ID, "split"]].copy()
    recomputed[columns] = outputs
    return visit_means(recomputed, columns)


def fuse_v3(
    weights: dict,
    metadata_probs: pd.DataFrame | None,
    image_members: dict,
    required: dict,
    batch_size: int,
) -> pd.DataFrame:
    """Fuse with frozen pretrained image branches and fixed weights; no gradient step.

    ``image_members`` maps each modality to its :class:`ImageMember` (with its cache);
    ``required`` is what the checkpoints' sidecars must say (``repeat``, ``fold``,
    ``classes``). Each branch is loaded frozen and must reproduce the image stage per view
    (:func:`frozen_visit_probs`); the visits present in every member are then fused by the
    fixed-weight :func:`build_fusion_model`.
    """
    classes = required["classes"]
    columns = prob_columns(classes)
    visit_probs = {
        modality: frozen_visit_probs(modality, member, required, batch_size)
        for modality, member in image_members.items()
    }
    tables = dict(visit_probs)
    if metadata_probs is not None:
        tables = {METADATA: metadata_probs, **tables}
    keys = shared_rows(list(tables.values()))
    model = build_fusion_model(list(tables), len(classes), weights)
    if model.trainable_weights:
        raise RuntimeError(f"fusion model has {len(model.trainable_weights)} trainable weights")
    inputs = {
        ("metadata_probs" if member == METADATA else f"{member}_probs"): aligned_probs(
            keys, table, columns
        )
        for member, table in tables.items()
    }
    log_weights(weights)
    result = keys.copy()
    result[columns] = model.predict(inputs, batch_size=batch_size, verbose=0)
    return result


def image_alone(modality: str, member: ImageMember, required: dict) -> pd.DataFrame:
    """A combination of one image: its probabilities are the image stage's.

    There is nothing to fuse, so no model is built; the checkpoint those probabilities came
    from is still checked against its sidecar (bytes, modality, repeat, fold, classes,
    backbone), as every fusion job checks its inputs.
    """
    branch_required = {"modality": modality, **required, "backbone": member.settings["backbone"]}
    verify_sidecar(member.checkpoint, member.sidecar, branch_required)
    log.info("%s alone: the image stage's probabilities (checkpoint matches its sidecar)", modality)
    log_weights({modality: 1.0})
    return member.probs


def log_weights(weights: dict) -> None:
    """The contract's ``Fusion weights: RF=0.70, Image=0.30`` line, then every member's weight.

    ``Image`` is the sum of the image members' own configured weights (not ``1 - RF``), so a
    wrong image weight shows in the log.
    """
    metadata = weights.get(METADATA, 0.0)
    image = sum(w for member, w in weights.items() if member != METADATA)
    members = ", ".join(f"{member}={w:.2f}" for member, w in weights.items())
    log.info("Fusion weights: RF=%.2f, Image=%.2f (%s)", metadata, image, members)


def fuse_combination(
    weights: dict,
    metadata_probs: pd.DataFrame | None,
    image_members: dict,
    required: dict,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """One fusion job's probabilities, fold or final, from plain values.

    ``weights`` maps each member to its weight; ``metadata_probs`` is the forest's probability
    table (None without metadata); ``image_members`` maps each image member to its
    :class:`ImageMember`; ``required`` is what each sidecar must say (repeat, fold, classes).
    Metadata alone passes its probabilities through, an image alone its image stage's after
    the sidecar check; anything else is fused with frozen branches by :func:`fuse_v3`.
    """
    if not image_members:
        log_weights(weights)
        return metadata_probs
    if metadata_probs is None and len(image_members) == 1:
        ((modality, member),) = image_members.items()
        return image_alone(modality, member, required)
    return fuse_v3(weights, metadata_probs, image_members, required, batch_size)
