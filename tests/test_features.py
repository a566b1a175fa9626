"""The feature cache: a frozen backbone's features computed once, the head trained on them, and
the V3 check with a cache."""

import json
import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from bench.features import calibrated_backbone_file
from fusion_dag.checkpoint import checkpoint_sidecar, save_branch_weights
from fusion_dag.demo import write_demo
from fusion_dag.features import (
    FEATURE_HASHES,
    FeatureCache,
    FeatureCacheError,
    compute_features,
    flips,
    load_feature_cache,
    no_cache_reason,
)
from tests.conftest import (
    CLASSES,
    HEADLINE,
    IMAGE_SETTINGS,
    SWEEP,
    TINY,
    run_snakemake,
    scheduled_jobs,
    thermal_feature_cache,
)

# The tests of the module's run share one xdist worker, which builds the run once.
RUN = pytest.mark.xdist_group("feature_run")

FROZEN = {
    "backbone": "MobileNetV3Small",
    "backbone_weights": None,
    "fine_tune": "frozen",
    "feature_cache": True,
    "augmentation": {"flip": "horizontal"},
    "mixed_precision": False,
}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"backbone": "small_cnn"}, "small_cnn trains all its layers"),
        ({"feature_cache": False}, "feature_cache is false"),
        ({"augmentation": {"flip": "horizontal", "rotation": 0.1}}, "transforms the pixels"),
        ({"augmentation": {"flip": "vertical"}}, "transforms the pixels"),
        ({"fine_tune": "all"}, "trained from random weights"),
        ({"mixed_precision": True}, "float16"),
    ],
)
def test_a_branch_without_fixed_features_has_no_cache_and_says_why(change, reason):
    assert reason in no_cache_reason({**FROZEN, **change})


def test_fixed_pixels_are_cached_with_flips_only_for_horizontal_flips():
    assert no_cache_reason(FROZEN) is None
    assert flips(FROZEN)
    plain = {**FROZEN, "augmentation": None}
    assert no_cache_reason(plain) is None and not flips(plain)
    # Pretrained weights can be cached for phase 1 of fine-tuning too.
    assert no_cache_reason({**FROZEN, "backbone_weights": "b.weights.h5", "fine_tune": 5}) is None


@pytest.fixture(scope="session")
def calibrated(cached32, tmp_path_factory):
    """A MobileNetV3Small weights file, its BatchNorm statistics calibrated on the demo's
    thermal crops (a random backbone in inference mode gives features of about 1e-11)."""
    path = tmp_path_factory.mktemp("calibrated") / "mobilenet.weights.h5"
    return calibrated_backbone_file("MobileNetV3Small", np.asarray(cached32[0][:128]), path)


@pytest.fixture
def pretrained(calibrated):
    """The frozen settings with the calibrated weights file as pretrained weights."""
    return {**FROZEN, "backbone_weights": str(calibrated)}


def frozen_branch(settings, seed=5):
    """A frozen MobileNetV3Small branch at 32 px with its configured weights, seeded."""
    from fusion_dag.branch import build_image_branch, configure_tensorflow, load_backbone_weights

    configure_tensorflow(1, 1, 42)
    branch = build_image_branch("thermal_map", (32, 32, 3), 3, settings, seed=seed)
    load_backbone_weights(branch, "thermal_map", settings)
    return branch


def cache_of(branch, images, flip):
    """The feature cache of ``images`` (in memory) and its variants."""
    from fusion_dag.branch import feature_extractor

    extractor = feature_extractor(branch, "thermal_map")
    target = np.zeros((len(images), 1 + flip, extractor.output.shape[-1]), dtype=np.float32)
    compute_features(extractor, images, flip, target)
    return FeatureCache(target, {"flip": flip}), extractor


def test_cached_variants_are_the_backbone_on_the_view_and_its_mirror_image(cached32, pretrained):
    images = np.asarray(cached32[0][:40])
    cache, extractor = cache_of(frozen_branch(pretrained), images, flip=True)
    mirrored = extractor.predict(images[:, :, ::-1].astype("float32"), verbose=0)
    np.testing.assert_allclose(cache.features[:, 1], mirrored, atol=1e-5)
    np.testing.assert_allclose(
        cache.features[:, 0], extractor.predict(images.astype("float32"), verbose=0), atol=1e-5
    )
    # The wound crops are not symmetric: the two variants differ.
    assert np.abs(cache.features[:, 0] - cache.features[:, 1]).max() > 1e-3


