"""What the metadata-stage benchmarks (bench/labels.py, bench/leaks.py) share: the demo's
prepared table, the config they read, their command line, and running one measurement in a
temporary folder and publishing its section."""

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

from run import write_section  # noqa: E402

CLASSES = ["I", "P", "R"]
COLUMNS = {"id": "sample_id", "group": "patient_id", "label": "label", "exclude": []}


def demo_samples(folder: Path, patients: int, seed: int, columns=None) -> pd.DataFrame:
    """The demo's prepared samples table: id, group, label and its metadata ``columns`` (all
    when None). The images are written, since the demo writes them, but not read."""
    from fusion_dag.demo import write_demo
    from fusion_dag.prepare import prepare_inputs

    table = folder / f"seed{seed}" / "samples.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    write_demo(table, patients=patients, seed=seed)
    samples, _, _ = prepare_inputs(
        table, COLUMNS, CLASSES, {}, "drop", ignored_columns=["depth_map", "wound_photo"]
    )
    return samples[[*samples.columns[:3], *columns]] if columns else samples


def workflow_config() -> dict:
    """config/config.yaml, whose settings the benchmarks measure."""
    with open(REPO / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def forest_settings(tiny: dict | None) -> dict:
    """The config's metadata_model; with ``tiny``'s smaller forest (``n_estimators``) when
    given."""
    settings = workflow_config()["metadata_model"]
    return {**settings, "n_estimators": tiny["n_estimators"]} if tiny else settings


def arguments(docstring: str) -> argparse.Namespace:
    """The benchmarks' command line: ``--tiny`` (a quick pass that writes nothing) and
    ``--threads``."""
    parser = argparse.ArgumentParser(description=docstring.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick pass that writes nothing")
    parser.add_argument("--threads", type=int, default=1, help="forest and CV workers")
    return parser.parse_args()


def run_and_publish(
    heading: str, name: str, measure: Callable, report: Callable, tiny: bool
) -> None:
    """``measure(folder)`` in a temporary folder, then print ``report(results, seconds)`` and,
    unless ``tiny``, write it to bench/RESULTS.md as the section ``heading``."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fusion-dag-{name}-") as folder:
        results = measure(Path(folder))
    section = report(results, time.perf_counter() - started)
    print(section)
    if not tiny:
        write_section(heading, section)
