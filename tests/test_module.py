"""The workflow reused as a Snakemake module from another folder, with the user's own config."""

import copy
import json

import pandas as pd
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from tests.conftest import HEADLINE, REPO, SNAKEFILE, TINY, run_command

pytestmark = pytest.mark.workflow


def merged(base: dict, override: dict) -> dict:
    """``override`` over ``base``, mappings merged key by key (as Snakemake merges configs)."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def test_module_deployed_from_another_folder_runs_the_tiny_case(tmp_path):
    defaults = yaml.safe_load((REPO / "config/config.yaml").read_text())
    # Two repeats: the module run is also the end-to-end test of repeated partitions (of two
    # folds each, which keeps it short).
    user_config = merged(
        defaults,
        {
            **TINY,
            "combinations": [["metadata"], ["metadata", "thermal_map"]],
            "cv": {"folds": 2, "repeats": 2, "seed": 42},
        },
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(user_config))
    (tmp_path / "Snakefile").write_text(
        f'''configfile: "config.yaml"


module fusion_dag:
    snakefile:
        "{SNAKEFILE}"
    config:
        config


use rule * from fusion_dag
'''
    )
    # The tables these asserts read (the headline's aggregate job also writes the comparisons),
    # not the report's figures.
    sweep = "results/diagnostics/metadata+thermal_map/weight_sweep.tsv"
    result = run_command(tmp_path, ["--cores", "2", HEADLINE, sweep])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    headline = pd.read_csv(tmp_path / "results/fusion_results.tsv", sep="\t")
    assert headline[["combination", "rows"]].values.tolist() == [
        ["metadata", "complete"],
        ["metadata+thermal_map", "complete"],
        ["metadata+thermal_map", "all"],
    ]
    assert headline["n_repeats"].tolist() == [2, 2, 2]
    # Each repeat seeds its own models: repeat 2's image branch and fusion run with cv.seed + 1.
    for stage in ("image/thermal_map", "fusion/metadata+thermal_map"):
        seeds = [
            json.loads((tmp_path / f"results/{stage}/repeat{r}/fold1/metrics.json").read_text())[
                "runtime"
            ]["seed"]
            for r in (1, 2)
        ]
        assert seeds == [42, 43], stage
    log = (tmp_path / "logs/fusion/metadata+thermal_map/repeat2/fold1.log").read_text()
    assert "Loaded weights for layer: thermal_map_conv1" in log
    folds = pd.read_csv(tmp_path / "results/folds.tsv", sep="\t")
    # No patient in two folds within a repeat; the two repeats are different partitions.
    assert folds.groupby(["repeat", "group"])["fold"].nunique().max() == 1
    by_repeat = folds.pivot(index="id", columns="repeat", values="fold")
    # Fold numbers are arbitrary labels: compare which rows share a fold (0: unrelated, 1: same).
    assert adjusted_rand_score(by_repeat[1], by_repeat[2]) < 0.5
    oof = pd.read_csv(tmp_path / "results/fusion/metadata+thermal_map/oof.tsv", sep="\t")
    # Every visit with thermal views, once per repeat.
    views = pd.read_csv(tmp_path / "results/prepared/thermal_map_views.tsv", sep="\t")
    assert oof.groupby("repeat")["id"].nunique().tolist() == [views["id"].nunique()] * 2
    comparisons = pd.read_csv(tmp_path / "results/comparisons.tsv", sep="\t")
    assert comparisons[["versus", "family"]].values.tolist() == [
        ["metadata", "primary"],
        ["metadata", "secondary, all visits"],
    ]
    assert comparisons["p_value"].between(0, 1).all()
    sweep = pd.read_csv(tmp_path / sweep, sep="\t")
    assert sweep.groupby("repeat")["fold"].nunique().tolist() == [2, 2]
