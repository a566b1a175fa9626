"""Unit tests of the jobs module: each job's params and the files and fold records it gathers,
on small config dicts (no Snakemake run)."""

import copy

import pytest
import yaml

from fusion_dag.config import modalities_in_use
from fusion_dag.features import FLIP_ONLY
from fusion_dag.jobs import (
    BRANCH_KEYS,
    ablation_records,
    backbone_weights_file,
    bundle_inputs,
    diagnostic_records,
    explain_outputs,
    feature_files,
    feature_modalities,
    feature_settings,
    final_fusion_inputs,
    fold_fusion_inputs,
    fusion_members,
    fusion_settings,
    fusions,
    heatmap_records,
    ignored_image_columns,
    image_stage_records,
    learned_tables,
    member_records,
    pairs,
    partition_records,
    partitions,
    predict_explain_outputs,
    protocol_screen_records,
    protocol_settings,
    repeat_seed,
    report_figures,
    run_metrics,
    run_summary,
    screen_file,
    spec_modalities,
    trained_models,
    weight_settings,
)
from tests.conftest import REPO

COMBINATIONS = {
    "metadata": ["metadata"],
    "thermal": ["thermal"],
    "metadata+thermal": ["metadata", "thermal"],
    "metadata+thermal+depth": ["metadata", "thermal", "depth"],
}


@pytest.fixture
def config():
    """Two image modalities in samples columns (thermal: a cacheable keras backbone; depth:
    the small CNN), three folds, two repeats."""
    return {
        "image_dir": "images",
        "columns": {"id": "sample_id", "group": "patient_id", "label": "label"},
        "classes": ["I", "P", "R"],
        "modalities": {
            "thermal": {
                "column": "thermal_path",
                "backbone": "efficientnet_b0",
                "backbone_weights": "imagenet",
                "size": 48,
            },
            "depth": "depth_path",
            "photo": "photo_path",
        },
        "image_model": {
            "size": 64,
            "epochs": 60,
            "batch_size": 32,
            "intra_op_threads": 2,
            "channels": 1,
            "value_range": None,
            "backbone": "small_cnn",
            "backbone_weights": None,
            "fine_tune": "frozen",
            "feature_cache": True,
            "augmentation": {"flip": "horizontal"},
            "mixed_precision": False,
            "standardize": True,
            "batch_norm": False,
            "pooling": "flatten",
            "warmup_epochs": 5,
            "reduce_lr_patience": 3,
        },
        "fusion": {"metadata_weight": 0.7, "weights": None},
        "cv": {"folds": 3, "repeats": 2, "seed": 42},
        "evaluation": {"primary": "metadata"},
        "predict": {"explain": False},
    }


def with_setting(config, modality, key, value):
    """A copy of ``config`` with one setting of one modality changed."""
    changed = copy.deepcopy(config)
    entry = changed["modalities"][modality]
    entry = {"column": entry} if isinstance(entry, str) else entry
    changed["modalities"][modality] = {**entry, key: value}
    return changed


def test_partitions_enumerate_every_fold_of_every_repeat_in_order(config):
    assert partitions(config) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]


def test_repeat_seeds_count_up_from_cv_seed_and_the_final_models_use_cv_seed(config):
    assert [repeat_seed(config, repeat) for repeat in (1, 2, 3)] == [42, 43, 44]
    assert repeat_seed(config) == 42
    # Repeat 0 (the temporal split) is outside the cross-validation: the final models' seed.
    assert repeat_seed(config, 0) == 42


def test_shipped_defaults_weigh_metadata_0_70_and_the_images_0_30():
    shipped = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert weight_settings(shipped, ["metadata", "thermal_map"]) == {"metadata_weight": 0.7}
    summary = run_summary(shipped, ["thermal_map"])
    assert summary["weights"] == "0.70 x RF + 0.30 x the images, shared equally"


