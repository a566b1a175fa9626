import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.artifacts import InputError
from fusion_dag.cache import build_cache
from fusion_dag.demo import THERMAL_TABLE
from fusion_dag.prepare import prepare_inputs
from fusion_dag.tables import feature_column
from tests.conftest import CLASSES, COLUMNS

MODALITIES = {"thermal_map": "thermal_map"}


@pytest.fixture
def workdir(tmp_path, demo_table):
    """A private copy of the demo table and images that a test may break, with a
    ``thermal_map`` column of one PNG per visit (the one-path-per-visit layout; the demo's
    wound photographs, the few missing ones filled in)."""
    folder = tmp_path / "data"
    shutil.copytree(demo_table.parent, folder)
    table = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    photos = table["wound_photo"].copy()
    for row in photos.index[photos == ""]:
        photos[row] = f"photo/filled_{row}.png"
        shutil.copyfile(folder / table["wound_photo"].iloc[0], folder / photos[row])
    table.insert(3, "thermal_map", photos)
    table.to_csv(folder / "samples.csv", index=False)
    return folder


def prepare(folder, table=None, name="samples.csv", modalities=MODALITIES, **overrides):
    """Write ``table`` (when given) and run prepare_inputs with test defaults."""
    path = folder / name
    if table is not None:
        table.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    settings = {"columns": COLUMNS, "classes": CLASSES, "missing_images": "error"}
    extras = {
        k: overrides.pop(k) for k in ("ignored_columns", "scaled", "na_values") if k in overrides
    }
    settings.update(overrides)
    layouts = {
        name: {"column": column, "image_dir": folder} if isinstance(column, str) else column
        for name, column in modalities.items()
    }
    samples, views, _ = prepare_inputs(
        path,
        settings["columns"],
        settings["classes"],
        layouts,
        settings["missing_images"],
        **extras,
    )
    # One path per visit: the views as the wide table of paths tests compare.
    images = samples[["id"]].copy()
    for name in modalities:
        paths = views[views["modality"] == name].set_index("id")["path"]
        images[name] = images["id"].map(paths)
    return samples, images


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
    with pytest.raises(
        InputError,
        match=r"no column 'patient_id' \(config columns.group\); columns are 'sample_id', .*; "
        "set columns.group to the column naming each row's patient",
    ):
        prepare(workdir, table)


def test_missing_default_id_column_says_how_to_number_rows(workdir):
    table = original(workdir).drop(columns=["sample_id"])
    with pytest.raises(InputError, match=r"\(config columns.id\).*columns: \{id: null\}"):
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
    assert feature_column(column, "x", "t.csv").tolist()[::2] == [3.5, -1.25]
    assert np.isnan(feature_column(column, "x", "t.csv")[1])
    assert feature_column(pd.Series(["a", "1"], dtype=object), "x", "t.csv").tolist() == ["a", "1"]


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


