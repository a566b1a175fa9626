import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.image import (
    best_epoch,
    branch_probabilities,
    build_cache,
    build_image_branch,
    cohen_kappa_metric,
    inner_split,
)
from tests.conftest import CLASSES, train_tiny_branch


def test_cache_is_memory_mapped_uint8(cached, demo_table):
    cache, positions, _ = cached
    assert isinstance(cache, np.memmap) and cache.dtype == np.uint8
    assert cache.shape == (len(positions), 24, 24, 3)
    first = pd.read_csv(demo_table)["thermal_map"].iloc[0]
    with Image.open(demo_table.parent / first) as image:
        expected = np.asarray(image.resize((24, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(cache[0], expected)


def test_grayscale_images_get_three_channels(tmp_path):
    Image.fromarray(np.full((10, 12), 200, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    build_cache(pd.Series([tmp_path / "g.png"]), 8, tmp_path / "c.npy")
    cache = np.load(tmp_path / "c.npy")
    assert cache.shape == (1, 8, 8, 3) and (cache == 200).all()


def test_every_layer_is_named_after_the_modality():
    model = build_image_branch("depth_map", 32, 3)
    assert all(layer.name.startswith("depth_map_") for layer in model.layers)
    assert model.output.shape[-1] == 3


def test_inner_split_holds_out_whole_patients(cached):
    _, _, folds = cached
    train = folds[folds["fold"] != 1].reset_index(drop=True)
    held_out = inner_split(train, 0.2, 42)
    assert 0.1 < held_out.mean() < 0.35
    assert not set(train.loc[held_out, "group"]) & set(train.loc[~held_out, "group"])


def test_training_stops_early_and_keeps_the_best_checkpoint(cached, tmp_path):
    cache, positions, folds = cached
    model = train_tiny_branch(cached, tmp_path, epochs=30, learning_rate=0.0)
    checkpoint = tmp_path / "checkpoint.weights.h5"
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    # With a zero learning rate the loss never improves: patience 2 stops after 3 epochs.
    assert len(history) == 3
    assert {"loss", "val_loss", "kappa", "val_kappa"} <= set(history.columns)
    assert best_epoch(tmp_path / "history.tsv") == 1
    assert checkpoint.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.weights.h5",
        "history.tsv",
    ]
    probs = branch_probabilities(model, cache, positions, folds, 1, CLASSES, 32)
    assert set(probs.loc[probs["split"] == "val", "id"]) == set(folds.loc[folds["fold"] == 1, "id"])
    np.testing.assert_allclose(probs[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)


def test_kappa_metric_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 200)
    probs = rng.random((200, 3))
    probs[np.arange(200), truth] += rng.random(200)  # partly right
    metric = cohen_kappa_metric(3)
    metric.update_state(truth[:120], probs[:120])
    metric.update_state(truth[120:], probs[120:])
    expected = cohen_kappa_score(truth, probs.argmax(axis=1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
    metric.reset_state()
    metric.update_state(truth, np.eye(3)[truth])
    assert float(metric.result()) == pytest.approx(1.0)
