import logging
from dataclasses import replace

import h5py
import numpy as np
import pandas as pd
import pytest

from fusion_dag.branch import build_image_branch
from fusion_dag.checkpoint import (
    CheckpointError,
    checkpoint_sidecar,
    freeze_branch,
    save_branch_weights,
)
from fusion_dag.fusion import ImageMember, build_fusion_model, fuse_v3, log_weights
from fusion_dag.image import branch_probabilities
from fusion_dag.weights import member_weights
from tests.conftest import CLASSES, branch_fold, train_tiny_branch

PROBS = [f"prob_{c}" for c in CLASSES]
EXPECTED = {"repeat": 1, "fold": 1, "classes": CLASSES}
SHAPE = (24, 24, 3)  # the cached demo's image shape
SMALL_CNN = {"backbone": "small_cnn"}


def test_metadata_takes_its_weight_and_images_share_the_rest():
    weights = member_weights(["metadata", "thermal_map", "depth_map"], 0.7)
    assert weights == pytest.approx({"metadata": 0.7, "thermal_map": 0.15, "depth_map": 0.15})
    assert member_weights(["metadata"], 0.7) == {"metadata": 1.0}
    assert member_weights(["thermal_map", "depth_map"], 0.7) == {
        "thermal_map": 0.5,
        "depth_map": 0.5,
    }


def test_configured_member_weights_are_rescaled_within_each_combination():
    weights = {"metadata": 0.7, "thermal_map": 0.15, "depth_map": 0.05, "wound_photo": 0.1}
    assert member_weights(list(weights), 0.5, weights) == pytest.approx(weights)
    pair = member_weights(["metadata", "thermal_map"], 0.5, weights)
    assert pair == pytest.approx({"metadata": 0.7 / 0.85, "thermal_map": 0.15 / 0.85})
    assert member_weights(["depth_map"], 0.5, weights) == {"depth_map": 1.0}
    with pytest.raises(ValueError, match="combination depth_map weight 0"):
        member_weights(["depth_map"], 0.5, {**weights, "depth_map": 0.0})


def test_weight_line_prints_each_members_own_weight(caplog):
    with caplog.at_level(logging.INFO):
        log_weights({"metadata": 0.7, "thermal_map": 0.2})
    # The image weight is what the image member gets, not 1 - RF.
    assert "Fusion weights: RF=0.70, Image=0.20 (metadata=0.70, thermal_map=0.20)" in caplog.text


@pytest.fixture(scope="module")
def pretrained(cached, tmp_path_factory):
    """A thermal branch trained for two epochs on fold 1: its checkpoint, visit probabilities,
    sidecar, model and per-view probabilities."""
    folder = tmp_path_factory.mktemp("pretrained")
    model = train_tiny_branch(cached, folder, epochs=2)
    probs, view_probs = branch_probabilities(model, branch_fold(cached))
    checkpoint = folder / "checkpoint.weights.h5"
    manifest = checkpoint_sidecar(model, "thermal_map", "small_cnn", (1, 1), CLASSES, checkpoint)
    return checkpoint, probs, manifest, model, view_probs


def member(cached, pretrained, **changes):
    cache, views, _ = cached
    checkpoint, probs, manifest, _, view_probs = pretrained
    fields = {
        "probs": probs,
        "checkpoint": checkpoint,
        "sidecar": manifest,
        "settings": SMALL_CNN,
        "images": cache,
        "views": views,
        "view_probs": view_probs,
        **changes,
    }
    return {"thermal_map": ImageMember(**fields)}


def rf_table(image_probs, extra_ids=()):
    """Stand-in forest probabilities for the image rows plus rows the image does not have."""
    rf = pd.concat(
        [image_probs[["id", "split"]], pd.DataFrame({"id": list(extra_ids), "split": "val"})],
        ignore_index=True,
    )
    raw = np.random.default_rng(0).random((len(rf), len(CLASSES)))
    rf[PROBS] = raw / raw.sum(axis=1, keepdims=True)
    return rf


def test_v3_loads_freezes_checks_and_fuses_shared_rows_with_fixed_weights(
    cached, pretrained, caplog, keras_fits
):
    _, image_probs, _, _, _ = pretrained
    rf = rf_table(image_probs, extra_ids=["no_image_1", "no_image_2"])
    weights = member_weights(["metadata", "thermal_map"], 0.7)
    with caplog.at_level(logging.INFO):
        fused = fuse_v3(weights, rf, member(cached, pretrained), EXPECTED, 32)
    assert keras_fits == []  # no gradient step: fusion never fits
    text = caplog.text
    for layer in ("thermal_map_conv1", "thermal_map_conv3", "thermal_map_probs"):
        assert f"Loaded weights for layer: {layer}" in text
        assert f"Frozen layer: {layer}" in text
    assert "Fusion weights: RF=0.70, Image=0.30" in text
    assert "reproduces the image stage on" in text and "views: max abs diff" in text
    # Rows the image does not have are not fused.
    assert sorted(fused["id"]) == sorted(image_probs["id"])
    expected = 0.7 * rf[PROBS].to_numpy()[: len(image_probs)] + 0.3 * image_probs[PROBS].to_numpy()
    aligned = image_probs[["id", "split"]].merge(fused, on=["id", "split"])
    np.testing.assert_allclose(aligned[PROBS].to_numpy(), expected, atol=1e-6)


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


