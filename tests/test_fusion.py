import logging
from dataclasses import replace

import h5py
import numpy as np
import pandas as pd
import pytest

from fusion_dag.branch import build_image_branch
from fusion_dag.checkpoint import CheckpointError, checkpoint_sidecar, save_branch_weights
from fusion_dag.fusion import ImageMember, fuse_v3, log_weights
from fusion_dag.weights import member_weights
from tests.conftest import CLASSES

PROBS = [f"prob_{c}" for c in CLASSES]
EXPECTED = {"repeat": 1, "fold": 1, "classes": CLASSES}
SHAPE = (24, 24, 3)  # the cached demo's image shape
SMALL_CNN = {"backbone": "small_cnn"}


def test_weight_line_prints_each_members_own_weight(caplog):
    with caplog.at_level(logging.INFO):
        log_weights({"metadata": 0.7, "thermal_map": 0.2})
    # The image weight is what the image member gets, not 1 - RF.
    assert "Fusion weights: RF=0.70, Image=0.20 (metadata=0.70, thermal_map=0.20)" in caplog.text


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


def test_another_branchs_layers_are_refused_even_with_a_forged_modality(
    cached, pretrained, tmp_path
):
    """A depth_map file relabelled as thermal_map, with a sidecar made to match, is refused."""
    depth = build_image_branch("depth_map", SHAPE, 3)
    path = tmp_path / "checkpoint.weights.h5"
    save_branch_weights(depth, "depth_map", path)
    with h5py.File(path, "r+") as handle:
        handle.attrs.modify("modality", "thermal_map")
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
