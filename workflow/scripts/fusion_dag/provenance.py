"""The provenance record of a completed run: what produced these numbers.

Why: a team that reruns a study months later, or on its cluster, must be able to tell whether
a difference comes from the data, the config, the code, the package versions or how the jobs
ran. ``results/provenance.json`` is written only once the results it describes exist.
"""

import hashlib
import subprocess
from importlib.metadata import PackageNotFoundError, version

import pandas as pd

from fusion_dag.artifacts import ID, file_sha256

PROVENANCE_PACKAGES = (
    "snakemake",
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "scikit-learn",
    "skops",
    "numpy",
    "pandas",
    "pillow",
)


def package_versions(names=PROVENANCE_PACKAGES) -> dict:
    """Installed versions of the packages results depend on (absent ones are left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def git_state(folder) -> dict:
    """The workflow's git commit and whether its tracked files differ from it."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def data_hashes(samples_path, images: pd.DataFrame) -> dict:
    """SHA-256 of the samples table and, per modality, one digest over every image used."""
    hashes = {"samples": {"path": str(samples_path), "sha256": file_sha256(samples_path)}}
    for modality in images.columns.drop(ID):
        present = images[images[modality].notna()]
        digest = hashlib.sha256()
        for sample_id, path in zip(present[ID], present[modality], strict=True):
            digest.update(f"{sample_id}\t{file_sha256(path)}\n".encode())
        hashes[modality] = {"images": len(present), "sha256": digest.hexdigest()}
    return hashes


def job_runtimes(records: dict) -> dict:
    """Job -> how it ran (threads, TensorFlow thread pools and determinism), from its metrics.

    ``records`` maps a job's name (its metrics path) to the job's metrics record; records
    without a ``runtime`` entry (jobs that never start TensorFlow) are left out.
    """
    return {job: record["runtime"] for job, record in records.items() if "runtime" in record}
