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
from fusion_dag.views import BOX

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
    """SHA-256 of the samples table and, per modality, one digest over every view used (its
    visit, its file's SHA-256 and its wound box: a moved box is other data)."""
    hashes = {"samples": {"path": str(samples_path), "sha256": file_sha256(samples_path)}}
    file_hashes = {path: file_sha256(path) for path in images["path"].unique()}
    for modality, views in images.groupby("modality", sort=False):
        digest = hashlib.sha256()
        for view in views.itertuples(index=False):
            box = ",".join(str(getattr(view, name)) for name in BOX)
            digest.update(f"{getattr(view, ID)}\t{file_hashes[view.path]}\t{box}\n".encode())
        hashes[modality] = {
            "images": int(views["path"].nunique()),
            "views": len(views),
            "sha256": digest.hexdigest(),
        }
    return hashes


def job_runtimes(records: dict) -> dict:
    """Job -> how it ran (threads, TensorFlow thread pools and determinism), from its metrics.

    ``records`` maps a job's name (its metrics path) to the job's metrics record; records
    without a ``runtime`` entry (jobs that never start TensorFlow) are left out.
    """
    return {job: record["runtime"] for job, record in records.items() if "runtime" in record}
