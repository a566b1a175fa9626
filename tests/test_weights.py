"""Fusion weights per member: the metadata weight and the images' shares, or configured ones."""

import pytest

from fusion_dag.weights import member_weights


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