def test_truncated_jpeg_frame_of_an_image_table_is_refused(tmp_path, demo_table):
    from tests.conftest import thermal_layout

    folder = tmp_path / "data"
    shutil.copytree(demo_table.parent, folder)
    first = pd.read_csv(folder / THERMAL_TABLE)["file"].iloc[0]
    data = (folder / first).read_bytes()
    (folder / first).write_bytes(data[: len(data) // 2])
    layout = {"thermal_map": thermal_layout(folder / "samples.csv")}
    with pytest.raises(InputError, match=rf"{first} \(modality thermal_map, data row 1\) cannot"):
        prepare_inputs(folder / "samples.csv", COLUMNS, CLASSES, layout, "drop")


def test_empty_image_cells_error_or_drop(workdir):
    table = original(workdir)
    table.loc[[0, 1], "thermal_map"] = None
    with pytest.raises(InputError, match="missing_images: drop"):
        prepare(workdir, table)
    samples, images = prepare(workdir, table, missing_images="drop")
    assert images["thermal_map"].isna().sum() == 2 and len(samples) == len(table)


@pytest.mark.parametrize(
    ("mode", "logged"),
    [
        ("RGBA", "1 images of mode RGBA converted to RGB (alpha dropped)"),
        ("P", "1 images of mode P converted to RGB (palette)"),
        ("LA", "1 images of mode LA converted to grey-scale (alpha dropped)"),
        ("1", "1 images of mode 1 converted to grey-scale (1-bit)"),
    ],
)
def test_alpha_and_palette_images_are_converted_and_counted(workdir, caplog, mode, logged):
    first = original(workdir)["thermal_map"].iloc[0]
    Image.new(mode, (64, 64)).save(workdir / first)
    with caplog.at_level(logging.WARNING):
        _, images = prepare(workdir)
    assert f"Modality thermal_map: {logged} (id " in caplog.text
    build_cache(images[["thermal_map"]].iloc[:1].set_axis(["path"], axis=1), 8, workdir / "c.npy")
    assert np.load(workdir / "c.npy").shape == (1, 8, 8, 3)


def test_colour_images_among_grey_ones_are_counted_in_a_warning(workdir, caplog):
    paths = original(workdir)["thermal_map"]
    for path in paths.iloc[1:]:
        Image.open(workdir / path).convert("L").save(workdir / path)
    with caplog.at_level(logging.WARNING):
        prepare(workdir)
    assert f"Modality thermal_map mixes 1 colour and {len(paths) - 1} grey-scale images" in (
        caplog.text
    )


def write_16_bit(path, value):
    Image.fromarray(np.full((20, 20), value, dtype=np.uint16)).save(path)


def test_16_bit_grey_images_need_a_value_range(workdir):
    paths = original(workdir)["thermal_map"]
    for index, path in enumerate(paths):
        write_16_bit(workdir / path, 1000 + index)
    with pytest.raises(
        InputError,
        match=r"is high-bit-depth grey-scale \(mode I;16; \d+ images of this modality are\); "
        r"set modalities.thermal_map.value_range: \[low, high\]",
    ):
        prepare(workdir)
    _, images = prepare(workdir, scaled={"thermal_map"})
    assert images["thermal_map"].notna().all()


@pytest.mark.parametrize("kind", ["16-bit PNG", "float TIFF"])
def test_value_range_scales_every_image_by_the_same_fixed_range(tmp_path, kind):
    paths = []
    for index, value in enumerate([1000, 2000, 5000]):
        if kind == "16-bit PNG":
            paths.append(tmp_path / f"{index}.png")
            write_16_bit(paths[-1], value)
        else:
            paths.append(tmp_path / f"{index}.tiff")
            Image.fromarray(np.full((20, 20), value / 100, dtype=np.float32)).save(paths[-1])
    value_range = [0, 4000] if kind == "16-bit PNG" else [0, 40]
    build_cache(pd.DataFrame({"path": paths}), 8, tmp_path / "c.npy", value_range=value_range)
    cache = np.load(tmp_path / "c.npy")
    # 1000 and 2000 of 4000 keep their ratio; 5000 is above the range and clips to white.
    assert cache[:, 4, 4, 0].tolist() == [64, 128, 255]
    assert (cache[..., 0] == cache[..., 2]).all()


def test_symlinked_image_dir_and_files_inside_it_are_followed(workdir, tmp_path):
    link = tmp_path / "share"
    link.symlink_to(workdir)
    first = original(workdir)["thermal_map"].iloc[0]
    (workdir / "elsewhere.png").write_bytes((workdir / first).read_bytes())
    (workdir / first).unlink()
    (workdir / first).symlink_to(workdir / "elsewhere.png")
    layout = {"thermal_map": {"column": "thermal_map", "image_dir": link}}
    samples, views, _ = prepare_inputs(workdir / "samples.csv", COLUMNS, CLASSES, layout, "error")
    assert len(views) == len(samples) and views["path"].str.startswith(str(link)).all()


@pytest.mark.parametrize(
    "path", ["../outside.png", "../../etc/passwd", "/etc/passwd", "thermal/../../x.png"]
)
def test_paths_that_leave_image_dir_are_refused(workdir, path):
    table = original(workdir)
    table.loc[1, "thermal_map"] = path
    with pytest.raises(InputError, match="points outside image_dir .* without '..'"):
        prepare(workdir, table)


def test_class_with_no_rows_is_refused_before_folds(workdir):
    table = original(workdir)
    table = table[table["label"] != "R"]
    with pytest.raises(InputError, match="class R has no rows in column 'label'; remove it from"):
        prepare(workdir, table)


def test_class_in_one_patient_only_names_the_patient(workdir):
    table = original(workdir)
    rows = table["label"] == "R"
    keep = table.loc[rows, "patient_id"].iloc[0]
    table = table[~rows | (table["patient_id"] == keep)]
    with pytest.raises(InputError, match=f"class R occurs in one patient only \\({keep}, "):
        prepare(workdir, table)


def test_unused_modality_columns_are_never_features(workdir):
    samples, _ = prepare(workdir, modalities={}, ignored_columns=["thermal_map"])
    assert "thermal_map" not in samples.columns


def test_semicolon_csv_with_decimal_commas_is_read(workdir):
    table = original(workdir)
    table["bmi"] = table["bmi"].str.replace(".", ",", regex=False)
    (workdir / "european.csv").write_text(table.to_csv(sep=";", index=False))
    samples, _ = prepare(workdir, name="european.csv")
    assert samples["bmi"].dtype == float
    expected = pd.to_numeric(original(workdir)["bmi"]).to_numpy()
    np.testing.assert_allclose(samples["bmi"].to_numpy(), expected)


def test_unparseable_line_is_named_with_its_likely_cause(workdir):
    text = (workdir / "samples.csv").read_text().splitlines()
    text[7] += ",29,4"
    (workdir / "broken.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(
        InputError, match=r"broken.csv: line 8 has more fields than the header"
    ) as error:
        prepare(workdir, name="broken.csv")
    assert "\n" not in str(error.value)  # one line, whatever pandas' message holds


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


def test_non_utf8_byte_is_located_by_offset_and_line_in_a_large_file(workdir):
    table = pd.concat([original(workdir)] * 40, ignore_index=True)
    table["sample_id"] = [f"S{i}" for i in range(len(table))]
    raw = table.to_csv(index=False).encode()
    line = 901
    offset = len(b"\n".join(raw.split(b"\n")[: line - 1])) + 1
    (workdir / "late.csv").write_bytes(raw[:offset] + b"\xe9" + raw[offset + 1 :])
    assert offset > 100_000
    with pytest.raises(InputError, match=f"byte {offset:,}, line {line}:"):
        prepare(workdir, name="late.csv")


# Bad input, round two: the table and the images of the training table, as a new user brings
# them. Each case stops with one line naming the file, column, rows or id, or runs with a
# warning that says what was done.


def test_a_repeated_label_header_stops_instead_of_becoming_a_feature(workdir):
    table = original(workdir)
    text = table.to_csv(index=False).replace("label,", "label,", 1)
    header, rest = text.split("\n", 1)
    (workdir / "samples.csv").write_text(f"{header},label\n" + rest.replace("\n", ",I\n"))
    with pytest.raises(InputError, match="repeats column names \\('label' in columns"):
        prepare(workdir)


def test_missing_cells_are_counted_per_column_and_na_words_are_data(workdir, caplog):
    table = original(workdir)
    table.loc[[0, 1], "age"] = None
    table.loc[[2], "sex"] = "NA"
    with caplog.at_level(logging.INFO):
        samples, _ = prepare(workdir, table)
    assert samples.loc[2, "sex"] == "NA"
    (counts,) = [r.getMessage() for r in caplog.records if "missing cells per feature" in r.message]
    assert f"age={table['age'].isna().sum()}" in counts.split(": ")[-1].split(", ")
    samples, _ = prepare(workdir, table, na_values=["NA"])
    assert pd.isna(samples.loc[2, "sex"])


def test_infinite_feature_values_stop_prepare_naming_column_and_rows(workdir):
    table = original(workdir)
    table.loc[[3, 5], "age"] = ["inf", "-inf"]
    with pytest.raises(
        InputError, match="feature column 'age' holds infinite values in data rows 4, 6"
    ):
        prepare(workdir, table)


def test_stray_text_in_a_numeric_column_warns_and_keeps_it_numeric(workdir, caplog):
    table = original(workdir)
    table.loc[[4], "age"] = "#DIV/0!"
    with caplog.at_level(logging.WARNING):
        samples, _ = prepare(workdir, table)
    assert samples["age"].dtype == float and pd.isna(samples.loc[4, "age"])
    assert "'age' is numeric but for 1 cells ('#DIV/0!' in data rows 5)" in caplog.text


def test_a_patient_number_written_as_a_float_stays_one_patient(workdir, caplog):
    table = original(workdir)
    numbers = {group: str(n) for n, group in enumerate(table["patient_id"].unique(), start=1)}
    table["patient_id"] = table["patient_id"].map(numbers)
    table.loc[0, "patient_id"] = table.loc[0, "patient_id"] + ".0"
    with caplog.at_level(logging.WARNING):
        samples, _ = prepare(workdir, table)
    assert samples["group"].nunique() == len(numbers)
    assert "writes 1 patient numbers more than one way" in caplog.text


def replace_first_image(workdir, save):
    """Replace the first visit's thermal map with what ``save(path)`` writes; its path."""
    first = workdir / original(workdir)["thermal_map"].iloc[0]
    save(first)
    return first


def test_exif_orientation_is_applied_and_counted(workdir, caplog):
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # white left half: turned by 90 degrees it becomes a half on top

    def save(path):
        exif = Image.Exif()
        exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
        Image.fromarray(pixels).save(path, format="PNG", exif=exif)

    first = replace_first_image(workdir, save)
    with caplog.at_level(logging.INFO):
        _, images = prepare(workdir)
    assert "Modality thermal_map: 1 images carry an EXIF orientation" in caplog.text
    build_cache(pd.DataFrame({"path": [str(first)]}), 16, workdir / "c.npy")
    cached = np.load(workdir / "c.npy")[0, :, :, 0]
    upright = np.asarray(Image.fromarray(pixels).rotate(-90, expand=True).resize((16, 16)))
    np.testing.assert_array_equal(cached, upright[:, :, 0])
    assert cached[:8].mean() > 200 and cached[8:].mean() < 50  # the white half is on top


@pytest.mark.parametrize("kind", ["GIF", "TIFF"])
def test_files_of_several_frames_are_refused_naming_the_count(workdir, kind):
    frames = [Image.new("L", (8, 8), value) for value in (0, 120, 240)]
    first = replace_first_image(
        workdir, lambda p: frames[0].save(p, format=kind, save_all=True, append_images=frames[1:])
    )
    with pytest.raises(InputError, match=f"{first.name} .*holds 3 frames"):
        prepare(workdir)


def test_a_phone_jpeg_with_a_gain_map_is_one_photograph(workdir):
    """Pillow opens a JPEG with an MPF gain map as MPO with 2 frames; the first is the photo."""
    photo, gain_map = Image.new("RGB", (16, 16), "red"), Image.new("RGB", (8, 8), "blue")
    replace_first_image(
        workdir, lambda p: photo.save(p, format="MPO", save_all=True, append_images=[gain_map])
    )
    _, images = prepare(workdir)
    assert images["thermal_map"].notna().all()


def test_decompression_bombs_are_one_line_and_large_images_a_warning(workdir, caplog, monkeypatch):
    """The demo's thermal maps are 64 x 64 = 4,096 pixels; the limit is lowered around them."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over twice the limit: Pillow refuses
    with pytest.raises(InputError, match="has 4,096 pixels, over twice Pillow's .* of 2,000"):
        prepare(workdir)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # over the limit: Pillow warns
    with caplog.at_level(logging.WARNING):
        prepare(workdir)
    assert "(modality thermal_map, id" in caplog.text
    assert "has 4,096 pixels, over Pillow's decompression-bomb limit of 3,000: read" in caplog.text


def test_an_image_path_that_is_a_folder_says_so(workdir):
    table = original(workdir)
    (workdir / "thermal" / "visit.png").mkdir()
    table.loc[1, "thermal_map"] = "thermal/visit.png"
    with pytest.raises(InputError, match="visit.png is a folder, not an image file"):
        prepare(workdir, table)


def test_windows_separators_in_a_missing_path_are_pointed_out(workdir):
    table = original(workdir)
    table.loc[1, "thermal_map"] = table.loc[1, "thermal_map"].replace("/", "\\")
    with pytest.raises(InputError, match="the paths use '\\\\': write them with '/'"):
        prepare(workdir, table)


def test_numeric_classes_compare_with_labels_as_text(workdir):
    from fusion_dag.config import class_names

    table = original(workdir)
    table["label"] = table["label"].map({"I": "1.0", "P": "2", "R": "3"})
    samples, _ = prepare(workdir, table, classes=class_names([1, 2, 3.0]))
    assert sorted(samples["label"].unique()) == ["1", "2", "3"]
