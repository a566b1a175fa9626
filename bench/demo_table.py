"""The demo's prepared samples table, as the benchmarks of the metadata stage read it."""

from pathlib import Path

import pandas as pd

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
