import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.cache import build_cache
from fusion_dag.checkpoint import read_branch_weights
from fusion_dag.image import (
    CohenKappa,
    best_epoch,
    branch_probabilities,
    build_image_branch,
    inner_split,
)
from tests.conftest import CLASSES, branch_fold, train_tiny_branch


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


def test_training_stops_early_after_patience(cached, tmp_path):
    cache, positions, folds = cached
    model = train_tiny_branch(cached, tmp_path, epochs=30, learning_rate=0.0)
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    # With a zero learning rate the loss never improves: patience 2 stops after 3 epochs.
    assert len(history) == 3
    assert {"loss", "val_loss", "kappa", "val_kappa"} <= set(history.columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.weights.h5", "history.tsv"]
    probs = branch_probabilities(model, branch_fold(cached))
    assert set(probs.loc[probs["split"] == "val", "id"]) == set(folds.loc[folds["fold"] == 1, "id"])
    np.testing.assert_allclose(probs[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)


def label_coded_images(cached, relabel_held_out: bool):
    """Images whose brightness says the label; on the early-stopping rows, optionally a lie.

    Training learns brightness -> label on the fit rows, so when the held-out rows' images
    claim other labels, their loss worsens with every epoch after the first.
    """
    cache, positions, folds = cached
    train = folds[folds["fold"] != 1].reset_index(drop=True)
    held_out = set(train.loc[inner_split(train, 0.2, 42), "id"])
    label_of = folds.set_index("id")["label"].map(CLASSES.index)
    images = np.zeros_like(cache)
    for sample_id, row in positions.items():
        code = label_of[sample_id]
        if relabel_held_out and sample_id in held_out:
            code = (code + 1) % len(CLASSES)
        images[row] = 40 + 80 * code
    return images, positions, folds


def test_best_epoch_weights_are_restored_when_validation_loss_worsens(cached, tmp_path):
    images, positions, folds = label_coded_images(cached, relabel_held_out=True)
    model = train_tiny_branch(
        (images, positions, folds), tmp_path, epochs=6, patience=10, learning_rate=0.01
    )
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    # The premise: every later epoch is worse on the early-stopping rows than epoch 1.
    assert len(history) == 6 and history["val_loss"].iloc[0] < history["val_loss"].iloc[1:].min()
    assert best_epoch(tmp_path / "history.tsv") == 1
    train = folds[folds["fold"] != 1].reset_index(drop=True)
    stop = train[inner_split(train, 0.2, 42)]
    x_stop = images[positions[stop["id"]].to_numpy()]
    y_stop = stop["label"].map(CLASSES.index).to_numpy()
    loss = model.evaluate(x_stop, y_stop, batch_size=32, verbose=0, return_dict=True)["loss"]
    # The returned model is epoch 1's, not the last epoch's.
    assert loss == pytest.approx(history["val_loss"].iloc[0], rel=1e-4)
    assert loss < history["val_loss"].iloc[-1] - 0.05
    _, stored = read_branch_weights(tmp_path / "checkpoint.weights.h5")
    for name, values in stored.items():
        for value, weight in zip(values, model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(value, weight)


def test_kappa_metric_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 200)
    probs = rng.random((200, 3))
    probs[np.arange(200), truth] += rng.random(200)  # partly right
    metric = CohenKappa(3)
    metric.update_state(truth[:120], probs[:120])
    metric.update_state(truth[120:], probs[120:])
    expected = cohen_kappa_score(truth, probs.argmax(axis=1))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
    metric.reset_state()
    metric.update_state(truth, np.eye(3)[truth])
    assert float(metric.result()) == pytest.approx(1.0)


def index_coded(cached):
    """The cache with each image's row number written into its first two pixels."""
    cache, positions, folds = cached
    images = np.zeros_like(cache)
    rows = np.arange(len(cache))
    images[:, 0, 0, 0], images[:, 0, 0, 1] = rows // 256, rows % 256
    return images, positions, folds


def fitted_ids(x, positions) -> set:
    """Sample ids of the images in a fit input (an array, or a dict of named inputs)."""
    arrays = x.values() if isinstance(x, dict) else [x]
    ids = set()
    id_at = pd.Series(positions.index, index=positions.to_numpy())
    for array in arrays:
        if np.ndim(array) == 4:
            rows = np.asarray(array)[:, 0, 0, 0].astype(int) * 256 + np.asarray(array)[:, 0, 0, 1]
            ids |= set(id_at[rows.astype(int)])
    return ids


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_no_outer_validation_row_reaches_an_image_fit(cached, keras_fits, tmp_path, fold):
    from fusion_dag.ablation import train_joint
    from fusion_dag.image import configure_tensorflow, train_branch

    images, positions, folds = index_coded(cached)
    configure_tensorflow(1, 1, 42)
    task = branch_fold((images, positions, folds), fold=fold, epochs=1)
    train_branch(task, tmp_path / "checkpoint.weights.h5", tmp_path / "history.tsv")
    rf = folds[["id"]].assign(split=folds["fold"].eq(fold).map({True: "val", False: "train"}))
    rf[[f"prob_{c}" for c in CLASSES]] = 1.0 / len(CLASSES)
    for strategy in ("V1", "V2"):
        train_joint(task, strategy, rf, 0.7)
    assert len(keras_fits) == 3
    validation = set(folds.loc[folds["fold"] == fold, "id"])
    training = set(folds["id"]) - validation
    for x, early_stopping in keras_fits:
        fit, stop = fitted_ids(x, positions), fitted_ids(early_stopping, positions)
        assert fit and stop and not fit & stop
        assert fit | stop == training, "outer validation rows reached a fit or early stopping"


def test_kappa_metric_is_a_registered_keras_object():
    import keras

    config = keras.saving.serialize_keras_object(CohenKappa(4))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, CohenKappa) and restored.n_classes == 4
