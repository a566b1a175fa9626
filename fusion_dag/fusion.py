"""Fusion of branch probabilities with fixed weights (the V3 contract).

Why fixed weights: a fusion layer that learns its weights, or an image branch trained inside
the fusion model, overfits the training rows (train kappa 0.96, validation 0.02 in the original
study). V3 fuses ``w * rf + (1 - w) * image`` with ``w`` from the config and no gradient step;
several image modalities share ``1 - w`` equally.
"""

import warnings

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, file_sha256

METADATA = "metadata"


def combination_name(members: list) -> str:
    """Members joined with ``+`` (``metadata+thermal_map``)."""
    return "+".join(members)


def member_weights(members: list, metadata_weight: float) -> dict:
    """Weight of each member's probabilities.

    Metadata takes ``metadata_weight`` when images are also present; images share the rest
    equally. A single-kind combination weighs its members equally.
    """
    images = [m for m in members if m != METADATA]
    if METADATA in members and images:
        share = (1.0 - metadata_weight) / len(images)
        return {METADATA: metadata_weight, **{m: share for m in images}}
    return {m: 1.0 / len(members) for m in members}


def fuse_probabilities(tables: dict, weights: dict, classes: list) -> pd.DataFrame:
    """Weighted sum of members' probability tables, aligned on ``id`` and ``split``.

    Only rows present in every member are fused (an image modality may drop rows).
    """
    columns = [f"prob_{c}" for c in classes]
    members = list(weights)
    keys = tables[members[0]][[ID, "split"]]
    for member in members[1:]:
        keys = keys.merge(tables[member][[ID, "split"]], on=[ID, "split"], validate="one_to_one")
    fused = np.zeros((len(keys), len(classes)))
    for member in members:
        aligned = keys.merge(tables[member], on=[ID, "split"], how="left", validate="one_to_one")
        fused += weights[member] * aligned[columns].to_numpy()
    result = keys.reset_index(drop=True).copy()
    result[columns] = fused
    return result


class CheckpointError(RuntimeError):
    """A pretrained checkpoint that cannot be loaded exactly into the fusion model."""


def build_fusion_model(image_members: list, size: int, n_classes: int, weights: dict):
    """Image branches plus an ``rf_probs`` input, combined by fixed weights.

    Each weight is a ``Rescaling`` layer (a constant, not a variable) and the terms are added,
    so the model has nothing a gradient step could change once the branches are frozen.
    """
    import keras
    from keras import layers

    from fusion_dag.image import build_image_branch

    inputs, terms = [], []
    if METADATA in weights:
        rf_probs = keras.Input(shape=(n_classes,), name="rf_probs")
        inputs.append(rf_probs)
        terms.append(layers.Rescaling(weights[METADATA], name="fusion_weight_metadata")(rf_probs))
    for modality in image_members:
        branch = build_image_branch(modality, size, n_classes)
        inputs.append(branch.input)
        scaled = layers.Rescaling(weights[modality], name=f"fusion_weight_{modality}")
        terms.append(scaled(branch.output))
    fused = layers.Add(name="fusion_add")(terms) if len(terms) > 1 else terms[0]
    return keras.Model(inputs, fused, name="fusion_v3")


def branch_layers(model, modality: str) -> list:
    """The fusion model's layers that belong to one image branch (named ``{modality}_...``)."""
    return [layer for layer in model.layers if layer.name.startswith(f"{modality}_")]


def load_branch_weights(model, modality: str, checkpoint: str, log) -> None:
    """Copy a pretrained branch's weights into the fusion model, layer by layer, by name.

    The checkpoint is first read into a standalone branch of the same builder; then every
    layer with weights is matched by name in the fusion model. A layer missing on either side
    or a shape mismatch is a :class:`CheckpointError` naming it: never a random init.
    """
    from fusion_dag.image import build_image_branch

    size = model.get_layer(f"{modality}_input").output.shape[1]
    n_classes = model.get_layer(f"{modality}_probs").units
    source = build_image_branch(modality, size, n_classes)
    try:
        # Keras only warns when it skips a layer it cannot match, which would leave that layer
        # at its random initial weights; here any such warning is an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            source.load_weights(checkpoint)
    except (ValueError, UserWarning) as error:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit the {modality} branch: {error}"
        ) from None
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    target_layers = {layer.name: layer for layer in branch_layers(model, modality) if layer.weights}
    if set(source_layers) != set(target_layers):
        missing = sorted(set(target_layers) - set(source_layers))
        extra = sorted(set(source_layers) - set(target_layers))
        raise CheckpointError(
            f"checkpoint {checkpoint}: layers not loaded {missing}, unexpected layers {extra}"
        )
    for name, target in target_layers.items():
        values = source_layers[name].get_weights()
        expected = [tuple(w.shape) for w in target.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            raise CheckpointError(
                f"checkpoint {checkpoint}: layer {name} has shapes {found}, "
                f"the model expects {expected}"
            )
        target.set_weights(values)
        log.info("Loaded weights for layer: %s", name)


def verify_checkpoint(model, modality: str, checkpoint: str, manifest: dict, classes: list):
    """Refuse a checkpoint that is not the one its sidecar describes, or not for this model.

    Each difference is named: changed bytes (sha256), another modality, image size, class list
    or layer set/shape.
    """
    from fusion_dag.image import layer_shapes

    size = int(model.get_layer(f"{modality}_input").output.shape[1])
    problems = []
    actual = file_sha256(checkpoint)
    if actual != manifest["sha256"]:
        problems.append(f"sha256 is {actual[:12]}..., sidecar says {manifest['sha256'][:12]}...")
    expected = {"modality": modality, "image_size": size, "classes": list(classes)}
    for key, value in expected.items():
        if manifest.get(key) != value:
            problems.append(f"{key} is {manifest.get(key)!r}, the fusion model needs {value!r}")
    built = layer_shapes(model, modality)
    if manifest.get("layers") != built:
        stored = manifest.get("layers") or {}
        changed = sorted(n for n in set(stored) | set(built) if stored.get(n) != built.get(n))
        problems.append(f"layers differ: {', '.join(changed)}")
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} refused: " + "; ".join(problems))