def test_another_branchs_layers_are_refused_even_with_a_forged_modality(
    cached, pretrained, tmp_path
):
    """A depth_map file relabelled as thermal_map, with a sidecar made to match, is refused."""
    depth = build_image_branch("depth_map", SHAPE, 3)
    path = tmp_path / "checkpoint.weights.h5"
    save_branch_weights(depth, "depth_map", path)
    rewrite(path, path, lambda handle: handle.attrs.modify("modality", "thermal_map"))
    thermal = build_image_branch("thermal_map", SHAPE, 3)
    forged = checkpoint_sidecar(thermal, "thermal_map", "small_cnn", (1, 1), CLASSES, path)
    with pytest.raises(
        CheckpointError,
        match=r"fusion model layers not in the file \['thermal_map_conv1'.*"
        r"file layers not in the fusion model \['depth_map_conv1'",
    ):
        fuse_v3(
            {"thermal_map": 1.0},
            None,
            member(cached, pretrained, checkpoint=path, sidecar=forged),
            EXPECTED,
            32,
        )


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


def test_branch_that_does_not_reproduce_one_view_of_the_image_stage_is_refused(cached, pretrained):
    tampered = pretrained[4].copy()
    tampered.loc[7, "prob_I"] += 0.01
    with pytest.raises(CheckpointError, match="differs from the image stage's per-view"):
        fuse_v3(
            {"metadata": 0.7, "thermal_map": 0.3},
            rf_table(pretrained[1]),
            member(cached, pretrained, view_probs=tampered),
            EXPECTED,
            32,
        )


def test_a_visits_probability_is_the_mean_of_its_views(pretrained):
    _, probs, _, _, view_probs = pretrained
    assert view_probs["id"].duplicated().any() and len(view_probs) > len(probs)
    means = view_probs.groupby("id")[PROBS].mean()
    np.testing.assert_allclose(probs.set_index("id").loc[means.index, PROBS], means, atol=1e-7)


def refused(cached, pretrained, expected=EXPECTED, **changes):
    with pytest.raises(CheckpointError) as error:
        fuse_v3(
            {"thermal_map": 1.0},
            None,
            member(cached, pretrained, **changes),
            expected,
            32,
        )
    return str(error.value)


def test_sidecar_mismatches_are_refused_naming_each(cached, pretrained, tmp_path):
    checkpoint, _, manifest, _, _ = pretrained
    copy = tmp_path / "checkpoint.weights.h5"
    copy.write_bytes(checkpoint.read_bytes() + b"0")
    assert "sha256 is" in refused(cached, pretrained, checkpoint=copy)
    assert "fold is 1, the fusion job needs 2" in refused(
        cached, pretrained, expected={**EXPECTED, "fold": 2}
    )
    assert "repeat is 1, the fusion job needs 3" in refused(
        cached, pretrained, expected={**EXPECTED, "repeat": 3}
    )
    assert "classes is ['I', 'P', 'R'], the fusion job needs ['A', 'B', 'C']" in refused(
        cached, pretrained, expected={**EXPECTED, "classes": ["A", "B", "C"]}
    )
    other = {**manifest, "modality": "depth_map"}
    assert "modality is 'depth_map', the fusion job needs 'thermal_map'" in refused(
        cached, pretrained, sidecar=other
    )
    renamed = {**manifest, "layers": {**manifest["layers"], "thermal_map_conv9": [[1]]}}
    assert "layers differ: thermal_map_conv9" in refused(cached, pretrained, sidecar=renamed)


def test_sidecar_for_another_size_or_channel_count_is_refused(cached, pretrained):
    _, _, manifest, _, _ = pretrained
    assert "image_size is 32, the fusion job needs 24" in refused(
        cached, pretrained, sidecar={**manifest, "image_size": 32}
    )
    assert "channels is 1, the fusion job needs 3" in refused(
        cached, pretrained, sidecar={**manifest, "channels": 1}
    )


def test_an_image_alone_is_the_image_stage_with_its_checkpoint_checked(pretrained, tmp_path):
    from fusion_dag.fusion import image_alone

    checkpoint, probs, manifest, _, _ = pretrained
    alone = ImageMember(probs, checkpoint, manifest, SMALL_CNN)
    assert image_alone("thermal_map", alone, EXPECTED) is probs
    changed = tmp_path / "checkpoint.weights.h5"
    changed.write_bytes(checkpoint.read_bytes() + b"0")
    with pytest.raises(CheckpointError, match="sha256 is"):
        image_alone("thermal_map", replace(alone, checkpoint=changed), EXPECTED)
    with pytest.raises(CheckpointError, match="backbone is 'small_cnn', the fusion job needs"):
        image_alone("thermal_map", replace(alone, settings={"backbone": "x"}), EXPECTED)
