import numpy as np
import pandas as pd
import pytest

from fusion_dag.fusion import fuse_probabilities, member_weights
from tests.conftest import CLASSES


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
