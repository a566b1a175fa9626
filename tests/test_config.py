"""Unit tests of the config module: typing of command-line values and the checks across keys."""

import pytest
import yaml

from fusion_dag.config import (
    ConfigError,
    check_columns,
    check_fusion_weights,
    check_image_settings,
    check_layouts,
    check_primary,
    class_names,
    command_line_values,
    load_schema,
    modalities_in_use,
    modality_layout,
    modality_settings,
    predict_image_dirs,
    schema_error,
    selected_combinations,
    setting_key,
)
from tests.conftest import REPO, TINY, run_snakemake

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


def test_an_image_table_layout_takes_its_defaults_and_its_settings_stay_apart(config):
    from jsonschema import Draft202012Validator

    config["modalities"]["thermal_map"] = {"images": "t.csv", "path": "file", "size": 48}
    layout = modality_layout(config, "thermal_map")
    assert layout == {
        "images": "t.csv",
        "path": "file",
        "keys": ["sample_id"],
        "box": None,
        "box_margin": 0.25,
        "image_dir": config["image_dir"],
    }
    assert modality_settings(config, "thermal_map")["size"] == 48
    assert not set(layout) & set(modality_settings(config, "thermal_map"))
    assert not list(Draft202012Validator(SCHEMA).iter_errors(config))
    config["columns"]["id"] = None
    with pytest.raises(ConfigError, match=r"'modalities.thermal_map.keys': columns.id is null"):
        modality_layout(config, "thermal_map")
    # A box needs its four columns; both layouts at once is no layout.
    config["modalities"]["thermal_map"] = {"images": "t.csv", "path": "f", "box": ["a", "b"]}
    assert list(Draft202012Validator(SCHEMA).iter_errors(config))
    config["modalities"]["thermal_map"] = {"images": "t.csv", "path": "f", "column": "c"}
    assert list(Draft202012Validator(SCHEMA).iter_errors(config))


def test_a_column_merged_into_the_demos_image_table_is_named(config):
    config["modalities"]["thermal_map"] = {**config["modalities"]["thermal_map"], "column": "t"}
    with pytest.raises(ConfigError, match=r"'modalities.thermal_map': it has both a samples col"):
        check_layouts(config)
    config["modalities"]["thermal_map"].pop("images")
    check_layouts(config)


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
        (
            {"epochs": 5, "warmup_epochs": 5},
            "'modalities.thermal_map.warmup_epochs': 5 warm-up epochs leave none of the 5",
        ),
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
    with pytest.raises(ConfigError, match=r"weights': members without a weight \['thermal_map'\]$"):
        check_fusion_weights(config, combinations)
    # Each part of the message only when it has something to say: never an empty list.
    config["fusion"]["weights"] = {"metadata": 0.5, "thermal_map": 0.3, "bogus": 0.2}
    with pytest.raises(ConfigError) as error:
        check_fusion_weights(config, combinations)
    assert str(error.value) == (
        "Invalid config key 'fusion.weights': names that are neither metadata nor a modality "
        "['bogus']"
    )
    assert "[]" not in str(error.value)


@pytest.mark.parametrize("value_range", [[40, 20], [20, 20]])
def test_a_value_range_whose_low_is_not_below_its_high_names_the_key(config, value_range):
    config["modalities"]["thermal_map"] = {"column": "thermal_map", "value_range": value_range}
    with pytest.raises(
        ConfigError,
        match=rf"'modalities.thermal_map.value_range': \[{value_range[0]}, {value_range[1]}\] "
        "has low >= high",
    ):
        check_image_settings(config, ["thermal_map"])


def test_numeric_classes_are_read_as_their_text():
    assert class_names([1, 2, 3]) == ["1", "2", "3"]
    assert class_names([1.0, 2.5, "R"]) == ["1", "2.5", "R"]
    with pytest.raises(ConfigError, match="names class 1 twice"):
        class_names([1, 1.0])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            {"id": None, "group": "patient", "label": "patient"},
            "'columns.label': 'patient' is also columns.group",
        ),
        (
            {"id": "patient", "group": "patient", "label": "y"},
            "'columns.group': 'patient' is also columns.id",
        ),
    ],
)
def test_id_group_and_label_must_be_different_columns(columns, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_columns(columns)
    assert str(error.value).endswith(
        "the id, group and label columns must be three different columns"
    )
    check_columns({"id": None, "group": "patient", "label": "y"})


def test_a_primary_that_is_not_run_is_refused_when_fusions_are(config):
    config["combinations"] = [["thermal_map"], ["metadata", "thermal_map"]]
    combinations = selected_combinations(config)
    with pytest.raises(ConfigError) as error:
        check_primary(config, combinations)
    assert str(error.value) == (
        "Invalid config key 'evaluation.primary': 'metadata' is not among the combinations run "
        "(thermal_map, metadata+thermal_map); add it to 'combinations' or name one of them"
    )
    config["evaluation"]["primary"] = "metadata+thermal_map"
    check_primary(config, combinations)
    # Without a fusion there is no contrast to make: nothing to refuse.
    config["evaluation"]["primary"] = "metadata"
    config["combinations"] = [["thermal_map"]]
    check_primary(config, selected_combinations(config))


def test_a_dry_run_with_a_primary_that_is_not_run_fails_before_any_job(tmp_path):
    config = {**TINY, "combinations": [["thermal_map"], ["metadata", "thermal_map"]]}
    result = run_snakemake(tmp_path, "-n", "fusion_results", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert (
        "Invalid config key 'evaluation.primary': 'metadata' is not among the combinations run "
        "(thermal_map, metadata+thermal_map)" in output
    )


def test_a_new_tables_image_folders_resolve_as_in_training(config):
    """A modality's own image_dir holds for the new table too, unless predict.image_dir
    says otherwise (for every modality, or per modality)."""
    config["modalities"]["depth_map"]["image_dir"] = "depth_folder"
    assert predict_image_dirs(config) == ("resources/demo", {"depth_map": "depth_folder"})
    config["predict"]["image_dir"] = "new_clinic"
    assert predict_image_dirs(config) == ("new_clinic", {})
    config["predict"]["image_dir"] = {"thermal_map": "new_thermal"}
    assert predict_image_dirs(config) == (
        "resources/demo",
        {"depth_map": "depth_folder", "thermal_map": "new_thermal"},
    )
    from jsonschema import Draft202012Validator

    assert Draft202012Validator(SCHEMA).is_valid(config)
    config["predict"]["image_dir"] = {"thermal": "x"}
    with pytest.raises(ConfigError, match=r"'predict.image_dir': thermal is not a modality"):
        predict_image_dirs(config)