def test_fusion_weights_give_each_member_its_own_weight_restricted_to_the_combination(config):
    config["fusion"]["weights"] = {"metadata": 0.5, "thermal": 0.3, "depth": 0.2}
    assert weight_settings(config, ["metadata", "thermal"]) == {
        "weights": {"metadata": 0.5, "thermal": 0.3}
    }
    assert run_summary(config, ["thermal", "depth"])["weights"] == (
        "metadata 0.5, thermal 0.3, depth 0.2"
    )


def test_a_member_alone_and_images_without_metadata_have_no_weight_settings(config):
    assert weight_settings(config, ["metadata"]) == {}
    assert weight_settings(config, ["thermal"]) == {}
    assert weight_settings(config, ["thermal", "depth"]) == {}


def test_a_fusion_carries_only_the_branch_keys_of_each_image_and_the_inference_settings(
    config,
):
    settings = fusion_settings(config, ["metadata", "thermal", "depth"], seed=43)
    assert settings == {
        "weights": {"metadata_weight": 0.7},
        "branches": {
            "thermal": {
                "backbone": "efficientnet_b0",
                "augmentation": FLIP_ONLY,
                "mixed_precision": False,
                "standardize": True,
                "batch_norm": False,
                "pooling": "flatten",
            },
            "depth": {
                "backbone": "small_cnn",
                "augmentation": FLIP_ONLY,
                "mixed_precision": False,
                "standardize": True,
                "batch_norm": False,
                "pooling": "flatten",
            },
        },
        "batch_size": 32,
        "intra_op_threads": 2,
        "seed": 43,
    }
    assert all(list(branch) == BRANCH_KEYS for branch in settings["branches"].values())


def test_the_branch_architecture_reaches_fusion_but_training_only_settings_do_not(config):
    members = ["metadata", "depth"]
    unstandardised = with_setting(config, "depth", "standardize", False)
    assert fusion_settings(unstandardised, members, 42)["branches"]["depth"]["standardize"] is False
    for key, value in (("warmup_epochs", 0), ("reduce_lr_patience", 0), ("patience", 9)):
        changed = with_setting(config, "depth", key, value)
        assert fusion_settings(changed, members, 42) == fusion_settings(config, members, 42)


def test_a_config_without_the_new_architecture_keys_rebuilds_the_branch_as_before(config):
    for key in ("standardize", "batch_norm", "pooling"):
        del config["image_model"][key]
    branch = fusion_settings(config, ["metadata", "depth"], 42)["branches"]["depth"]
    assert branch == {"backbone": "small_cnn", "augmentation": FLIP_ONLY, "mixed_precision": False}


def test_a_member_alone_has_no_inference_settings(config):
    assert fusion_settings(config, ["metadata"], seed=42) == {"weights": {}}
    alone = fusion_settings(config, ["thermal"], seed=42)
    assert set(alone) == {"weights", "branches"}


def test_changing_one_modalitys_setting_changes_only_that_modalitys_params(config):
    changed = with_setting(config, "depth", "backbone", "mobilenet_v2")
    assert fusion_settings(changed, ["metadata", "thermal"], 42) == fusion_settings(
        config, ["metadata", "thermal"], 42
    )
    assert fusion_settings(changed, ["depth"], 42) != fusion_settings(config, ["depth"], 42)
    assert feature_settings(changed, "thermal") == feature_settings(config, "thermal")
    assert feature_settings(changed, "depth")["backbone"] == "mobilenet_v2"


def test_a_fold_setting_never_changes_fusion_or_feature_params(config):
    changed = with_setting(config, "thermal", "epochs", 5)
    assert fusion_settings(changed, ["metadata", "thermal"], 42) == fusion_settings(
        config, ["metadata", "thermal"], 42
    )
    assert feature_settings(changed, "thermal") == feature_settings(config, "thermal")


