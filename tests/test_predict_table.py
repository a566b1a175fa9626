"""A new table for prediction checked against the bundle's spec (the end-to-end cases, on a
finished bundle, are in test_predict.py)."""

from pathlib import Path

import pandas as pd
import pytest

from fusion_dag.artifacts import InputError
from fusion_dag.predict_table import new_samples, typed_column


def test_a_numeric_feature_with_text_is_one_error_naming_rows():
    table = pd.DataFrame({"age": ["61", "seventy", "3,5"]})
    with pytest.raises(InputError, match=r"'age' was numeric in training.*'seventy'.*rows 2"):
        typed_column(table, {"name": "age", "type": "numeric"}, "new.csv")
    text = typed_column(pd.DataFrame({"sex": [" M", "1"]}), {"name": "sex", "type": "text"}, "x")
    assert text.tolist() == ["M", "1"]
    infinite = pd.DataFrame({"age": ["61", "inf"]})
    with pytest.raises(InputError, match="'age' holds infinite values in data rows 2"):
        typed_column(infinite, {"name": "age", "type": "numeric"}, "new.csv")


def test_a_modality_whose_views_live_in_their_own_folder_is_read_from_it(tmp_path):
    """Depth maps under depth/ and thermal views under thermal/, the table elsewhere: each
    modality's image paths are relative to its own folder, as in training."""
    import numpy as np
    from PIL import Image

    from fusion_dag.bundle import model_spec

    for folder, name in [("depth", "a.png"), ("depth", "b.png"), ("thermal", "a1.png")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(tmp_path / folder / name)
    table = pd.DataFrame(
        {"sample_id": ["a", "b"], "patient_id": ["p1", "p2"], "depth": ["a.png", "b.png"]}
    )
    table.to_csv(tmp_path / "new.csv", index=False)
    pd.DataFrame({"sample_id": ["a"], "file": ["a1.png"]}).to_csv(
        tmp_path / "views.csv", index=False
    )
    settings = {
        "size": 8,
        "channels": 1,
        "value_range": None,
        "backbone": "small_cnn",
        "augmentation": None,
        "mixed_precision": False,
    }
    thermal = {**settings, "path": "file", "keys": ["sample_id"], "box": None, "box_margin": 0}
    members = ["depth_map", "thermal_map"]
    spec = model_spec(
        pd.DataFrame(columns=["id", "group", "label"]),
        {"id": "sample_id", "group": "patient_id", "label": "label"},
        ["I", "P", "R"],
        {"depth_map": {**settings, "column": "depth"}, "thermal_map": thermal},
        {"depth_map+thermal_map": members},
        {"metadata_weight": 0.7, "weights": None},
    )
    tables = {"thermal_map": tmp_path / "views.csv"}
    folders = {"depth_map": tmp_path / "depth", "thermal_map": tmp_path / "thermal"}
    _, views = new_samples(tmp_path / "new.csv", tmp_path, spec, members, tables, folders)
    paths = {m: [Path(p) for p in views.loc[views["modality"] == m, "path"]] for m in members}
    assert [p.name for p in paths["depth_map"]] == ["a.png", "b.png"]
    assert all(p.parent.name == "depth" for p in paths["depth_map"])
    assert [p.parent.name for p in paths["thermal_map"]] == ["thermal"]
    # Without the modality's own folder its paths are looked up in image_dir: not there.
    with pytest.raises(InputError, match="a.png"):
        new_samples(tmp_path / "new.csv", tmp_path, spec, members, tables)
