import logging

import numpy as np
import pandas as pd
import pytest

from fusion_dag.fusion import (
    CheckpointError,
    build_fusion_model,
    freeze_branch,
    fuse_probabilities,
    fuse_v3,
    load_branch_weights,
    member_weights,
    verify_checkpoint,
)
from fusion_dag.image import (
    branch_probabilities,
    build_image_branch,
    checkpoint_manifest,
)
from tests.conftest import CLASSES, train_tiny_branch


def test_metadata_takes_its_weight_and_images_share_the_rest():
    weights = member_weights(["metadata", "thermal_map", "depth_map"], 0.7)
    assert weights == pytest.approx({"metadata": 0.7, "thermal_map": 0.15, "depth_map": 0.15})
    assert member_weights(["metadata"], 0.7) == {"metadata": 1.0}
    assert member_weights(["thermal_map", "depth_map"], 0.7) == {
        "thermal_map": 0.5,
        "depth_map": 0.5,
    }


def table(ids, probs):
    frame = pd.DataFrame({"id": ids, "split": ["train"] * (len(ids) - 1) + ["val"]})
    frame[[f"prob_{c}" for c in CLASSES]] = probs
    return frame


def test_fusion_is_the_weighted_sum_on_shared_rows():
    rf = table(["a", "b", "c"], np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float))
    image = table(["c", "a"], np.array([[1, 0, 0], [0, 0, 1]], dtype=float))
    image["split"] = ["val", "train"]
    fused = fuse_probabilities(
        {"metadata": rf, "thermal_map": image}, {"metadata": 0.7, "thermal_map": 0.3}, CLASSES
    )
    assert fused["id"].tolist() == ["a", "c"]
    np.testing.assert_allclose(fused.iloc[0, 2:].to_numpy(dtype=float), [0.7, 0.0, 0.3])
    np.testing.assert_allclose(fused.iloc[1, 2:].to_numpy(dtype=float), [0.3, 0.0, 0.7])


@pytest.fixture(scope="module")
def pretrained(cached, tmp_path_factory):
    """A thermal branch trained for two epochs on fold 1, its checkpoint and probabilities."""
    cache, positions, folds = cached
    folder = tmp_path_factory.mktemp("pretrained")
    model = train_tiny_branch(cached, folder, epochs=2)
    probs = branch_probabilities(model, cache, positions, folds, 1, CLASSES, 32)
    checkpoint = folder / "checkpoint.weights.h5"
    manifest = checkpoint_manifest(model, "thermal_map", 1, CLASSES, checkpoint)
    return checkpoint, probs, manifest


def rf_table(image_probs):
    """Stand-in forest probabilities: a fixed, row-dependent distribution."""
    rf = image_probs[["id", "split"]].copy()
    raw = np.random.default_rng(0).random((len(rf), len(CLASSES)))
    rf[[f"prob_{c}" for c in CLASSES]] = raw / raw.sum(axis=1, keepdims=True)
    return rf


def test_v3_loads_freezes_checks_and_fuses_with_fixed_weights(cached, pretrained, caplog):
    cache, positions, _ = cached
    checkpoint, image_probs, manifest = pretrained
    rf = rf_table(image_probs)
    weights = member_weights(["metadata", "thermal_map"], 0.7)
    with caplog.at_level(logging.INFO):
        fused = fuse_v3(
            weights,
            rf,
            {"thermal_map": (cache, positions, image_probs, str(checkpoint), manifest)},
            CLASSES,
            32,
            logging.getLogger("test"),
        )
    text = caplog.text
    for layer in ("thermal_map_conv1", "thermal_map_conv3", "thermal_map_probs"):
        assert f"Loaded weights for layer: {layer}" in text
        assert f"Frozen layer: {layer}" in text
    assert "Fusion weights: RF=0.70, Image=0.30" in text
    columns = [f"prob_{c}" for c in CLASSES]
    expected = 0.7 * rf[columns].to_numpy() + 0.3 * image_probs[columns].to_numpy()
    aligned = image_probs[["id", "split"]].merge(fused, on=["id", "split"])
    np.testing.assert_allclose(aligned[columns].to_numpy(), expected, atol=1e-6)


def test_frozen_fusion_model_has_nothing_to_train(cached, pretrained):
    model = build_fusion_model(["thermal_map"], 24, 3, {"metadata": 0.7, "thermal_map": 0.3})
    load_branch_weights(model, "thermal_map", str(pretrained[0]), logging.getLogger("test"))
    freeze_branch(model, "thermal_map", logging.getLogger("test"))
    assert model.trainable_weights == []
    assert {layer.name for layer in model.layers} >= {"rf_probs", "fusion_add"}


def test_checkpoint_of_another_shape_is_a_hard_error(tmp_path):
    other = build_image_branch("thermal_map", 24, 2)
    other.save_weights(tmp_path / "two_classes.weights.h5")
    model = build_fusion_model(["thermal_map"], 24, 3, {"metadata": 0.7, "thermal_map": 0.3})
    with pytest.raises(CheckpointError, match="two_classes.weights.h5"):
        load_branch_weights(
            model, "thermal_map", str(tmp_path / "two_classes.weights.h5"), logging.getLogger("t")
        )


def test_branch_that_does_not_reproduce_the_image_stage_is_refused(cached, pretrained):
    cache, positions, _ = cached
    checkpoint, image_probs, manifest = pretrained
    tampered = image_probs.copy()
    tampered["prob_I"] += 0.01
    with pytest.raises(CheckpointError, match="differs from the image stage"):
        fuse_v3(
            {"thermal_map": 1.0},
            None,
            {"thermal_map": (cache, positions, tampered, str(checkpoint), manifest)},
            CLASSES,
            32,
            logging.getLogger("test"),
        )


def fusion_for(size):
    return build_fusion_model(["thermal_map"], size, 3, {"metadata": 0.7, "thermal_map": 0.3})


def test_checkpoint_matching_its_sidecar_is_accepted(pretrained):
    checkpoint, _, manifest = pretrained
    verify_checkpoint(fusion_for(24), "thermal_map", str(checkpoint), manifest, CLASSES)


def test_changed_checkpoint_bytes_are_refused(pretrained, tmp_path):
    checkpoint, _, manifest = pretrained
    copy = tmp_path / "checkpoint.weights.h5"
    copy.write_bytes(checkpoint.read_bytes() + b"0")
    with pytest.raises(CheckpointError, match="sha256 is"):
        verify_checkpoint(fusion_for(24), "thermal_map", str(copy), manifest, CLASSES)


def test_checkpoint_for_another_image_size_or_classes_is_refused(pretrained):
    checkpoint, _, manifest = pretrained
    with pytest.raises(CheckpointError, match="image_size is 24, the fusion model needs 32"):
        verify_checkpoint(fusion_for(32), "thermal_map", str(checkpoint), manifest, CLASSES)
    with pytest.raises(CheckpointError, match="classes is"):
        verify_checkpoint(fusion_for(24), "thermal_map", str(checkpoint), manifest, ["A", "B", "C"])
    renamed = {**manifest, "layers": {**manifest["layers"], "thermal_map_conv9": [[1]]}}
    with pytest.raises(CheckpointError, match="layers differ: thermal_map_conv9"):
        verify_checkpoint(fusion_for(24), "thermal_map", str(checkpoint), renamed, CLASSES)
