"""The checkpoint contract: a file keyed by layer name, loaded by name into the rebuilt branch,
frozen, and refused naming the layer when it holds another branch, layers or shapes."""

import h5py
import numpy as np
import pytest

from fusion_dag.artifacts import ArtifactError
from fusion_dag.branch import build_image_branch
from fusion_dag.checkpoint import (
    CheckpointError,
    freeze_branch,
    save_branch_weights,
    verify_checkpoint,
)
from fusion_dag.fusion import build_fusion_model
from tests.conftest import CLASSES

SHAPE = (24, 24, 3)  # the cached demo's image shape
SMALL_CNN = {"backbone": "small_cnn"}


def test_checkpoint_file_is_keyed_by_layer_name(pretrained):
    checkpoint, _, _, model, _ = pretrained
    with h5py.File(checkpoint, "r") as handle:
        stored = {
            name: [group[k][()] for k in sorted(group)] for name, group in handle["layers"].items()
        }
    named = {layer.name: layer for layer in model.layers if layer.weights}
    assert (
        set(stored)
        == set(named)
        == {
            "thermal_map_conv1",
            "thermal_map_conv2",
            "thermal_map_conv3",
            "thermal_map_probs",
        }
    )
    for name, values in stored.items():
        for value, weight in zip(values, named[name].get_weights(), strict=True):
            np.testing.assert_array_equal(value, weight)


def load_into_fusion(path):
    """The thermal branch as the fusion stage rebuilds it, with ``path`` loaded by name."""
    from fusion_dag.checkpoint import load_branch_weights

    model = build_image_branch("thermal_map", SHAPE, 3, SMALL_CNN)
    load_branch_weights(model, "thermal_map", path)
    return model


def test_loaded_weights_are_the_files_and_nothing_is_left_to_train(pretrained):
    checkpoint, _, _, trained, _ = pretrained
    model = load_into_fusion(checkpoint)
    for name in ("thermal_map_conv2", "thermal_map_probs"):
        for loaded, saved in zip(
            model.get_layer(name).get_weights(), trained.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(loaded, saved)
    freeze_branch(model, "thermal_map")
    assert model.trainable_weights == []
    head = build_fusion_model(["metadata", "thermal_map"], 3, {"metadata": 0.7, "thermal_map": 0.3})
    assert head.trainable_weights == []
    assert {layer.name for layer in head.layers} >= {
        "metadata_probs",
        "thermal_map_probs",
        "fusion_add",
    }


def rewrite(source, target, edit):
    """Copy a checkpoint and change it with ``edit(h5py.File)``."""
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as handle:
        edit(handle)
    return target


def test_checkpoint_of_another_modality_is_refused_naming_it(tmp_path):
    depth = build_image_branch("depth_map", SHAPE, 3)
    save_branch_weights(depth, "depth_map", tmp_path / "depth.weights.h5")
    with pytest.raises(
        CheckpointError, match="holds the depth_map branch.*needs modality thermal_map"
    ):
        load_into_fusion(tmp_path / "depth.weights.h5")


def test_missing_and_extra_layers_are_named(pretrained, tmp_path):
    checkpoint = pretrained[0]
    without = rewrite(
        checkpoint, tmp_path / "a.weights.h5", lambda h: h["layers"].pop("thermal_map_conv2")
    )
    with pytest.raises(CheckpointError, match=r"not in the file \['thermal_map_conv2'\]"):
        load_into_fusion(without)

    def add_layer(handle):
        handle["layers"].create_group("thermal_map_conv9").create_dataset("00000", data=[1.0])

    extra = rewrite(checkpoint, tmp_path / "b.weights.h5", add_layer)
    with pytest.raises(CheckpointError, match=r"not in the fusion model \['thermal_map_conv9'\]"):
        load_into_fusion(extra)


def test_shape_mismatch_names_the_layer_and_shapes(tmp_path):
    two_classes = build_image_branch("thermal_map", SHAPE, 2)
    save_branch_weights(two_classes, "thermal_map", tmp_path / "two.weights.h5")
    with pytest.raises(
        CheckpointError,
        match=r"layer thermal_map_probs has weight shapes \[\(64, 2\), \(2,\)\] in the file, "
        r"the fusion model expects \[\(64, 3\), \(3,\)\]",
    ):
        load_into_fusion(tmp_path / "two.weights.h5")


def test_a_plain_keras_weights_file_is_refused(tmp_path):
    build_image_branch("thermal_map", SHAPE, 3).save_weights(tmp_path / "keras.weights.h5")
    with pytest.raises(CheckpointError, match="is not a fusion-dag branch checkpoint"):
        load_into_fusion(tmp_path / "keras.weights.h5")


def test_another_folds_checkpoint_is_refused_saying_what_to_delete(pretrained, tmp_path):
    """A checkpoint swapped with another fold's: its bytes are not the sidecar's; the message
    says which file to delete for the next run to retrain it."""
    checkpoint, _, sidecar, model, _ = pretrained
    other = build_image_branch("thermal_map", SHAPE, 3)
    save_branch_weights(other, "thermal_map", tmp_path / "checkpoint.weights.h5")
    swapped = tmp_path / "checkpoint.weights.h5"
    required = {"repeat": 1, "fold": 1, "classes": CLASSES, "backbone": "small_cnn"}
    with pytest.raises(CheckpointError, match="sha256 is .*, sidecar says ") as error:
        verify_checkpoint(model, "thermal_map", swapped, sidecar, required)
    assert isinstance(error.value, ArtifactError)
    assert str(error.value).endswith(f"delete {swapped} and run again to retrain it")
    # A sidecar without its hash is refused as a wrong hash is, never passed.
    unhashed = {key: value for key, value in sidecar.items() if key != "sha256"}
    with pytest.raises(CheckpointError, match=r"sha256 is \w{12}\.\.\., the sidecar records none"):
        verify_checkpoint(model, "thermal_map", checkpoint, unhashed, required)
    verify_checkpoint(model, "thermal_map", checkpoint, sidecar, required)
