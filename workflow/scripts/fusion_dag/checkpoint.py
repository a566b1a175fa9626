"""The pretrained image branch on disk: weights keyed by layer name, plus a sidecar record.

Why a format of its own: Keras 3 ``.weights.h5`` files key weights by layer *type and position*
(``layers/conv2d_1/vars``), so ``load_weights`` happily copies a ``depth_map`` branch into a
``thermal_map`` model of the same shape. The V3 contract is "load by layer name", so the file
records each layer's name and the loader maps the names in the file onto the fusion model's
names: a layer missing on either side, an unexpected layer or a shape mismatch is an error
naming it. A nested ``keras.applications`` backbone is one named layer whose weights are stored
and loaded as a whole.

The file is plain HDF5 (h5py): one group per layer under ``/layers``, one dataset per weight in
the layer's own weight order, the weight's Keras path as an attribute. It holds numbers and
strings only; nothing in it is executed or unpickled on load. The sidecar ``checkpoint.json``
(modality, repeat, fold, backbone, image size, channels, classes, layer shapes, SHA-256) is a
second line of defence.
"""

import logging
import os
from pathlib import Path

import numpy as np

from fusion_dag.artifacts import ArtifactError, file_sha256, partial_path

log = logging.getLogger(__name__)

FORMAT = "fusion-dag-named-weights/1"


class CheckpointError(ArtifactError):
    """A pretrained checkpoint that cannot be loaded exactly into the fusion model."""


def retrain_hint(checkpoint: Path) -> str:
    """How to recover from a refused checkpoint: the job that wrote it runs again (with every
    job that uses it) once the file is gone."""
    return (
        f"it is not the file its image job wrote (edited, swapped or copied from elsewhere): "
        f"delete {checkpoint} and run again to retrain it"
    )


def branch_layers(model, modality: str) -> list:
    """The layers of ``model`` that belong to one image branch (named ``{modality}_...``)."""
    return [layer for layer in model.layers if layer.name.startswith(f"{modality}_")]


def weighted_layers(model, modality: str) -> dict:
    """Layer name -> layer, for the branch's layers that hold weights."""
    return {layer.name: layer for layer in branch_layers(model, modality) if layer.weights}


def layer_shapes(model, modality: str) -> dict:
    """Weight shapes of every ``{modality}_`` layer that has weights, by layer name."""
    return {
        name: [list(w.shape) for w in layer.weights]
        for name, layer in weighted_layers(model, modality).items()
    }


def layer_label(layer) -> str:
    """A layer's name for the contract's log lines; a nested model also states its weight count
    (one line for a backbone, not one per inner layer)."""
    if hasattr(layer, "layers"):
        return f"{layer.name} (nested model, {len(layer.weights)} weights)"
    return layer.name


def input_shape(model, modality: str) -> list:
    """(size, size, channels) of the branch's image input."""
    return [int(n) for n in model.get_layer(f"{modality}_input").output.shape[1:]]


def save_branch_weights(model, modality: str, path: Path) -> None:
    """Write the branch's weights, keyed by layer name, atomically (temporary name, rename)."""
    import h5py

    partial = partial_path(path)
    with h5py.File(partial, "w") as handle:
        handle.attrs["format"] = FORMAT
        handle.attrs["modality"] = modality
        layers = handle.create_group("layers")
        for name, layer in weighted_layers(model, modality).items():
            group = layers.create_group(name)
            for index, weight in enumerate(layer.weights):
                dataset = group.create_dataset(f"{index:05d}", data=np.asarray(weight))
                dataset.attrs["path"] = weight.path
    os.replace(partial, path)


