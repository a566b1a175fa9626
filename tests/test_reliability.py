"""Interruptions and reproducibility, tested for real through Snakemake."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import file_sha256
from tests.conftest import HEADLINE, TINY, run_snakemake, scheduled_jobs

# Tests that share the session's tiny_run stay on one xdist worker, which builds it once.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("tiny_run")]


def test_resumed_run_reruns_the_killed_job_and_leaves_no_partial_files(resumed):
    folder, fold, output = resumed
    reran = re.findall(r"rule image:\n(?:    .*\n)*?    wildcards: (.*)", output)
    assert f"modality=thermal_map, repeat=1, fold={fold}" in reran, reran
    assert (folder / HEADLINE).is_file()
    assert not list((folder / "results").rglob("*.partial*"))


def test_same_config_gives_identical_folds_metadata_fusion_and_headline(resumed, tiny_run):
    """The tiny run's config, deployed as a module in another folder and interrupted, gives
    the tiny run's numbers byte for byte."""
    folder, _, _ = resumed
    paths = [
        "results/folds.tsv",
        "results/fusion_results.tsv",
        "results/fusion_results_per_fold.tsv",
    ]
    for fold in range(1, TINY["cv"]["folds"] + 1):
        paths.append(f"results/metadata/repeat1/fold{fold}/probs.tsv")
        for combination in ("metadata", "thermal_map", "metadata+thermal_map"):
            paths.append(f"results/fusion/{combination}/repeat1/fold{fold}/probs.tsv")
    for path in paths:
        assert (folder / path).read_bytes() == (tiny_run / path).read_bytes(), path


def test_same_config_gives_identical_checkpoints_and_image_probabilities(resumed, tiny_run):
    folder, _, _ = resumed
    for fold in range(1, TINY["cv"]["folds"] + 1):
        stage = f"results/image/thermal_map/repeat1/fold{fold}"
        first = pd.read_csv(tiny_run / stage / "probs.tsv", sep="\t")
        again = pd.read_csv(folder / stage / "probs.tsv", sep="\t")
        assert first["id"].tolist() == again["id"].tolist()
        difference = np.abs(first.iloc[:, 2:].to_numpy() - again.iloc[:, 2:].to_numpy()).max()
        assert difference <= 1e-6  # the tolerance stated in the README
        checkpoint = stage + "/checkpoint.weights.h5"
        assert file_sha256(folder / checkpoint) == file_sha256(tiny_run / checkpoint)


def test_provenance_records_config_versions_data_and_commit(tiny_run):
    record = json.loads((tiny_run / "results/provenance.json").read_text())
    recorded = record["config"]["image_model"]
    assert {key: recorded[key] for key in TINY["image_model"]} == TINY["image_model"]
    assert {"snakemake", "keras", "scikit-learn"} <= set(record["packages"])
    assert len(record["data"]["samples"]["sha256"]) == 64
    assert record["data"]["thermal_map"]["images"] > 0
    assert "commit" in record["workflow"]
    image_job = record["jobs"]["results/image/thermal_map/repeat1/fold1/metrics.json"]
    assert image_job["intra_op_threads"] == TINY["image_model"]["intra_op_threads"]
    assert image_job["op_determinism"] is True and image_job["threads"] >= 1
    assert "results/fusion/metadata+thermal_map/repeat1/fold2/metrics.json" in record["jobs"]


def test_image_numbers_follow_the_config_not_the_cores(tiny_run, tiny_copy):
    """Byte-identical checkpoints with 1 and 2 job threads; another intra-op setting differs.

    The tiny run trained fold 1's branch with 2 job threads; here it is retrained with 1."""
    target = "results/image/thermal_map/repeat1/fold1/checkpoint.weights.h5"

    def runtime(workdir):
        return json.loads((workdir / target).with_name("metrics.json").read_text())["runtime"]

    def retrain(cores, intra_op_threads):
        settings = {**TINY["image_model"], "intra_op_threads": intra_op_threads}
        # The target before --forcerun, which would read it as a second rule to force.
        arguments = ["--cores", str(cores), target, "--forcerun", "image"]
        result = run_snakemake(tiny_copy, *arguments, config={**TINY, "image_model": settings})
        assert result.returncode == 0, result.stderr[-3000:]
        # Only that job ran: the retrained checkpoint is what is compared.
        assert scheduled_jobs(result.stdout + result.stderr) == {"image": 1}
        return file_sha256(tiny_copy / target), runtime(tiny_copy)

    one_core, runtime_one = retrain(1, 1)
    # The premise: the job really ran with other thread counts.
    assert (runtime_one["threads"], runtime(tiny_run)["threads"]) == (1, 2)
    assert runtime_one["intra_op_threads"] == runtime(tiny_run)["intra_op_threads"] == 1
    assert one_core == file_sha256(tiny_run / target)
    # ...and the setting, not --cores, is what decides the numbers.
    other_setting, runtime_other = retrain(2, 2)
    assert runtime_other["intra_op_threads"] == 2 and other_setting != one_core