def freeze_branch(model, modality: str, log) -> None:
    """Make every layer of the branch non-trainable and prove no weight is left trainable."""
    for layer in branch_layers(model, modality):
        layer.trainable = False
        log.info("Frozen layer: %s", layer.name)
    trainable = sum(len(layer.trainable_weights) for layer in branch_layers(model, modality))
    if trainable:
        raise CheckpointError(f"{modality} branch still has {trainable} trainable weights")


def branch_outputs(model, modality: str, images, batch_size: int):
    """The frozen branch's probabilities inside the fusion model, for a reproduction check."""
    import keras

    branch = keras.Model(
        model.get_layer(f"{modality}_input").output,
        model.get_layer(f"{modality}_probs").output,
    )
    return branch.predict(images, batch_size=batch_size, verbose=0)


REPRODUCTION_TOLERANCE = 1e-5


def fuse_v3(
    weights: dict,
    rf_probs: pd.DataFrame | None,
    image_inputs: dict,
    classes: list,
    batch_size: int,
    log,
) -> pd.DataFrame:
    """Fuse with frozen pretrained image branches and fixed weights; no gradient step.

    ``image_inputs`` maps each modality to ``(images, positions, probs, checkpoint, manifest)``:
    the memory-mapped cache, the cache row of each id, the image stage's probability table, its
    checkpoint and the checkpoint's sidecar. Rows present in every member are fused.
    """
    columns = [f"prob_{c}" for c in classes]
    tables = [t for t in [rf_probs, *(v[2] for v in image_inputs.values())] if t is not None]
    keys = tables[0][[ID, "split"]]
    for table in tables[1:]:
        keys = keys.merge(table[[ID, "split"]], on=[ID, "split"], validate="one_to_one")
    keys = keys.reset_index(drop=True)
    size = next(iter(image_inputs.values()))[0].shape[1]
    model = build_fusion_model(list(image_inputs), size, len(classes), weights)
    model_inputs = {}
    for modality, (images, positions, probs, checkpoint, manifest) in image_inputs.items():
        verify_checkpoint(model, modality, checkpoint, manifest, classes)
        log.info("Checkpoint %s matches its sidecar (sha256 %s)", checkpoint, manifest["sha256"])
        load_branch_weights(model, modality, checkpoint, log)
        freeze_branch(model, modality, log)
        model_inputs[f"{modality}_input"] = images[positions[keys[ID]].to_numpy()]
        reproduced = branch_outputs(model, modality, model_inputs[f"{modality}_input"], batch_size)
        expected = keys.merge(probs, on=[ID, "split"], how="left")[columns].to_numpy()
        difference = float(np.abs(reproduced - expected).max())
        log.info(
            "Frozen %s branch reproduces the image stage: max abs diff %.2e", modality, difference
        )
        if difference > REPRODUCTION_TOLERANCE:
            raise CheckpointError(
                f"frozen {modality} branch differs from the image stage's probabilities by "
                f"{difference:.2e} (> {REPRODUCTION_TOLERANCE:g}); retrain the image stage"
            )
    if model.trainable_weights:
        raise CheckpointError(f"fusion model has {len(model.trainable_weights)} trainable weights")
    if rf_probs is not None:
        aligned = keys.merge(rf_probs, on=[ID, "split"], how="left")
        model_inputs["rf_probs"] = aligned[columns].to_numpy(dtype="float32")
    log_weights(weights, log)
    fused = model.predict(model_inputs, batch_size=batch_size, verbose=0)
    result = keys.copy()
    result[columns] = fused
    return result


def log_weights(weights: dict, log) -> None:
    """The contract's ``Fusion weights: RF=0.70, Image=0.30`` line."""
    rf = weights.get(METADATA, 0.0)
    log.info("Fusion weights: RF=%.2f, Image=%.2f", rf, 1.0 - rf)
