import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.prepare import InputError, coerce_numeric, prepare_inputs
from tests.conftest import CLASSES, COLUMNS

MODALITIES = {"thermal_map": "thermal_map"}


@pytest.fixture
def workdir(tmp_path, demo_table):
    """A private copy of the demo table and images that a test may break."""
    shutil.copytree(demo_table.parent, tmp_path / "data")
    return tmp_path / "data"


def prepare(folder, table=None, name="samples.csv", modalities=MODALITIES, **overrides):
    """Write ``table`` (when given) and run prepare_inputs with test defaults."""
    path = folder / name
    if table is not None:
        table.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    settings = {"columns": COLUMNS, "classes": CLASSES, "missing_images": "error"}
    settings.update(overrides)
    return prepare_inputs(
        path,
        folder,
        settings["columns"],
        settings["classes"],
        modalities,
        settings["missing_images"],
    )


def original(folder):
    return pd.read_csv(folder / "samples.csv", dtype=str)


def test_clean_table_has_id_group_label_and_features(workdir):
    samples, images = prepare(workdir)
    assert list(samples.columns[:3]) == ["id", "group", "label"]
    assert "thermal_map" not in samples.columns and "sample_id" not in samples.columns
    assert samples["age"].dtype == float and samples["sex"].dtype == object
    assert images["thermal_map"].map(lambda p: p.endswith(".png")).all()


def test_missing_table_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.csv does not exist"):
        prepare(tmp_path, name="nope.csv", modalities={})


def test_missing_configured_column_lists_available(workdir):
    table = original(workdir).drop(columns=["patient_id"])
    with pytest.raises(InputError, match=r"no column 'patient_id' \(config columns/group\)"):
        prepare(workdir, table)


def test_label_outside_classes_names_rows(workdir):
    table = original(workdir)
    table.loc[[3, 8], "label"] = "X"
    with pytest.raises(InputError, match=r"outside classes .*'X'.* data rows 4, 9"):
        prepare(workdir, table)


def test_empty_labels_name_rows(workdir):
    table = original(workdir)
    table.loc[0, "label"] = None
    with pytest.raises(InputError, match="column 'label' is empty in data rows 1;"):
        prepare(workdir, table)


def test_labels_with_spaces_and_case_are_normalised(workdir):
    table = original(workdir)
    table.loc[0, "label"] = f" {table.loc[0, 'label'].lower()} "
    samples, _ = prepare(workdir, table)
    assert samples.loc[0, "label"] == table.loc[0, "label"].strip().upper()


def test_duplicate_ids_are_refused(workdir):
    table = original(workdir)
    table.loc[5, "sample_id"] = table.loc[2, "sample_id"]
    with pytest.raises(InputError, match=r"repeats ids .* data rows 3, 6"):
        prepare(workdir, table)


def test_single_group_is_refused(workdir):
    table = original(workdir)
    table["patient_id"] = "P1"
    with pytest.raises(InputError, match="single group"):
        prepare(workdir, table)


def test_rows_are_numbered_without_an_id_column(workdir):
    samples, _ = prepare(workdir, columns={**COLUMNS, "id": None})
    assert samples["id"].tolist()[:3] == ["1", "2", "3"]


def test_byte_order_mark_and_tsv_are_read(workdir):
    table = original(workdir)
    (workdir / "samples.tsv").write_text(table.to_csv(sep="\t", index=False), encoding="utf-8-sig")
    samples, _ = prepare(workdir, name="samples.tsv")
    assert samples["id"].iloc[0] == table["sample_id"].iloc[0]


def test_parquet_is_read(workdir):
    original(workdir).to_parquet(workdir / "samples.parquet")
    samples, _ = prepare(workdir, name="samples.parquet")
    assert len(samples) == len(original(workdir))


def test_decimal_commas_become_numbers():
    column = pd.Series(["3,5", None, "-1,25"], dtype=object)
    assert coerce_numeric(column).tolist()[::2] == [3.5, -1.25]
    assert np.isnan(coerce_numeric(column)[1])
    assert coerce_numeric(pd.Series(["a", "1"], dtype=object)).tolist() == ["a", "1"]


def test_metadata_only_needs_no_image_column(workdir):
    table = original(workdir).drop(columns=["thermal_map"])
    samples, images = prepare(workdir, table, modalities={})
    assert list(images.columns) == ["id"] and len(samples) == len(table)


def test_missing_image_file_is_named(workdir):
    first = original(workdir)["thermal_map"].iloc[0]
    (workdir / first).unlink()
    with pytest.raises(InputError, match=f"image file .*{first} does not exist"):
        prepare(workdir)


def test_truncated_image_is_refused(workdir):
    first = original(workdir)["thermal_map"].iloc[0]
    data = (workdir / first).read_bytes()
    (workdir / first).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot be read"):
        prepare(workdir)


def test_image_outside_image_dir_is_refused(workdir):
    table = original(workdir)
    table.loc[1, "thermal_map"] = "../../etc/passwd"
    with pytest.raises(InputError, match="outside image_dir"):
        prepare(workdir, table)


def test_empty_image_cells_error_or_drop(workdir):
    table = original(workdir)
    table.loc[[0, 1], "thermal_map"] = None
    with pytest.raises(InputError, match="missing_images: drop"):
        prepare(workdir, table)
    samples, images = prepare(workdir, table, missing_images="drop")
    assert images["thermal_map"].isna().sum() == 2 and len(samples) == len(table)


def test_image_with_an_alpha_channel_is_refused(workdir):
    first = original(workdir)["thermal_map"].iloc[0]
    Image.new("RGBA", (64, 64)).save(workdir / first)
    with pytest.raises(InputError, match="has mode RGBA; expected 3-channel RGB or 1-channel"):
        prepare(workdir)


def test_image_of_size_zero_is_refused(workdir):
    first = original(workdir)["thermal_map"].iloc[0]
    png = (workdir / first).read_bytes()
    # Rewrite the PNG header's width to 0 (bytes 16-19 of the IHDR chunk).
    (workdir / first).write_bytes(png[:16] + (0).to_bytes(4, "big") + png[20:])
    with pytest.raises(InputError, match=f"{first}.*(size|cannot be read)"):
        prepare(workdir)


def test_non_utf8_table_is_named(workdir):
    table = original(workdir)
    table.loc[0, "sex"] = "männlich"
    (workdir / "latin1.csv").write_bytes(table.to_csv(index=False).encode("latin-1"))
    with pytest.raises(InputError, match="latin1.csv is not UTF-8 text"):
        prepare(workdir, name="latin1.csv")