def test_feature_settings_carry_the_seed_only_for_random_backbone_weights(config):
    assert feature_settings(config, "thermal") == {
        "backbone": "efficientnet_b0",
        "backbone_weights": "imagenet",
        "augmentation": FLIP_ONLY,
        "intra_op_threads": 2,
        "seed": None,
    }
    assert feature_settings(config, "depth")["seed"] == 42
    unflipped = with_setting(config, "thermal", "augmentation", None)
    assert feature_settings(unflipped, "thermal")["augmentation"] is None


def test_only_a_cacheable_backbone_has_feature_files(config):
    assert feature_modalities(config, ["thermal", "depth"]) == ["thermal"]
    assert feature_files(config, "depth") == {}
    assert feature_files(config, "thermal", prefix="thermal_") == {
        "thermal_features": "results/features/thermal/features.npy",
        "thermal_features_sidecar": "results/features/thermal/features.json",
        "thermal_features_backbone": "results/features/thermal/backbone.weights.h5",
    }


def test_only_a_backbone_weights_path_is_an_input(config):
    assert backbone_weights_file(config, "thermal") == {}
    assert backbone_weights_file(config, "depth") == {}
    own = with_setting(config, "thermal", "backbone_weights", "weights/b0.weights.h5")
    assert backbone_weights_file(own, "thermal") == {"backbone_weights": "weights/b0.weights.h5"}


def test_a_fold_fusion_reads_the_folds_stages_and_a_member_alone_reads_no_views(config):
    assert fold_fusion_inputs(config, ["metadata"], 2, 3) == {
        "metadata": "results/metadata/repeat2/fold3/probs.tsv",
        "metadata_fit": "results/metadata/repeat2/fold3/fit_probs.tsv",
    }
    assert fold_fusion_inputs(config, ["depth"], 1, 1) == {
        "depth_checkpoint": "results/image/depth/repeat1/fold1/checkpoint.weights.h5",
        "depth_sidecar": "results/image/depth/repeat1/fold1/checkpoint.json",
        "depth_probs": "results/image/depth/repeat1/fold1/probs.tsv",
    }
    fused = fold_fusion_inputs(config, ["metadata", "thermal", "depth"], 1, 2)
    assert fused["thermal_view_probs"] == "results/image/thermal/repeat1/fold2/view_probs.tsv"
    assert fused["depth_cache"] == "results/prepared/images/depth.npy"
    assert fused["thermal_features"] == "results/features/thermal/features.npy"
    assert "depth_features" not in fused


def test_the_final_fusion_reads_the_final_models(config):
    assert final_fusion_inputs(config, ["metadata", "depth"]) == {
        "metadata": "results/final/metadata/probs.tsv",
        "depth_checkpoint": "results/final/image/depth/checkpoint.weights.h5",
        "depth_sidecar": "results/final/image/depth/checkpoint.json",
        "depth_probs": "results/final/image/depth/probs.tsv",
        "depth_view_probs": "results/final/image/depth/view_probs.tsv",
        "depth_cache": "results/prepared/images/depth.npy",
        "depth_views": "results/prepared/depth_views.tsv",
    }


def test_partition_records_fill_each_pattern_per_fold_with_the_jobs_wildcards(config):
    records = partition_records(
        config, {"combination": "thermal"}, {"probs": "f/{combination}/r{repeat}/f{fold}.tsv"}
    )
    assert len(records) == 6
    assert records[0] == {"repeat": 1, "fold": 1, "probs": "f/thermal/r1/f1.tsv"}
    assert records[-1] == {"repeat": 2, "fold": 3, "probs": "f/thermal/r2/f3.tsv"}


def test_member_records_enumerate_sorted_members_by_repeat_and_fold(config):
    records = member_records(config, {"thermal", "metadata"})
    assert [(r["member"], r["repeat"], r["fold"]) for r in records[:4]] == [
        ("metadata", 1, 1),
        ("metadata", 1, 2),
        ("metadata", 1, 3),
        ("metadata", 2, 1),
    ]
    assert len(records) == 12
    assert records[6]["probs"] == "results/image/thermal/repeat1/fold1/probs.tsv"


