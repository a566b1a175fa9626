"""Fusion of branch probabilities with fixed weights (the V3 contract).

Why fixed weights: a fusion layer that learns its weights, or an image branch trained inside
the fusion model, overfits the training rows (train kappa 0.96, validation 0.02 in the original
study). V3 fuses ``w * rf + (1 - w) * image`` with ``w`` from the config and no gradient step;
several image modalities share ``1 - w`` equally.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, read_json, read_tsv
from fusion_dag.checkpoint import (
    CheckpointError,
    branch_layers,
    layer_label,
    load_branch_weights,
    verify_checkpoint,
    verify_sidecar,
)
from fusion_dag.weights import METADATA


def build_fusion_model(branches: dict, n_classes: int, weights: dict):
    """Image branches plus an ``rf_probs`` input, combined by fixed weights.

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
        rf_probs = keras.Input(shape=(n_classes,), name="rf_probs")
        inputs.append(rf_probs)
        terms.append(layers.Rescaling(weights[METADATA], name="fusion_weight_metadata")(rf_probs))
    for modality, (image_shape, settings) in branches.items():
        branch = build_image_branch(modality, image_shape, n_classes, settings)
        inputs.append(branch.input)
        outputs[modality] = branch.output
        scaled = layers.Rescaling(weights[modality], name=f"fusion_weight_{modality}")
        terms.append(scaled(branch.output))
    outputs["fused"] = layers.Add(name="fusion_add")(terms) if len(terms) > 1 else terms[0]
    return keras.Model(inputs, outputs, name="fusion_v3")


def freeze_branch(model, modality: str, log) -> None:
    """Make every layer of the branch non-trainable and prove no weight is left trainable."""
    for layer in branch_layers(model, modality):
        layer.trainable = False
        log.info("Frozen layer: %s", layer_label(layer))
    trainable = sum(len(layer.trainable_weights) for layer in branch_layers(model, modality))
    if trainable:
        raise CheckpointError(f"{modality} branch still has {trainable} trainable weights")


REPRODUCTION_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ImageMember:
    """What the fusion job needs of one pretrained image branch.

    ``images`` is the memory-mapped cache and ``positions`` the cache row of each id; ``probs``
    the image stage's probability table; ``checkpoint`` and ``manifest`` the branch's weights
    file and its sidecar record; ``settings`` the modality's image settings the branch is
    rebuilt from (``backbone``, ``augmentation``, ``mixed_precision``).
    """

    images: np.ndarray
    positions: pd.Series
    probs: pd.DataFrame
    checkpoint: Path
    manifest: dict
    settings: dict


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
    columns = [f"prob_{c}" for c in classes]
    keys = shared_rows(list(tables.values()))
    result = keys.copy()
    result[columns] = sum(weights[m] * aligned_probs(keys, t, columns) for m, t in tables.items())
    return result


def fuse_v3(
    weights: dict,
    rf_probs: pd.DataFrame | None,
    image_members: dict,
    expected: dict,
    batch_size: int,
    log,
) -> pd.DataFrame:
    """Fuse with frozen pretrained image branches and fixed weights; no gradient step.

    ``image_members`` maps each modality to its :class:`ImageMember`; ``expected`` is what the
    checkpoints' sidecars must say (``fold``, ``classes``). Each checkpoint is verified, loaded
    by layer name, frozen, and must reproduce the image stage's probabilities. Rows present in
    every member are fused; images are read from the caches a batch at a time.
    """
    from fusion_dag.image import CachedBatches

    classes = expected["classes"]
    columns = [f"prob_{c}" for c in classes]
    tables = [m.probs for m in image_members.values()]
    keys = shared_rows(tables if rf_probs is None else [rf_probs, *tables])
    branches = {
        m: (member.images.shape[1:], member.settings) for m, member in image_members.items()
    }
    model = build_fusion_model(branches, len(classes), weights)
    model_inputs = {}
    for modality, member in image_members.items():
        needed = {**expected, "backbone": member.settings["backbone"]}
        verify_checkpoint(model, modality, member.checkpoint, member.manifest, needed)
        log.info(
            "Checkpoint %s matches its sidecar (sha256 %s)",
            member.checkpoint,
            member.manifest["sha256"],
        )
        load_branch_weights(model, modality, member.checkpoint, log)
        freeze_branch(model, modality, log)
        rows = member.positions[keys[ID]].to_numpy()
        model_inputs[f"{modality}_input"] = (member.images, rows)
    if model.trainable_weights:
        raise CheckpointError(f"fusion model has {len(model.trainable_weights)} trainable weights")
    if rf_probs is not None:
        model_inputs["rf_probs"] = (aligned_probs(keys, rf_probs, columns), np.arange(len(keys)))
    log_weights(weights, log)
    outputs = model.predict(CachedBatches(model_inputs, batch_size), verbose=0)
    for modality, member in image_members.items():
        expected_probs = aligned_probs(keys, member.probs, columns)
        difference = float(np.abs(outputs[modality] - expected_probs).max())
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


