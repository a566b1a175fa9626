"""Fusion of branch probabilities with fixed weights (the V3 contract).

Why fixed weights: a fusion layer that learns its weights, or an image branch trained inside
the fusion model, overfits the training rows (train kappa 0.96, validation 0.02 in the original
study). V3 fuses ``w * metadata + (1 - w) * image`` with ``w`` from the config and no gradient step;
several image modalities share ``1 - w`` equally.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, prob_columns, read_json, read_tsv
from fusion_dag.checkpoint import CheckpointError, load_frozen_branch, verify_sidecar
from fusion_dag.weights import METADATA

log = logging.getLogger(__name__)

# The files of one image member a fusion job reads: its checkpoint, sidecar and probabilities,
# and (to fuse it with another member) its image cache and the cache's ids.
MEMBER_FILES = ("checkpoint", "sidecar", "probs", "cache", "ids")


def build_fusion_model(branches: dict, n_classes: int, weights: dict):
    """Image branches plus a ``metadata_probs`` input, combined by fixed weights.

    ``branches`` maps each image member to (image shape, its image settings), so each branch
    is rebuilt exactly as the image stage built it. Each weight is a ``Rescaling`` layer (a
    constant, not a variable) and the terms are added, so the model has nothing a gradient
    step could change once the branches are frozen. The model outputs the fused probabilities
    (``fused``) and each branch's own probabilities (``{modality}``), so one pass both fuses and
    checks the branches against the image stage.
    """
    import keras
    from keras import layers

    from fusion_dag.image import build_image_branch

    inputs, terms, outputs = [], [], {}
    if METADATA in weights:
        metadata_probs = keras.Input(shape=(n_classes,), name="metadata_probs")
        inputs.append(metadata_probs)
        scaled = layers.Rescaling(weights[METADATA], name="fusion_weight_metadata")
        terms.append(scaled(metadata_probs))
    for modality, (image_shape, settings) in branches.items():
        branch = build_image_branch(modality, image_shape, n_classes, settings)
        inputs.append(branch.input)
        outputs[modality] = branch.output
        scaled = layers.Rescaling(weights[modality], name=f"fusion_weight_{modality}")
        terms.append(scaled(branch.output))
    outputs["fused"] = layers.Add(name="fusion_add")(terms) if len(terms) > 1 else terms[0]
    return keras.Model(inputs, outputs, name="fusion_v3")


REPRODUCTION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ImageMember:
    """What a fusion job needs of one pretrained image branch.

    ``probs`` is the image stage's probability table; ``checkpoint`` and ``sidecar`` the
    branch's weights file and its sidecar record; ``settings`` the modality's image settings the
    branch is rebuilt from (``backbone``, ``augmentation``, ``mixed_precision``). ``images`` (the
    memory-mapped cache) and ``positions`` (the cache row of each id) are there only when the
    branch is fused with another member: an image alone needs no pixels.
    """

    probs: pd.DataFrame
    checkpoint: Path
    sidecar: dict
    settings: dict
    images: np.ndarray | None = None
    positions: pd.Series | None = None


def read_image_member(files: dict, settings: dict) -> ImageMember:
    """An :class:`ImageMember` from its files (``MEMBER_FILES`` -> path; ``cache`` and ``ids``
    may be None)."""
    images = positions = None
    if files.get("cache"):
        from fusion_dag.cache import load_cache

        images, positions = load_cache(files["cache"], files["ids"])
    return ImageMember(
        probs=read_tsv(files["probs"]),
        checkpoint=Path(files["checkpoint"]),
        sidecar=read_json(files["sidecar"]),
        settings=settings,
        images=images,
        positions=positions,
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
    from fusion_dag.image import configure_tensorflow

    runtime = configure_tensorflow(settings["intra_op_threads"], threads, settings["seed"])
    return {"threads": threads, **runtime}


def shared_rows(tables: list) -> pd.DataFrame:
    """``id`` and ``split`` of the rows present in every table (an image may drop rows)."""
    keys = tables[0][[ID, "split"]]
    for table in tables[1:]:
        keys = keys.merge(table[[ID, "split"]], on=[ID, "split"], validate="one_to_one")
    return keys.reset_index(drop=True)


def aligned_probs(keys: pd.DataFrame, table: pd.DataFrame, columns: list) -> np.ndarray:
    """A probability table's columns in the row order of ``keys``."""
    return keys.merge(table, on=[ID, "split"], how="left")[columns].to_numpy(dtype="float32")


def weighted_sum(tables: dict, weights: dict, classes: list) -> pd.DataFrame:
    """``sum_m weights[m] * tables[m]`` on the rows every member's table has.

    The V3 fusion computed from probability tables, with no model: used for the members'
    in-sample probabilities, whose fused kappa is the combination's ``fit_kappa``.
    """
    columns = prob_columns(classes)
    keys = shared_rows(list(tables.values()))
    result = keys.copy()
    result[columns] = sum(weights[m] * aligned_probs(keys, t, columns) for m, t in tables.items())
    return result


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
    ``classes``). Each branch is verified, loaded by layer name and frozen
    (:func:`~fusion_dag.checkpoint.load_frozen_branch`), and must reproduce the image stage's
    probabilities. Rows present in every member are fused; images are read from the caches a
    batch at a time.
    """
    from fusion_dag.image import CachedBatches

    classes = required["classes"]
    columns = prob_columns(classes)
    tables = [m.probs for m in image_members.values()]
    keys = shared_rows(tables if metadata_probs is None else [metadata_probs, *tables])
    branches = {
        m: (member.images.shape[1:], member.settings) for m, member in image_members.items()
    }
    model = build_fusion_model(branches, len(classes), weights)
    model_inputs = {}
    for modality, member in image_members.items():
        branch_required = {**required, "backbone": member.settings["backbone"]}
        load_frozen_branch(model, modality, member.checkpoint, member.sidecar, branch_required)
        rows = member.positions[keys[ID]].to_numpy()
        model_inputs[f"{modality}_input"] = (member.images, rows)
    if model.trainable_weights:
        raise CheckpointError(f"fusion model has {len(model.trainable_weights)} trainable weights")
    if metadata_probs is not None:
        model_inputs["metadata_probs"] = (
            aligned_probs(keys, metadata_probs, columns),
            np.arange(len(keys)),
        )
    log_weights(weights)
    outputs = model.predict(CachedBatches(model_inputs, batch_size), verbose=0)
    for modality, member in image_members.items():
        stage_probs = aligned_probs(keys, member.probs, columns)
        difference = float(np.abs(outputs[modality] - stage_probs).max())
        log.info(
            "Frozen %s branch reproduces the image stage: max abs diff %.2e", modality, difference
        )
        if difference > REPRODUCTION_TOLERANCE:
            raise CheckpointError(
                f"frozen {modality} branch differs from the image stage's probabilities by "
                f"{difference:.2e} (> {REPRODUCTION_TOLERANCE:g}); retrain the image stage"
            )
    result = keys.copy()
    result[columns] = outputs["fused"]
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