def test_pairs_fusions_and_their_members(config):
    assert pairs(COMBINATIONS) == {"metadata+thermal": "thermal"}
    assert list(fusions(COMBINATIONS)) == ["metadata+thermal", "metadata+thermal+depth"]
    assert fusion_members(COMBINATIONS) == {"metadata", "thermal", "depth"}
    assert fusion_members({"thermal": ["thermal"]}) == set()


def test_diagnostic_and_ablation_records_pair_each_fold_with_its_files(config):
    diagnostic = diagnostic_records(config, "thermal")
    assert diagnostic[4] == {
        "repeat": 2,
        "fold": 2,
        "metadata": "results/metadata/repeat2/fold2/probs.tsv",
        "image": "results/image/thermal/repeat2/fold2/probs.tsv",
    }
    ablation = ablation_records(config, {"metadata+thermal": "thermal", "metadata+depth": "depth"})
    assert len(ablation) == 12
    assert ablation[6]["combination"] == "metadata+depth"
    assert ablation[6]["metrics"] == "results/ablation/metadata+depth/repeat1/fold1/metrics.tsv"
    assert ablation[6]["v3_oof"] == "results/fusion/metadata+depth/oof.tsv"


def test_the_protocol_fuses_with_the_configured_weights_and_each_repeats_seed(config):
    config["image_model"]["validation_fraction"] = 0.2
    config = with_setting(config, "thermal", "validation_fraction", 0.25)
    settings = protocol_settings(config, COMBINATIONS)
    assert settings["weights"]["metadata+thermal+depth"] == {
        "metadata": 0.7,
        "thermal": pytest.approx(0.15),
        "depth": pytest.approx(0.15),
    }
    assert settings["weights"]["thermal"] == {"thermal": 1.0}
    assert settings["validation_fraction"] == {"depth": 0.2, "thermal": 0.25}
    assert settings["seeds"] == {1: 42, 2: 43}
    records = protocol_screen_records(config, COMBINATIONS)
    assert [record["repeat"] for record in records] == [1, 2]
    assert records[1]["probs"] == "results/protocol/repeat2/metadata_probs.tsv"
    # Without the forest there is nothing to screen.
    assert protocol_screen_records(config, {"thermal": ["thermal"]}) == []


def test_heatmaps_read_only_the_folds_of_repeat_1(config):
    records = heatmap_records(config, "thermal")
    assert [record["fold"] for record in records] == [1, 2, 3]
    assert records[2]["checkpoint"] == "results/image/thermal/repeat1/fold3/checkpoint.weights.h5"


def test_trained_models_and_run_metrics_list_every_fold(config):
    models = trained_models(config, COMBINATIONS, ["thermal"])
    assert len(models) == 12
    assert models[0] == "results/image/thermal/repeat1/fold1/checkpoint.weights.h5"
    assert models[-1] == "results/metadata/repeat2/fold3/model.skops"
    assert trained_models(config, {"thermal": ["thermal"]}, ["thermal"]) == models[:6]
    metrics = run_metrics(config, {"thermal": ["thermal"]}, ["thermal"])
    assert metrics[5] == "results/image/thermal/repeat2/fold3/metrics.json"
    assert metrics[6] == "results/fusion/thermal/repeat1/fold1/metrics.json"


def test_target_outputs_follow_the_selection(config):
    figures = report_figures(["thermal"], {"metadata+thermal": "thermal"})
    assert "results/plots/learning_curves_thermal.png" in figures
    assert "results/diagnostics/metadata+thermal/branch_agreement.tsv" in figures
    assert "results/explain/importance.tsv" in explain_outputs(COMBINATIONS, ["thermal"])
    assert "results/explain/importance.tsv" not in explain_outputs({"t": ["thermal"]}, [])
    assert predict_explain_outputs(config) == []
    config["predict"]["explain"] = True
    assert predict_explain_outputs(config) == [
        "results/predict/contributions.tsv",
        "results/predict/heatmaps",
    ]


