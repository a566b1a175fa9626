"""Unit tests of the config module: typing of command-line values and the checks across keys."""

import pytest
import yaml

from fusion_dag.config import (
    ConfigError,
    check_fusion_weights,
    check_image_settings,
    command_line_values,
    load_schema,
    modalities_in_use,
    modality_settings,
    schema_error,
    selected_combinations,
    setting_key,
)
from tests.conftest import REPO

SCHEMA = load_schema(REPO / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config():
    """The shipped defaults, as Snakemake loads them."""
    return yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_nested_command_line_text_is_typed_where_the_schema_wants_no_string():
    typed = command_line_values(
        {"fusion": {"metadata_weight": "0.6"}, "cv": {"folds": "5"}, "combinations": "all"},
        SCHEMA,
    )
    assert typed["fusion"]["metadata_weight"] == 0.6
    assert typed["cv"]["folds"] == 5
    assert typed["combinations"] == "all"  # parses to a string: stays text


def test_a_schema_violation_is_one_line_naming_the_key(config):
    config["cv"]["folds"] = 0
    assert schema_error(config, SCHEMA) == (
        "Invalid config key 'cv.folds': 0 is less than the minimum of 2"
    )


def test_default_combinations_are_metadata_each_image_and_each_pair(config):
    config["combinations"] = None
    config["modalities"] = {"thermal_map": "thermal_map", "depth_map": "depth_map"}
    assert list(selected_combinations(config)) == [
        "metadata",
        "thermal_map",
        "depth_map",
        "metadata+thermal_map",
        "metadata+depth_map",
    ]
    config["combinations"] = "all"
    assert len(selected_combinations(config)) == 7


def test_members_are_ordered_and_unknown_ones_named(config):
    config["combinations"] = [["thermal_map", "metadata"]]
    assert selected_combinations(config) == {"metadata+thermal_map": ["metadata", "thermal_map"]}
    config["combinations"] = [["metadata", "x_ray"]]
    with pytest.raises(ConfigError, match=r"\['x_ray'\] is neither 'metadata' nor a modality"):
        selected_combinations(config)


def test_modality_overrides_merge_over_image_model_and_name_their_key(config):
    config["modalities"]["depth_map"] = {"column": "depth", "size": 96, "backbone_weights": "none"}
    settings = modality_settings(config, "depth_map")
    assert settings["size"] == 96 and settings["backbone_weights"] is None
    assert settings["epochs"] == config["image_model"]["epochs"]
    assert "column" not in settings
    assert setting_key(config, "depth_map", "size") == "modalities.depth_map.size"
    assert setting_key(config, "depth_map", "epochs") == "image_model.epochs"


def test_only_modalities_a_combination_uses_are_in_use(config):
    config["combinations"] = [["metadata", "depth_map"]]
    used = modalities_in_use(config, selected_combinations(config))
    assert list(used) == ["depth_map"]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            {"backbone_weights": "imagenet"},
            "'modalities.thermal_map.backbone_weights': 'imagenet' needs a keras.applications",
        ),
        (
            {"backbone": "EfficientNetB0", "backbone_weights": "absent.weights.h5"},
            "absent.weights.h5 is not a file",
        ),
        ({"backbone": "EfficientNetB0", "size": 24}, "24 px is below the 32 px"),
    ],
)
def test_image_settings_the_schema_cannot_check_name_the_key(config, override, message):
    config["modalities"]["thermal_map"] = {"column": "thermal_map", **override}
    with pytest.raises(ConfigError, match=message):
        check_image_settings(config, ["thermal_map"])


def test_fusion_weights_need_every_member_and_sum_to_one(config):
    combinations = {"metadata+thermal_map": ["metadata", "thermal_map"]}
    config["fusion"]["weights"] = {"metadata": 0.7, "thermal_map": 0.3}
    check_fusion_weights(config, combinations)
    config["fusion"]["weights"] = {"metadata": 0.7, "thermal_map": 0.2}
    with pytest.raises(ConfigError, match="the weights sum to 0.9, not 1"):
        check_fusion_weights(config, combinations)
    config["fusion"]["weights"] = {"metadata": 1.0}
    with pytest.raises(ConfigError, match=r"members without a weight \['thermal_map'\]"):
        check_fusion_weights(config, combinations)