def read_branch_weights(path: Path) -> tuple[str | None, dict]:
    """(modality recorded in the file, layer name -> list of weight arrays in layer order)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != FORMAT or "layers" not in handle:
                raise CheckpointError(
                    f"checkpoint {path} is not a fusion-dag branch checkpoint ({FORMAT}); "
                    f"delete it and run again to retrain it"
                )
            modality = handle.attrs.get("modality")
            layers = {
                name: [group[key][()] for key in sorted(group)]
                for name, group in handle["layers"].items()
            }
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {error}; delete it and run again to retrain it"
        ) from None
    return modality, layers


def load_branch_weights(model, modality: str, checkpoint: Path) -> None:
    """Load a checkpoint into the fusion model's branch by mapping the file's layer names.

    Every weighted ``{modality}_`` layer of the model must be in the file with the same number
    and shapes of weights, and the file may hold no other layer: anything else is a
    :class:`CheckpointError` that names the layer (never a silent random initialisation).
    """
    recorded, stored = read_branch_weights(checkpoint)
    targets = weighted_layers(model, modality)
    if recorded != modality:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds the {recorded} branch (layers "
            f"{', '.join(sorted(stored)[:3])}, ...), the fusion model needs modality {modality}"
        )
    missing = sorted(set(targets) - set(stored))
    extra = sorted(set(stored) - set(targets))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {checkpoint}: fusion model layers not in the file {missing}, "
            f"file layers not in the fusion model {extra}"
        )
    for name, layer in targets.items():
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(v.shape) for v in stored[name]]
        if expected != found:
            raise CheckpointError(
                f"checkpoint {checkpoint}: layer {name} has weight shapes {found} in the file, "
                f"the fusion model expects {expected}"
            )
        layer.set_weights(stored[name])
        log.info("Loaded weights for layer: %s", layer_label(layer))


def checkpoint_sidecar(
    model, modality: str, backbone: str, partition: tuple, classes: list, checkpoint: Path
) -> dict:
    """The sidecar written next to a checkpoint: what it is for and what it must contain.

    ``partition`` is the (repeat, fold) the branch was trained on.
    """
    size, _, channels = input_shape(model, modality)
    repeat, fold = partition
    return {
        "modality": modality,
        "repeat": repeat,
        "fold": fold,
        "backbone": backbone,
        "image_size": size,
        "channels": channels,
        "classes": list(classes),
        "layers": layer_shapes(model, modality),
        "sha256": file_sha256(checkpoint),
    }


def sidecar_problems(
    checkpoint: Path, sidecar: dict, required: dict, requirer: str = "the fusion job"
) -> list:
    """What differs between a checkpoint, its sidecar and what ``requirer`` requires: changed
    bytes, or any ``required`` field (modality, repeat, fold, classes, backbone, size,
    channels)."""
    problems = []
    actual = file_sha256(checkpoint)
    if "sha256" not in sidecar:
        problems.append(f"sha256 is {actual[:12]}..., the sidecar records none")
    elif actual != sidecar["sha256"]:
        problems.append(
            f"sha256 is {actual[:12]}..., sidecar says {str(sidecar['sha256'])[:12]}..."
        )
    for key, value in required.items():
        if sidecar.get(key) != value:
            problems.append(f"{key} is {sidecar.get(key)!r}, {requirer} needs {value!r}")
    return problems


def verify_sidecar(checkpoint: Path, sidecar: dict, required: dict) -> None:
    """Refuse a checkpoint whose bytes or sidecar do not match what the job requires; no model
    is built (a combination of one image uses the image stage's probabilities as they are)."""
    problems = sidecar_problems(checkpoint, sidecar, required)
    if problems:
        raise CheckpointError(
            f"checkpoint {checkpoint} refused: {'; '.join(problems)}; {retrain_hint(checkpoint)}"
        )


def verify_checkpoint(model, modality: str, checkpoint: Path, sidecar: dict, required: dict):
    """Refuse a checkpoint that is not the one its sidecar describes, or not for this job.

    ``required`` holds what the job needs (``repeat``, ``fold``, ``classes``, ``backbone``).
    Each difference is named: changed bytes, another modality, repeat, fold, backbone, image
    size, channel count, class list or layer set/shape.
    """
    size, _, channels = input_shape(model, modality)
    required = {"modality": modality, "image_size": size, "channels": channels, **required}
    problems = sidecar_problems(checkpoint, sidecar, required)
    built = layer_shapes(model, modality)
    stored = sidecar.get("layers") or {}
    if stored != built:
        changed = sorted(n for n in set(stored) | set(built) if stored.get(n) != built.get(n))
        problems.append(f"layers differ: {', '.join(changed)}")
    if problems:
        raise CheckpointError(
            f"checkpoint {checkpoint} refused: {'; '.join(problems)}; {retrain_hint(checkpoint)}"
        )


def freeze_branch(model, modality: str) -> None:
    """Make every layer of the branch non-trainable and prove no weight is left trainable."""
    for layer in branch_layers(model, modality):
        layer.trainable = False
        log.info("Frozen layer: %s", layer_label(layer))
    trainable = sum(len(layer.trainable_weights) for layer in branch_layers(model, modality))
    if trainable:
        raise RuntimeError(f"{modality} branch still has {trainable} trainable weights")


def load_frozen_branch(
    model, modality: str, checkpoint: Path, sidecar: dict, required: dict
) -> None:
    """Put a pretrained branch into ``model`` the one way V3 allows: the checkpoint verified
    against its sidecar and the job's ``required`` fields, loaded by layer name, then frozen.

    The fusion model (several branches) and a bundle's single branch in ``predict`` both come
    through here, so a checkpoint refused in one is refused in the other.
    """
    verify_checkpoint(model, modality, checkpoint, sidecar, required)
    log.info("Checkpoint %s matches its sidecar (sha256 %s)", checkpoint, sidecar["sha256"])
    load_branch_weights(model, modality, checkpoint)
    freeze_branch(model, modality)