def test_bundle_holds_the_forest_only_when_a_combination_uses_metadata(config):
    assert bundle_inputs(COMBINATIONS, ["depth"]) == {
        "forest": "results/final/metadata/model.skops",
        "depth_checkpoint": "results/final/image/depth/checkpoint.weights.h5",
        "depth_sidecar": "results/final/image/depth/checkpoint.json",
        "depth_probs": "results/final/image/depth/probs.tsv",
    }
    assert "forest" not in bundle_inputs({"depth": ["depth"]}, ["depth"])


def test_unused_modalities_columns_are_ignored_and_the_spec_records_layout_and_settings(
    config,
):
    in_use = modalities_in_use(config, COMBINATIONS)
    assert list(in_use) == ["thermal", "depth"]
    assert ignored_image_columns(config, in_use) == ["photo_path"]
    spec = spec_modalities(config, in_use)
    assert spec["thermal"]["column"] == "thermal_path"
    assert spec["thermal"]["size"] == 48
    assert spec["depth"]["size"] == 64


def test_the_aggregate_reads_each_image_members_fold_metrics_once(config):
    records = image_stage_records(config, COMBINATIONS)
    assert [r["member"] for r in records] == ["depth"] * 6 + ["thermal"] * 6
    assert records[0] == {
        "member": "depth",
        "repeat": 1,
        "fold": 1,
        "metrics": "results/image/depth/repeat1/fold1/metrics.json",
    }
    assert image_stage_records(config, {"metadata": ["metadata"]}) == []


def test_learning_adds_the_fold_table_and_each_image_split_only_when_asked(config):
    members = ["metadata", "depth"]
    assert "learn" not in fusion_settings(config, members, 43)
    assert "folds" not in fold_fusion_inputs(config, members, 2, 1)
    assert "metadata_inner" not in final_fusion_inputs(config, members)
    learning = copy.deepcopy(config)
    learning["fusion"]["learn"] = ["weights", "temperature"]
    learning["image_model"]["validation_fraction"] = 0.25
    settings = fusion_settings(learning, members, 43)
    assert settings["learn"] == ["weights", "temperature"]
    # The fraction and seed the fold's image stage drew its early-stopping visits with.
    assert settings["image_split"] == {"depth": {"validation_fraction": 0.25, "seed": 43}}
    assert fusion_settings(learning, ["metadata"], 43)["image_split"] == {}
    assert fold_fusion_inputs(learning, members, 2, 1)["folds"] == "results/folds/repeat2.tsv"
    assert final_fusion_inputs(learning, members)["metadata_inner"] == (
        "results/final/metadata/inner_probs.tsv"
    )
    assert learned_tables(config, {"metadata": ["metadata"]}) == []
    assert learned_tables(learning, {"metadata": ["metadata"]}) == [
        "results/fusion/metadata/learned.tsv"
    ]


def test_a_screen_is_an_input_of_its_folds_jobs_only_with_label_screen(config):
    assert screen_file(config, 1, 2) == {}
    screening = {**config, "label_screen": {"method": "confident_learning"}}
    assert screen_file(screening, 1, 2) == {"screen": "results/screen/repeat1/fold2.tsv"}
    # The fusion job reads it only to recompute the image stages' early-stopping visits.
    assert "screen" not in fold_fusion_inputs(screening, ["metadata", "depth"], 1, 2)
    learning = copy.deepcopy(screening)
    learning["fusion"]["learn"] = ["weights"]
    inputs = fold_fusion_inputs(learning, ["metadata", "depth"], 1, 2)
    assert inputs["screen"] == "results/screen/repeat1/fold2.tsv"
