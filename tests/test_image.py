import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fusion_dag.branch import build_image_branch, configure_tensorflow, load_backbone_weights
from fusion_dag.checkpoint import read_branch_weights, save_branch_weights
from fusion_dag.folds import inner_split
from fusion_dag.image import (
    CachedBatches,
    CohenKappa,
    branch_probabilities,
    initial_branch,
    learning_verdict,
    train_branch,
)
from fusion_dag.views import CROP
from tests.conftest import (
    CLASSES,
    IMAGE_SETTINGS,
    REPO,
    branch_fold,
    cache_modality,
    thermal_feature_cache,
    train_tiny_branch,
)


def test_cache_is_memory_mapped_uint8_and_holds_each_views_crop(cached):
    cache, views, _ = cached
    assert isinstance(cache, np.memmap) and cache.dtype == np.uint8
    assert cache.shape == (len(views), 24, 24, 3) and views["id"].duplicated().any()
    first = views.iloc[0]
    window = tuple(int(first[c]) for c in CROP)
    assert window[2] - window[0] == window[3] - window[1] < first["width"] / 2
    with Image.open(first["path"]) as image:
        expected = np.asarray(image.crop(window).resize((24, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(cache[0], expected)


def test_inner_split_holds_out_whole_patients(cached):
    _, _, folds = cached
    train = folds[folds["fold"] != 1].reset_index(drop=True)
    held_out = inner_split(train, 0.2, 42)
    assert 0.1 < held_out.mean() < 0.35
    assert not set(train.loc[held_out, "group"]) & set(train.loc[~held_out, "group"])


def test_training_stops_early_after_patience(cached, tmp_path):
    _, _, folds = cached
    # No warm-up: patience alone decides (the warm-up has its own test, on the faint views).
    model = train_tiny_branch(cached, tmp_path, epochs=30, learning_rate=0.0, warmup_epochs=0)
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    # With a zero learning rate the loss never improves: patience 2 stops after 3 epochs.
    assert len(history) == 3
    assert {"loss", "val_loss", "kappa", "val_kappa"} <= set(history.columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.weights.h5", "history.tsv"]
    probs, _ = branch_probabilities(model, branch_fold(cached))
    validation = folds.loc[folds["fold"] == 1, "id"]
    assert set(probs.loc[probs["split"] == "val", "id"]) == set(
        validation[validation.isin(cached[1]["id"])]
    )
    np.testing.assert_allclose(probs[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)


def label_coded_images(cached, relabel_held_out: bool):
    """Images whose brightness says the label; on the early-stopping rows, optionally a lie.

    Training learns brightness -> label on the fit rows, so when the held-out rows' images
    claim other labels, their loss worsens with every epoch after the first.
    """
    cache, views, folds = cached
    train = branch_fold(cached).rows()
    train = train[train["split"] == "train"].reset_index(drop=True)
    held_out = set(train.loc[inner_split(train, 0.2, 42), "id"])
    label_of = folds.set_index("id")["label"].map(CLASSES.index)
    images = np.zeros_like(cache)
    for row, sample_id in views["id"].items():
        code = label_of[sample_id]
        if relabel_held_out and sample_id in held_out:
            code = (code + 1) % len(CLASSES)
        images[row] = 40 + 80 * code
    return images, views, folds


def test_best_epoch_weights_are_restored_when_validation_loss_worsens(cached, tmp_path):
    images, views, folds = label_coded_images(cached, relabel_held_out=True)
    configure_tensorflow(1, 1, 42)
    # No warm-up: Keras' EarlyStopping never keeps an epoch inside one, and epoch 1 is the best.
    task = branch_fold(
        (images, views, folds), epochs=6, patience=10, learning_rate=0.01, warmup_epochs=0
    )
    model, fit = train_branch(task, tmp_path / "checkpoint.weights.h5", tmp_path / "history.tsv")
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    # The premise: every later epoch is worse on the early-stopping rows than epoch 1.
    assert len(history) == 6 and history["val_loss"].iloc[0] < history["val_loss"].iloc[1:].min()
    assert fit["best_epoch"] == 1
    train = task.rows()
    train = train[train["split"] == "train"].reset_index(drop=True)
    x_stop, y_stop, w_stop = task.training_arrays(train[inner_split(train, 0.2, 42)], None)
    loss = model.evaluate(
        x_stop, y_stop, sample_weight=w_stop, batch_size=32, verbose=0, return_dict=True
    )["loss"]
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
    cache, views, folds = cached
    images = np.zeros_like(cache)
    rows = np.arange(len(cache))
    images[:, 0, 0, 0], images[:, 0, 0, 1] = rows // 256, rows % 256
    return images, views, folds


def fitted_ids(x, views) -> set:
    """Visit ids of the views in a fit input (an array, or a dict of named inputs)."""
    arrays = x.values() if isinstance(x, dict) else [x]
    ids = set()
    id_at = views["id"]
    for array in arrays:
        if np.ndim(array) == 4:
            rows = np.asarray(array)[:, 0, 0, 0].astype(int) * 256 + np.asarray(array)[:, 0, 0, 1]
            ids |= set(id_at[rows.astype(int)])
    return ids


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_no_outer_validation_row_reaches_an_image_fit(cached, keras_fits, tmp_path, fold):
    from fusion_dag.ablation import train_joint

    images, views, folds = index_coded(cached)
    configure_tensorflow(1, 1, 42)
    task = branch_fold((images, views, folds), fold=fold, epochs=1)
    train_branch(task, tmp_path / "checkpoint.weights.h5", tmp_path / "history.tsv")
    rf = folds[["id"]].assign(split=folds["fold"].eq(fold).map({True: "val", False: "train"}))
    rf[[f"prob_{c}" for c in CLASSES]] = 1.0 / len(CLASSES)
    for strategy in ("V1", "V2"):
        train_joint(task, strategy, rf, 0.7)
    assert len(keras_fits) == 3
    validation = set(folds.loc[folds["fold"] == fold, "id"])
    training = set(views["id"]) - validation
    patient = folds.set_index("id")["group"]
    for x, early_stopping in keras_fits:
        fit, stop = fitted_ids(x, views), fitted_ids(early_stopping, views)
        assert fit and stop and not fit & stop
        # Views travel with their visit, visits with their patient.
        assert not set(patient[list(fit)]) & set(patient[list(stop)])
        assert fit | stop == training, "outer validation rows reached a fit or early stopping"


def test_kappa_metric_is_a_registered_keras_object():
    import keras

    config = keras.saving.serialize_keras_object(CohenKappa(4))
    restored = keras.saving.deserialize_keras_object(config)
    assert isinstance(restored, CohenKappa) and restored.n_classes == 4


# Real backbones accept 32 px and up; one short epoch on the 40-patient demo is enough to prove
# the contract (train alone, checkpoint, load by name, freeze, reproduce).
# The training is the same code for every backbone (train_branch); tracing a large backbone's
# training step costs about a minute of CPU each (DenseNet121: 75 s of one 1-epoch fit), so
# the suite trains the smallest and checks the others' checkpoint, load and freeze by name on
# their built weights.
TRAINED_BACKBONE = "MobileNetV3Small"
BACKBONE_SETTINGS = {"size": 32, "epochs": 1, "batch_size": 16, "patience": 1}


@pytest.fixture(scope="module")
def few_cached32(cached32):
    """``cached32`` restricted to 20 of its 40 patients (their views, visits and folds): the
    contract needs rows of every class in each split, not many rows, and the large backbones
    train and predict in proportion to the views."""
    cache, views, folds = cached32
    patients = sorted(folds["group"].unique())[:20]
    keep = views["group"].isin(patients).to_numpy()
    visits = folds[folds["group"].isin(patients)].reset_index(drop=True)
    return np.asarray(cache[keep]), views[keep].reset_index(drop=True), visits


def trained_backbone(cached32, folder, **settings):
    """Train the thermal branch on fold 1 with a backbone; return (model, task)."""
    configure_tensorflow(1, 1, 42)
    task = branch_fold(cached32, **{**BACKBONE_SETTINGS, **settings})
    model, _ = train_branch(task, folder / "checkpoint.weights.h5", folder / "history.tsv")
    return model, task


@pytest.mark.parametrize(
    "backbone", ["EfficientNetB0", "MobileNetV3Small", "ResNet50V2", "DenseNet121"]
)
def test_backbone_checkpoint_loads_frozen_by_name_and_reproduces_in_fusion(
    backbone, few_cached32, tmp_path, caplog
):
    from fusion_dag.checkpoint import CheckpointError, checkpoint_sidecar
    from fusion_dag.fusion import ImageMember, fuse_v3

    checkpoint = tmp_path / "checkpoint.weights.h5"
    if backbone == TRAINED_BACKBONE:
        model, task = trained_backbone(few_cached32, tmp_path, backbone=backbone, fine_tune="all")
    else:
        configure_tensorflow(1, 1, 42)
        settings = {**BACKBONE_SETTINGS, "backbone": backbone, "fine_tune": "all"}
        task = branch_fold(few_cached32, **settings)
        model = initial_branch(task)
        save_branch_weights(model, "thermal_map", checkpoint)
    nested = model.get_layer("thermal_map_backbone")
    assert len(nested.layers) > 100 and nested.trainable_weights
    probs, view_probs = branch_probabilities(model, task)
    member = ImageMember(
        probs=probs,
        checkpoint=checkpoint,
        sidecar=checkpoint_sidecar(model, "thermal_map", backbone, (1, 1), CLASSES, checkpoint),
        settings={"backbone": backbone},
        images=few_cached32[0],
        views=few_cached32[1],
        view_probs=view_probs,
    )
    expected = {"repeat": 1, "fold": 1, "classes": CLASSES}
    with caplog.at_level(logging.INFO):
        fused = fuse_v3({"thermal_map": 1.0}, None, {"thermal_map": member}, expected, 16)
    label = f"thermal_map_backbone (nested model, {len(nested.weights)} weights)"
    assert f"Loaded weights for layer: {label}" in caplog.text
    assert f"Frozen layer: {label}" in caplog.text
    # One line for the backbone, not one per inner layer: backbone and softmax head.
    assert caplog.text.count("Loaded weights for layer:") == 2
    with pytest.raises(CheckpointError, match=f"backbone is '{backbone}', the fusion job needs"):
        fuse_v3(
            {"thermal_map": 1.0},
            None,
            {"thermal_map": replace(member, settings={"backbone": "small_cnn"})},
            expected,
            16,
        )
    # fuse_v3 refuses a branch that does not reproduce; the fused output is that branch.
    aligned = probs.merge(fused, on=["id", "split"], suffixes=("", "_fused"))
    np.testing.assert_allclose(
        aligned[[f"prob_{c}_fused" for c in CLASSES]].to_numpy(),
        aligned[[f"prob_{c}" for c in CLASSES]].to_numpy(),
        atol=1e-6,
    )


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A MobileNetV3Small weights file made here, and its weights by layer name."""
    import keras

    keras.utils.set_random_seed(3)
    reference = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    path = tmp_path_factory.mktemp("backbone") / "mobilenet.weights.h5"
    reference.save_weights(path)
    return path, {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def changed_layers(model, stored: dict) -> set:
    """Names of the backbone layers whose weights differ from ``stored``."""
    backbone = model.get_layer("thermal_map_backbone")
    return {
        name
        for name, weights in stored.items()
        if any(
            not np.array_equal(a, b)
            for a, b in zip(backbone.get_layer(name).get_weights(), weights, strict=True)
        )
    }


def test_backbone_weights_file_is_loaded_and_frozen_leaves_it_unchanged(
    cached32, backbone_file, tmp_path
):
    path, stored = backbone_file
    settings = {"backbone": "MobileNetV3Small", "backbone_weights": str(path)}
    untrained = build_image_branch("thermal_map", (32, 32, 3), 3, settings)
    load_backbone_weights(untrained, "thermal_map", settings)
    assert changed_layers(untrained, stored) == set()  # every weight is the file's
    head_before = untrained.get_layer("thermal_map_probs").get_weights()[0]
    model, _ = trained_backbone(cached32, tmp_path, **settings, fine_tune="frozen", epochs=2)
    assert changed_layers(model, stored) == set()
    assert not np.array_equal(model.get_layer("thermal_map_probs").get_weights()[0], head_before)


def backbone_weights(model) -> dict | None:
    """Layer name -> weights of the thermal branch's backbone; None for a model without one
    (the head trained on cached features)."""
    names = [layer.name for layer in model.layers]
    if "thermal_map_backbone" not in names:
        return None
    backbone = model.get_layer("thermal_map_backbone")
    return {layer.name: layer.get_weights() for layer in backbone.layers if layer.weights}


def differing(first: dict, second: dict) -> set:
    """Layers whose weights differ between two :func:`backbone_weights` records."""
    return {
        name
        for name in first
        if any(not np.array_equal(a, b) for a, b in zip(first[name], second[name], strict=True))
    }


@pytest.fixture
def fit_calls(monkeypatch):
    """Each training phase's fit: its backbone weights before and after, its learning rate."""
    import fusion_dag.image as image

    calls = []
    original = image.fit_with_early_stopping

    def spy(model, fit, stop, settings, *callbacks):
        before = backbone_weights(model)
        result = original(model, fit, stop, settings, *callbacks)
        after = backbone_weights(model)
        rate = float(model.optimizer.learning_rate)
        calls.append({"before": before, "after": after, "learning_rate": rate})
        return result

    monkeypatch.setattr(image, "fit_with_early_stopping", spy)
    return calls


def feature_cache_of(cached32, settings: dict, folder):
    """The feature cache of the cached demo views for a branch of ``settings``."""
    branch = build_image_branch("thermal_map", (32, 32, 3), 3, settings)
    load_backbone_weights(branch, "thermal_map", settings)
    return thermal_feature_cache(branch, cached32[0], settings, folder)


@pytest.mark.parametrize("from_cache", [False, True], ids=["pixels", "cached features"])
def test_fine_tuning_trains_the_head_first_then_only_the_top_layers(
    cached32, backbone_file, tmp_path, fit_calls, from_cache
):
    path, stored = backbone_file
    settings = {"backbone": "MobileNetV3Small", "backbone_weights": str(path), "fine_tune": 6}
    settings = {**BACKBONE_SETTINGS, **settings, "epochs": 2, "fine_tune_learning_rate": 3e-4}
    features = feature_cache_of(cached32, settings, tmp_path) if from_cache else None
    configure_tensorflow(1, 1, 42)
    task = replace(branch_fold(cached32, **settings), features=features)
    model, _ = train_branch(task, tmp_path / "checkpoint.weights.h5", tmp_path / "history.tsv")
    head, tuned = fit_calls
    # Phase 1 trains the head alone: on cached features a head model without the backbone, on
    # pixels the branch whose backbone weights stay the file's throughout.
    if from_cache:
        assert head["before"] is None and head["after"] is None
    else:
        assert differing(head["before"], stored) == set()
        assert differing(head["after"], stored) == set()
    assert differing(tuned["before"], stored) == set()
    assert head["learning_rate"] == pytest.approx(task.settings["learning_rate"])
    # Phase 2: the configured learning rate; only the top 6 layers, BatchNorm excepted, change.
    assert tuned["learning_rate"] == pytest.approx(3e-4)
    backbone = model.get_layer("thermal_map_backbone")
    top = {layer.name for layer in backbone.layers[-6:]}
    trainable = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trainable and trainable <= top
    assert not any("BatchNorm" in type(backbone.get_layer(n)).__name__ for n in trainable)
    changed = differing(tuned["after"], stored)
    assert changed and changed <= trainable
    history = pd.read_csv(tmp_path / "history.tsv", sep="\t")
    assert sorted(history["phase"].unique()) == [1, 2]
    assert list(history["epoch"]) == list(range(len(history)))


LEARNED = {"train": ["I", "P", "R", "P"], "val": ["P", "I"]}


def test_a_branch_that_improved_after_the_warm_up_and_fits_its_visits_learned():
    from fusion_dag.image import not_learned_reasons

    assert not_learned_reasons(6, 5, 0.2, LEARNED) == []
    assert not_learned_reasons(2, 0, 0.05, LEARNED) == []  # the threshold itself is learned
    assert not_learned_reasons(3, 0, 0.3, {"train": ["I", "P"], "val": []}) == []  # final


@pytest.mark.parametrize(
    ("best_epoch", "warmup", "kappa", "predicted", "reason"),
    [
        (1, 0, 0.3, LEARNED, "best epoch 1, at or before the warm-up's end"),
        (5, 5, 0.3, LEARNED, "best epoch 5, at or before the warm-up's end (warmup_epochs 5)"),
        (8, 5, 0.049, LEARNED, "training kappa 0.049 < 0.05"),
        (8, 5, 0.3, {**LEARNED, "val": ["R", "R"]}, "class R predicted for every val visit"),
        (8, 5, 0.3, {**LEARNED, "train": ["P"] * 4}, "class P predicted for every train visit"),
    ],
)
def test_each_sign_of_a_branch_that_learned_nothing_is_a_reason(
    best_epoch, warmup, kappa, predicted, reason
):
    from fusion_dag.image import not_learned_reasons

    reasons = not_learned_reasons(best_epoch, warmup, kappa, predicted)
    assert len(reasons) == 1 and reasons[0].startswith(reason)


def test_a_branch_that_learned_nothing_is_warned_about_by_modality_repeat_and_fold(caplog):
    from fusion_dag.image import warn_if_not_learned

    verdict = {"learned": False, "not_learned_reasons": ["training kappa 0.010 < 0.05"]}
    with caplog.at_level(logging.WARNING):
        warn_if_not_learned(verdict, "wound_photo", "repeat 2, fold 3")
        warn_if_not_learned({"learned": True, "not_learned_reasons": []}, "depth_map", "final")
    assert len(caplog.records) == 1 and caplog.records[0].levelname == "WARNING"
    assert caplog.text.count(
        "wound_photo branch (repeat 2, fold 3) learned nothing from its images: training kappa "
        "0.010 < 0.05"
    )


def test_a_branch_fed_constant_images_is_marked_as_not_learned(cached, tmp_path, caplog):
    from fusion_dag.image import BranchFold, train_stage

    cache, views, folds = cached
    task = BranchFold(
        np.zeros_like(cache), views, folds, 1, "thermal_map", CLASSES, IMAGE_SETTINGS, 42
    )
    with caplog.at_level(logging.WARNING):
        _, _, _, record = train_stage(
            task,
            tmp_path / "checkpoint.weights.h5",
            tmp_path / "history.tsv",
            1,
            "repeat 1, fold 1",
        )
    assert record["learned"] is False
    assert any("predicted for every train visit" in r for r in record["not_learned_reasons"])
    assert "thermal_map branch (repeat 1, fold 1) learned nothing" in caplog.text


def test_cached_batches_gather_each_batch_in_row_order_and_predict_as_the_full_array():
    images = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    rows = np.array([8, 2, 5, 0, 7, 1, 3])
    batches = CachedBatches({"thermal_map_input": (images, rows)}, batch_size=3)
    gathered = [batches[i][0]["thermal_map_input"] for i in range(len(batches))]
    assert [len(batch) for batch in gathered] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(gathered), images[rows])
    model = build_image_branch("thermal_map", (16, 16, 3), len(CLASSES))
    np.testing.assert_allclose(
        model.predict(batches, verbose=0),
        model.predict(images[rows], batch_size=3, verbose=0),
        atol=1e-6,
    )


# The faint thermal demo (only the wound core follows the phase, by about 1 degree C, under a
# per-view offset of that size), 60 patients at 24 px with the demo's thermal batch and
# patience: the training before the plateau fix stays on its first plateau, the defaults leave
# it (bench/plateau.py measures both at the study's size).
FAINT_SETTINGS = {**IMAGE_SETTINGS, "epochs": 20, "batch_size": 64, "patience": 5}
BEFORE_THE_FIX = {
    "standardize": False,
    "batch_norm": False,
    "reduce_lr_patience": 0,
    "pooling": "average",
}
# The plateau settings as config/config.yaml ships them: the test follows a change of default.
NEW_DEFAULTS = {
    key: yaml.safe_load((REPO / "config/config.yaml").read_text())["image_model"][key]
    for key in ("standardize", "batch_norm", "reduce_lr_patience", "warmup_epochs", "pooling")
}


@pytest.fixture(scope="module")
def faint_cached(tmp_path_factory):
    """The faint demo's thermal views cached at 24 px with 3 channels, with folds."""
    from fusion_dag.demo import write_demo

    table = tmp_path_factory.mktemp("faint") / "samples.csv"
    write_demo(table, patients=60, seed=7, thermal_signal="faint")
    return cache_modality(table, tmp_path_factory.mktemp("faint_cache"), 24, channels=3)


def train_kappa_and_best_epoch(cached, folder, settings: dict) -> tuple:
    """Train fold 1 with ``settings`` over FAINT_SETTINGS; (training visits' kappa, best epoch,
    classes predicted for the training visits, the image stage's learning verdict)."""
    from sklearn.metrics import cohen_kappa_score

    from fusion_dag.artifacts import prob_columns

    configure_tensorflow(1, 1, 42)
    task = branch_fold(cached, **{**FAINT_SETTINGS, **settings})
    folder.mkdir()
    model, fit = train_branch(task, folder / "checkpoint.weights.h5", folder / "history.tsv")
    probs, _ = branch_probabilities(model, task)
    train = probs[probs["split"] == "train"]
    predicted = np.asarray(CLASSES)[train[prob_columns(CLASSES)].to_numpy().argmax(axis=1)]
    labels = task.rows().set_index("id").loc[train["id"], "label"].to_numpy()
    verdict = learning_verdict(task, probs, fit)
    return cohen_kappa_score(labels, predicted), fit["best_epoch"], len(set(predicted)), verdict


def test_faint_thermal_views_leave_the_first_plateau_only_with_the_new_defaults(
    faint_cached, tmp_path
):
    old = train_kappa_and_best_epoch(
        faint_cached, tmp_path / "old", {**BEFORE_THE_FIX, "warmup_epochs": 0}
    )
    new = train_kappa_and_best_epoch(faint_cached, tmp_path / "new", NEW_DEFAULTS)
    kappa, best_epoch, _, verdict = old
    assert best_epoch == 1 and kappa < 0.1  # the plateau: the first epoch's weights
    assert verdict["learned"] is False
    assert verdict["not_learned_reasons"][0].startswith("best epoch 1")
    kappa, best_epoch, n_classes, verdict = new
    assert best_epoch > 5 and kappa > 0.2 and n_classes > 1
    assert verdict == {"learned": True, "not_learned_reasons": []}