def test_batches_draw_a_new_order_and_flip_per_view_each_epoch():
    features = np.arange(20 * 2 * 3, dtype=np.float32).reshape(20, 2, 3)
    cache = FeatureCache(features, {"flip": True})
    views = (np.arange(20), np.zeros(20, dtype=int), np.ones(20))
    from fusion_dag.image import FeatureBatches

    batches = FeatureBatches(cache, views, 8, seed=1)
    first = np.concatenate([batches[i][0] for i in range(len(batches))])
    batches.on_epoch_end()
    second = np.concatenate([batches[i][0] for i in range(len(batches))])
    # Every view once per epoch, as itself or as its flip (variant rows differ by 3).
    for epoch in (first, second):
        assert sorted(epoch[:, 0] // 6) == list(range(20))
        assert set(((epoch[:, 0] % 6) // 3).astype(int)) == {0, 1}
    assert not np.array_equal(first, second)
    again = FeatureBatches(cache, views, 8, seed=1)
    np.testing.assert_array_equal(np.concatenate([again[i][0] for i in range(3)]), first)


def test_head_on_cached_features_trains_as_the_branch_on_pixels(cached32, pretrained):
    """One epoch from the same initial weights, in the same batches and dropout masks."""
    from fusion_dag.branch import copy_head, feature_head
    from fusion_dag.image import compile_branch

    images = np.asarray(cached32[0][:48])
    branch = frozen_branch({**pretrained, "augmentation": None})
    branch.get_layer("thermal_map_backbone").trainable = False
    cache, _ = cache_of(branch, images, flip=False)
    head = feature_head(branch, "thermal_map", seed=5)
    rng = np.random.default_rng(0)
    labels, weights = rng.integers(0, 3, len(images)), rng.uniform(0.5, 2.0, len(images))
    compile_branch(branch, 1e-3, 3)
    compile_branch(head, 1e-3, 3)
    start = branch.get_layer("thermal_map_probs").get_weights()
    branch.fit(images, labels, sample_weight=weights, batch_size=16, epochs=1, shuffle=False)
    batches = unshuffled_batches(cache, labels, weights)
    head.fit(batches, epochs=1, shuffle=False)
    on_pixels = branch.get_layer("thermal_map_probs").get_weights()
    on_features = head.get_layer("thermal_map_probs").get_weights()
    moved = max(np.abs(a - b).max() for a, b in zip(on_pixels, start, strict=True))
    difference = max(np.abs(a - b).max() for a, b in zip(on_pixels, on_features, strict=True))
    # Three Adam steps move weights by up to 3e-3; the features agree with the backbone's
    # in-graph output to float32 round-off (~1e-6), so the trajectories agree far below that.
    assert moved > 1e-3
    assert difference < 1e-5, difference
    copy_head(head, branch, "thermal_map")
    np.testing.assert_array_equal(
        branch.get_layer("thermal_map_probs").get_weights()[0], on_features[0]
    )


def unshuffled_batches(cache, labels, weights):
    """Unshuffled batches of 16 over every cached view."""
    from fusion_dag.image import FeatureBatches

    return FeatureBatches(
        cache, (np.arange(len(labels)), labels, weights), 16, seed=0, shuffle=False
    )


@pytest.fixture
def cached_member(cached32, pretrained, tmp_path):
    """A frozen branch's image-stage outputs with a feature cache on disk: (member, branch)."""
    from fusion_dag.branch import feature_head
    from fusion_dag.fusion import ImageMember

    images, views, _ = cached32
    branch = frozen_branch(pretrained)
    cache = thermal_feature_cache(branch, images, pretrained, tmp_path)
    probs = feature_head(branch, "thermal_map").predict(cache.features[:, 0], verbose=0)
    view_probs = views[["view", "id"]].assign(split="val")
    view_probs[[f"prob_{c}" for c in CLASSES]] = probs
    member = ImageMember(
        probs=None,
        checkpoint=tmp_path / "checkpoint.weights.h5",
        sidecar={},
        settings=pretrained,
        images=images,
        views=views,
        view_probs=view_probs,
        features=cache,
    )
    return member, branch


def saved(member, branch):
    """``member`` with ``branch`` written as its checkpoint and a matching sidecar."""
    save_branch_weights(branch, "thermal_map", member.checkpoint)
    sidecar = checkpoint_sidecar(
        branch, "thermal_map", FROZEN["backbone"], (1, 1), CLASSES, member.checkpoint
    )
    return replace(member, sidecar=sidecar)


REQUIRED = {"repeat": 1, "fold": 1, "classes": CLASSES}


def test_v3_check_with_a_cache_scores_from_features_and_spot_checks_pixels(cached_member, caplog):
    from fusion_dag.fusion import frozen_visit_probs

    member, branch = cached_member
    with caplog.at_level(logging.INFO):
        visits = frozen_visit_probs("thermal_map", saved(member, branch), REQUIRED, 32)
    assert len(visits) == member.views["id"].nunique()
    assert "equal the feature cache's by hash" in caplog.text
    assert f"on {len(member.views)} views: max abs diff" in caplog.text
    assert "(from cached features)" in caplog.text
    assert (
        "on 8 views: max abs diff" in caplog.text and "(from pixels, whole branch)" in caplog.text
    )


def test_v3_check_refuses_a_backbone_that_differs_from_the_cache_naming_the_layer(
    cached_member,
):
    from fusion_dag.fusion import frozen_visit_probs

    member, branch = cached_member
    layer = branch.get_layer("thermal_map_backbone").get_layer("expanded_conv_project")
    weights = layer.get_weights()
    weights[0][0, 0, 0, 0] += 1e-3  # one weight
    layer.set_weights(weights)
    with pytest.raises(FeatureCacheError, match="thermal_map_backbone/expanded_conv_project;"):
        frozen_visit_probs("thermal_map", saved(member, branch), REQUIRED, 32)


def test_v3_check_refuses_a_head_that_does_not_reproduce_the_image_stage(cached_member):
    from fusion_dag.checkpoint import CheckpointError
    from fusion_dag.fusion import frozen_visit_probs

    member, branch = cached_member
    tampered = member.view_probs.copy()
    tampered.loc[3, "prob_I"] += 1e-3
    with pytest.raises(CheckpointError, match="from cached features by 1.00e-03"):
        frozen_visit_probs(
            "thermal_map", saved(replace(member, view_probs=tampered), branch), REQUIRED, 32
        )


def test_a_rotation_augmentation_trains_on_pixels_and_the_log_says_why(cached32, caplog):
    from fusion_dag.image import BranchFold, log_feature_source

    images, views, folds = cached32
    settings = {**IMAGE_SETTINGS, **FROZEN, "augmentation": {"rotation": 0.1}}
    task = BranchFold(images, views, folds, 1, "thermal_map", CLASSES, settings, 42)
    with caplog.at_level(logging.INFO):
        log_feature_source(task)
    assert (
        "No feature cache for thermal_map: augmentation {'rotation': 0.1} transforms the pixels"
        in caplog.text
    )


# A frozen MobileNetV3Small on the demo's thermal views, its head on cached features and
# their flips; `predict` scores the training table itself from pixels. Two repeats of two folds:
# this run is also the end-to-end test of repeated partitions.
FEATURE_RUN = {
    **TINY,
    "cv": {"folds": 2, "repeats": 2, "seed": 42},
    "samples": "demo.csv",
    "image_dir": ".",
    "image_model": {**IMAGE_SETTINGS, "size": 32, "channels": 3, **FROZEN},
    "modalities": {"thermal_map": {"images": "thermal_images.csv", "size": 32}},
    "combinations": [["metadata", "thermal_map"]],
    # The only combination run is the primary (no primary contrast: this run is about the cache).
    "evaluation": {"bootstrap": 200, "confidence": 0.95, "primary": "metadata+thermal_map"},
    "predict": {"samples": "demo.csv", "images": {"thermal_map": "thermal_images.csv"}},
}


@pytest.fixture(scope="module")
def feature_config(calibrated):
    """FEATURE_RUN with the calibrated weights file as the pretrained backbone."""
    return changed(FEATURE_RUN, image_model={"backbone_weights": str(calibrated)})


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, feature_config):
    """A finished run with a feature cache, through the fusion's out-of-fold table and predict
    (shared, read-only)."""
    workdir = tmp_path_factory.mktemp("feature_run")
    write_demo(workdir / "demo.csv", patients=40, seed=7)
    # The headline, the weight sweep and predict: every job these tests read, not the report's;
    # and final_models in the same invocation, whose model card predict copies (a few light
    # jobs: the card and the tables it reads).
    targets = [HEADLINE, SWEEP, "final_models", "predict"]
    result = run_snakemake(workdir, "--cores", "2", *targets, config=feature_config)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir


def changed(base, **sections):
    """``base`` with sections updated (one level deep)."""
    config = json.loads(json.dumps(base))
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def dry_run(workdir, config):
    result = run_snakemake(workdir, "-n", "fusion_results", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return scheduled_jobs(result.stdout + result.stderr)


@pytest.mark.workflow
@RUN
def test_features_are_computed_once_for_every_fold_and_used_by_each_stage(feature_run, calibrated):
    folder = feature_run / "results/features/thermal_map"
    sidecar = json.loads((folder / "features.json").read_text())
    views = pd.read_csv(feature_run / "results/prepared/thermal_map_views.tsv", sep="\t")
    assert np.load(folder / "features.npy", mmap_mode="r").shape == (len(views), 2, 576)
    assert sidecar["backbone"] == "MobileNetV3Small" and sidecar["flip"] is True
    assert (sidecar["size"], sidecar["channels"], sidecar["weights_source"]) == (
        32,
        3,
        str(calibrated),
    )
    image_log = (feature_run / "logs/image/thermal_map/repeat1/fold2.log").read_text()
    assert "Phase 1 (head on cached features and their flips" in image_log
    final_log = (feature_run / "logs/final_image/thermal_map.log").read_text()
    assert "Phase 1 (head on cached features and their flips" in final_log
    for log in [
        "logs/fusion/metadata+thermal_map/repeat2/fold2.log",
        "logs/final_fusion/metadata+thermal_map.log",
    ]:
        text = (feature_run / log).read_text()
        assert "views: max abs diff" in text and "(from cached features)" in text
        assert "on 8 views: max abs diff" in text and "(from pixels, whole branch)" in text
    history = pd.read_csv(
        feature_run / "results/image/thermal_map/repeat1/fold1/history.tsv", sep="\t"
    )
    assert set(history["phase"]) == {1}


@pytest.mark.workflow
@RUN
def test_each_repeat_is_a_new_partition_with_its_own_seed(feature_run):
    headline = pd.read_csv(feature_run / "results/fusion_results.tsv", sep="\t")
    assert headline["n_repeats"].tolist() == [2, 2]
    # Each repeat seeds its own models: repeat 2's image branch and fusion run with cv.seed + 1.
    for stage in ("image/thermal_map", "fusion/metadata+thermal_map"):
        seeds = [
            json.loads((feature_run / f"results/{stage}/repeat{r}/fold1/metrics.json").read_text())[
                "runtime"
            ]["seed"]
            for r in (1, 2)
        ]
        assert seeds == [42, 43], stage
    log = (feature_run / "logs/fusion/metadata+thermal_map/repeat2/fold1.log").read_text()
    assert "Loaded weights for layer: thermal_map_probs" in log
    folds = pd.read_csv(feature_run / "results/folds.tsv", sep="\t")
    # No patient in two folds within a repeat; the two repeats are different partitions.
    assert folds.groupby(["repeat", "group"])["fold"].nunique().max() == 1
    by_repeat = folds.pivot(index="id", columns="repeat", values="fold")
    # Fold numbers are arbitrary labels: compare which rows share a fold (0: unrelated, 1: same).
    assert adjusted_rand_score(by_repeat[1], by_repeat[2]) < 0.5
    oof = pd.read_csv(feature_run / "results/fusion/metadata+thermal_map/oof.tsv", sep="\t")
    # Every visit with thermal views, once per repeat.
    views = pd.read_csv(feature_run / "results/prepared/thermal_map_views.tsv", sep="\t")
    assert oof.groupby("repeat")["id"].nunique().tolist() == [views["id"].nunique()] * 2
    sweep = pd.read_csv(feature_run / SWEEP, sep="\t")
    assert sweep.groupby("repeat")["fold"].nunique().tolist() == [2, 2]


@pytest.mark.workflow
@RUN
def test_predict_from_pixels_reproduces_the_final_fusion_from_cached_features(feature_run):
    final = pd.read_csv(
        feature_run / "results/final/fusion/metadata+thermal_map/probs.tsv", sep="\t"
    )
    predicted = pd.read_csv(feature_run / "results/predict/predictions.tsv", sep="\t")
    columns = [f"prob_{c}" for c in CLASSES]
    both = final.merge(predicted, on="id", suffixes=("_final", ""))
    assert len(both) == len(final) > 100
    np.testing.assert_allclose(
        both[[f"{c}_final" for c in columns]].to_numpy(), both[columns].to_numpy(), atol=1e-5
    )
    # final_models ran in the same invocation: its card is copied beside the predictions once
    # it exists (rule predict_card), whichever of the card and the predictions came first.
    assert (feature_run / "logs/predict_card/predict_card.log").is_file()
    for name in ("model_card.md", "model_card.json"):
        copied = (feature_run / "results/predict" / name).read_bytes()
        assert copied == (feature_run / "results/final" / name).read_bytes()


@pytest.mark.workflow
@RUN
def test_fold_settings_never_rerun_the_features_and_backbone_settings_do(
    feature_run, feature_config
):
    fold_settings = changed(
        feature_config,
        cv={"repeats": 3},
        image_model={"epochs": 4, "batch_size": 16},
        fusion={"metadata_weight": 0.6},
    )
    jobs = dry_run(feature_run, fold_settings)
    assert jobs["image"] == 6 and "features" not in jobs
    for change in [
        {"modalities": {"thermal_map": {"size": 40}}},
        {"image_model": {"backbone": "EfficientNetB0", "backbone_weights": None}},
    ]:
        jobs = dry_run(feature_run, changed(feature_config, **change))
        assert jobs["features"] == 1 and jobs["image"] == 4, change
    rotation = changed(feature_config, image_model={"augmentation": {"rotation": 0.1}})
    jobs = dry_run(feature_run, rotation)
    assert "features" not in jobs and jobs["image"] == 4


def test_a_second_backbone_in_one_process_matches_its_cache_by_layer_position():
    """Keras numbers unnamed inner layers per process (a fusion job builds one branch per
    modality): EfficientNetB0's Normalization layer is ``normalization_1`` the second time."""
    from fusion_dag.branch import build_image_branch
    from fusion_dag.features import check_backbone, combined_hash, layer_hashes

    settings = {"backbone": "EfficientNetB0"}
    first = build_image_branch("thermal_map", (32, 32, 3), 3, settings)
    second = build_image_branch("depth_map", (32, 32, 3), 3, settings)
    backbones = [
        m.get_layer(f"{n}_backbone") for m, n in [(first, "thermal_map"), (second, "depth_map")]
    ]
    backbones[1].set_weights(backbones[0].get_weights())
    names = [{layer.name for layer in b.layers} for b in backbones]
    assert names[0] != names[1]  # the premise: the same layers, other names
    hashes = layer_hashes(backbones[0])
    check_backbone(
        backbones[1], {"layer_sha256": hashes, "backbone_sha256": combined_hash(hashes)}, "c"
    )


def test_a_feature_cache_without_its_hash_or_with_other_bytes_is_refused(tmp_path):
    """The sidecar's hashes are checked, never skipped when absent."""
    features, sidecar = tmp_path / "features.npy", tmp_path / "features.json"
    np.save(features, np.zeros((4, 1, 16), dtype=np.float32))
    from fusion_dag.artifacts import file_sha256

    record = {"views": 4, "flip": False, "dimension": 16, "features_sha256": file_sha256(features)}
    record |= {"backbone_sha256": "b", "layer_sha256": []}
    sidecar.write_text(json.dumps(record))
    assert load_feature_cache(features, sidecar).features.shape == (4, 1, 16)
    for key in FEATURE_HASHES:
        sidecar.write_text(json.dumps({k: v for k, v in record.items() if k != key}))
        with pytest.raises(FeatureCacheError, match=f"{sidecar} records no {key}; delete "):
            load_feature_cache(features, sidecar)
    sidecar.write_text(json.dumps(record))
    np.save(features, np.ones((4, 1, 16), dtype=np.float32))
    with pytest.raises(FeatureCacheError, match=r"has sha256 \w{12}\.\.\., its sidecar .* says"):
        load_feature_cache(features, sidecar)
    with open(features, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(FeatureCacheError, match=rf"{features} cannot be read .*\(rule features\)"):
        load_feature_cache(features, sidecar)
