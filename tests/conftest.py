"""Shared fixtures: tiny generated data in a temporary directory, never the user's results."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusion_dag.demo import write_demo

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["I", "P", "R"]
COLUMNS = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}


@pytest.fixture(scope="session")
def demo_table(tmp_path_factory) -> Path:
    """A 40-patient demo table with its thermal maps (shared read-only by tests)."""
    path = tmp_path_factory.mktemp("demo") / "samples.csv"
    write_demo(path, patients=40, seed=7)
    return path


def run_snakemake(workdir: Path, *args: str, config: dict | None = None):
    """Run this repository's workflow in ``workdir``; return the completed process."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += ["--directory", str(workdir), *args]
    if config is not None:
        configfile = workdir / "test_config.yaml"
        configfile.write_text(yaml.safe_dump(config))
        command += ["--configfile", str(configfile)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)
