"""Cluster submission through a real single-node SLURM started on this machine.

The test installs Debian's slurm-wlm and munge when missing and links /etc/slurm/slurm.conf for
its lifetime, so it runs only when asked: ``FUSION_DAG_SLURM_TEST=1 python -m pytest``
(``.ci/run`` sets it). When asked, a cluster that cannot start is a failure, not a skip.
"""

import os
import re
import subprocess

import pytest

from tests.conftest import REPO, TINY, run_snakemake, snakemake_command
from tests.local_slurm import ClusterUnavailable, local_slurm

REQUESTED = os.environ.get("FUSION_DAG_SLURM_TEST") == "1"
pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(
        not REQUESTED,
        reason="SLURM test not requested: set FUSION_DAG_SLURM_TEST=1 to run it (it installs "
        "Debian's slurm-wlm and munge and links /etc/slurm/slurm.conf while it runs)",
    ),
]

# Metadata and its fusion only: the image branch's jobs are the same kind of submission.
CLUSTER_CONFIG = {**TINY, "combinations": [["metadata"]]}
# The test node has 2 CPUs, so no job may ask for more (SLURM would keep it pending).
ONE_CPU = ["--set-threads", "metadata=1", "fusion=1", "prepare=1"]
# Worth a queue slot: prepare, one forest per fold and one fusion job per fold. Everything
# else (demo data, folds, tables, plots, provenance, target) is a localrule.
PARTITIONS = TINY["cv"]["folds"] * TINY["cv"]["repeats"]
EXPECTED_SUBMISSIONS = 1 + 2 * PARTITIONS


def cluster_command(workdir, snakefile=None) -> list:
    """The tiny case through the SLURM profile in ``workdir`` (``snakefile``: another copy of
    the workflow, as bench/slurm.py runs one without localrules)."""
    command = snakemake_command(
        workdir,
        "--profile",
        str(REPO / "profiles/slurm"),
        "--seconds-between-status-checks",
        "2",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "fusion_results",
        *ONE_CPU,
        config=CLUSTER_CONFIG,
    )
    if snakefile is not None:
        command[command.index("-s") + 1] = str(snakefile)
    return command


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        with local_slurm(tmp_path_factory.mktemp("slurm")) as environment:
            yield environment
    except ClusterUnavailable as reason:
        pytest.fail(f"FUSION_DAG_SLURM_TEST=1 but no SLURM could be started here: {reason}")


def test_cluster_jobs_go_through_sbatch_and_results_match_a_local_run(slurm, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    local.mkdir()
    cluster.mkdir()
    reference = run_snakemake(local, "--cores", "2", "fusion_results", config=CLUSTER_CONFIG)
    assert reference.returncode == 0, reference.stderr[-3000:]
    command = cluster_command(cluster)
    result = subprocess.run(command, env=slurm, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", output)
    assert len(submitted) == EXPECTED_SUBMISSIONS, output[-4000:]
    known = subprocess.run(
        ["scontrol", "show", "jobs", "-o"], env=slurm, capture_output=True, text=True
    ).stdout
    states = dict(re.findall(r"JobId=(\d+) .*?JobState=(\w+)", known))
    assert {job_id: states.get(job_id) for job_id in submitted} == {
        job_id: "COMPLETED" for job_id in submitted
    }
    for path in [
        "results/folds.tsv",
        "results/metadata/repeat1/fold1/probs.tsv",
        f"results/metadata/repeat1/fold{TINY['cv']['folds']}/probs.tsv",
        "results/fusion/metadata/repeat1/fold2/metrics.json",
        "results/fusion_results.tsv",
    ]:
        assert (cluster / path).read_bytes() == (local / path).read_bytes(), path
