"""Interruptions and reproducibility, tested for real through Snakemake."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import file_sha256
from tests.conftest import TINY, run_snakemake, snakemake_command

# Tests that share the session's tiny_run stay on one xdist worker, which builds it once.
pytestmark = [pytest.mark.workflow, pytest.mark.xdist_group("tiny_run")]

IMAGE_LOG = "logs/image/thermal_map/fold{}.log"


def kill_during_image_training(workdir, timeout=300):
    """Start a run, SIGKILL its whole process group once an image job is mid-training."""
    command = snakemake_command(workdir, "--cores", "2", "fusion_results", config=TINY)
    with open(workdir / "killed_run.log", "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [workdir / IMAGE_LOG.format(fold) for fold in (1, 2, 3)]
        if any(log.exists() and "Epoch 2/" in log.read_text() for log in logs):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError("the run finished before an image job could be killed")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("no image job started training in time")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run killed while training an image branch, then resumed."""
    workdir = tmp_path_factory.mktemp("killed")
    kill_during_image_training(workdir)
    assert not (workdir / "results/fusion_results.tsv").exists()
    # A SIGKILL leaves Snakemake's directory lock behind; --unlock only removes that lock.
    assert run_snakemake(workdir, "--unlock", config=TINY).returncode == 0
    result = run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", config=TINY)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return workdir


def test_resumed_run_completes_without_partial_files(resumed):
    assert (resumed / "results/fusion_results.tsv").is_file()
    assert not list((resumed / "results").rglob("*.partial*"))


def test_same_config_gives_identical_folds_and_metadata(resumed, tiny_run):
    for path in ["results/folds.tsv", "results/metadata/fold1/probs.tsv"]:
        assert (resumed / path).read_bytes() == (tiny_run / path).read_bytes(), path


def test_same_config_gives_identical_checkpoints_and_image_probabilities(resumed, tiny_run):
    for fold in (1, 2, 3):
        stage = f"results/image/thermal_map/fold{fold}"
        first = pd.read_csv(tiny_run / stage / "probs.tsv", sep="\t")
        again = pd.read_csv(resumed / stage / "probs.tsv", sep="\t")
        assert first["id"].tolist() == again["id"].tolist()
        difference = np.abs(first.iloc[:, 2:].to_numpy() - again.iloc[:, 2:].to_numpy()).max()
        assert difference <= 1e-6  # the tolerance stated in the README
        checkpoint = stage + "/checkpoint.weights.h5"
        assert file_sha256(resumed / checkpoint) == file_sha256(tiny_run / checkpoint)


def test_provenance_records_config_versions_data_and_commit(tiny_run):
    record = json.loads((tiny_run / "results/provenance.json").read_text())
    assert record["config"]["image_model"] == TINY["image_model"]
    assert {"snakemake", "keras", "scikit-learn"} <= set(record["packages"])
    assert len(record["data"]["samples"]["sha256"]) == 64
    assert record["data"]["thermal_map"]["images"] > 0
    assert "commit" in record["workflow"]
