"""The workflow's own files: written atomically, read back with ids kept as written."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import (
    ArtifactError,
    file_sha256,
    probability_table,
    read_json,
    read_tsv,
    write_json,
    write_tsv,
)


def test_a_table_round_trips_with_ids_patients_and_labels_as_written(tmp_path):
    """``NA``, ``007`` and ``1.0`` are an id, a patient and a label, not a missing value or a
    number: read back as the text that was written."""
    table = pd.DataFrame(
        {"id": ["NA", "v2"], "group": ["007", "7"], "label": ["1.0", "P"], "x": [0.5, None]}
    )
    path = tmp_path / "deep" / "table.tsv"
    write_tsv(table, path)
    read = read_tsv(path)
    assert read[["id", "group", "label"]].values.tolist() == [
        ["NA", "007", "1.0"],
        ["v2", "7", "P"],
    ]
    assert np.isnan(read.loc[1, "x"])
    assert [p.name for p in path.parent.iterdir()] == ["table.tsv"]  # no .partial left


def test_probability_table_has_the_contract_columns_in_class_order():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    table = probability_table(["a", "b"], ["train", "val"], probs, ["I", "P", "R"])
    assert list(table.columns) == ["id", "split", "prob_I", "prob_P", "prob_R"]
    assert table["prob_R"].tolist() == [0.3, 0.1]
    assert "split" not in probability_table(["a"], None, probs[:1], ["I", "P", "R"]).columns


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"fusion" * 100_000)
    assert file_sha256(path) == hashlib.sha256(b"fusion" * 100_000).hexdigest()


def test_a_results_file_cut_short_names_the_file_to_delete(tmp_path):
    """Not pandas' or json's traceback: the file, and that deleting it has it rewritten."""
    write_json({"sha256": "ab"}, tmp_path / "checkpoint.json")
    write_tsv(pd.DataFrame({"id": ["a"]}), tmp_path / "probs.tsv")
    assert read_json(tmp_path / "checkpoint.json") == {"sha256": "ab"}
    for path, read, cause in [
        (tmp_path / "checkpoint.json", read_json, "Expecting value"),
        (tmp_path / "probs.tsv", read_tsv, "No columns to parse from file"),
    ]:
        path.write_text("")
        with pytest.raises(
            ArtifactError,
            match=rf"{path} cannot be read \({cause}.*delete it and run again to rewrite it",
        ):
            read(path)
