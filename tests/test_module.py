"""The workflow reused as a Snakemake module from another folder, with the user's own config
(the ``resumed`` run of tests/conftest.py: the tiny run's config, deployed so)."""

import pandas as pd
import pytest
import yaml

from tests.conftest import HEADLINE, SWEEP, TINY

# The deployed run is compared with the session's tiny_run: both stay on one xdist worker.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("tiny_run")]


def test_module_deployed_from_another_folder_runs_the_users_config(resumed):
    folder, _, _ = resumed
    # The user's folder holds its own config (the tiny case over the workflow's defaults).
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["cv"] == TINY["cv"] and config["fusion"]["metadata_weight"] == 0.7
    headline = pd.read_csv(folder / HEADLINE, sep="\t")
    assert headline[["combination", "rows"]].values.tolist() == [
        ["metadata", "complete"],
        ["thermal_map", "complete"],
        ["metadata+thermal_map", "complete"],
        ["metadata+thermal_map", "all"],
    ]
    log = (folder / "logs/fusion/metadata+thermal_map/repeat1/fold1.log").read_text()
    assert "Loaded weights for layer: thermal_map_conv1" in log
    folds = pd.read_csv(folder / "results/folds.tsv", sep="\t")
    # No patient in two folds.
    assert folds.groupby(["repeat", "group"])["fold"].nunique().max() == 1
    oof = pd.read_csv(folder / "results/fusion/metadata+thermal_map/oof.tsv", sep="\t")
    # Every visit with thermal views, once.
    views = pd.read_csv(folder / "results/prepared/thermal_map_views.tsv", sep="\t")
    assert sorted(oof["id"]) == sorted(views["id"].unique())
    comparisons = pd.read_csv(folder / "results/comparisons.tsv", sep="\t")
    assert comparisons["p_value"].between(0, 1).all()
    sweep = pd.read_csv(folder / SWEEP, sep="\t")
    assert sweep["fold"].nunique() == TINY["cv"]["folds"]