def image_alone(
    modality: str, probs: pd.DataFrame, checkpoint: Path, manifest: dict, expected: dict, log
) -> pd.DataFrame:
    """A combination of one image: its probabilities are the image stage's ``probs``.

    There is nothing to fuse, so no model is built; the checkpoint those probabilities came
    from is still checked against its sidecar (bytes, modality, repeat, fold, classes,
    backbone), as every fusion job checks its inputs.
    """
    verify_sidecar(checkpoint, manifest, {"modality": modality, **expected})
    log.info("%s alone: the image stage's probabilities (checkpoint matches its sidecar)", modality)
    log_weights({modality: 1.0}, log)
    return probs


def log_weights(weights: dict, log) -> None:
    """The contract's ``Fusion weights: RF=0.70, Image=0.30`` line, then every member's weight.

    ``Image`` is the sum of the image members' own configured weights (not ``1 - RF``), so a
    wrong image weight shows in the log.
    """
    rf = weights.get(METADATA, 0.0)
    image = sum(w for member, w in weights.items() if member != METADATA)
    members = ", ".join(f"{member}={w:.2f}" for member, w in weights.items())
    log.info("Fusion weights: RF=%.2f, Image=%.2f (%s)", rf, image, members)


def fuse_combination(
    members: list,
    weights: dict,
    rf_probs: pd.DataFrame | None,
    inputs,
    expected: dict,
    settings: dict,
    threads: int,
    log,
) -> tuple[pd.DataFrame, dict, dict | None]:
    """One fusion job, fold or final: (fused probabilities, each image member's probabilities,
    TensorFlow runtime settings or None).

    ``inputs`` maps ``{modality}_checkpoint``, ``_sidecar``, ``_probs`` (and, to fuse,
    ``_cache`` and ``_ids``) to files, as the fusion rules name them; ``expected`` is what each
    sidecar must say (repeat, fold, classes); ``settings`` the job's fusion settings. A member
    alone passes its probabilities through (an image's after its sidecar check); images are
    fused with frozen branches by :func:`fuse_v3`.
    """
    modalities = [m for m in members if m != METADATA]
    if not modalities:
        log_weights(weights, log)
        return rf_probs, {}, None
    if members == modalities[:1]:
        (modality,) = modalities
        probs = image_alone(
            modality,
            read_tsv(inputs[f"{modality}_probs"]),
            inputs[f"{modality}_checkpoint"],
            read_json(inputs[f"{modality}_sidecar"]),
            {**expected, "backbone": settings["branches"][modality]["backbone"]},
            log,
        )
        return probs, {modality: probs}, None
    from fusion_dag.cache import load_cache
    from fusion_dag.image import configure_tensorflow

    runtime = configure_tensorflow(settings["intra_op_threads"], threads, settings["seed"])
    image_members = {
        m: ImageMember(
            *load_cache(inputs[f"{m}_cache"], inputs[f"{m}_ids"]),
            probs=read_tsv(inputs[f"{m}_probs"]),
            checkpoint=inputs[f"{m}_checkpoint"],
            manifest=read_json(inputs[f"{m}_sidecar"]),
            settings=settings["branches"][m],
        )
        for m in modalities
    }
    probs = fuse_v3(weights, rf_probs, image_members, expected, settings["batch_size"], log)
    return probs, {m: member.probs for m, member in image_members.items()}, runtime
