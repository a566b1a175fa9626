"""Views: image tables joined to visits, wound boxes, crops, view weights, patient grouping."""

import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.artifacts import InputError
from fusion_dag.cache import build_cache
from fusion_dag.folds import inner_split
from fusion_dag.prepare import prepare_inputs
from fusion_dag.views import BOX, VIEW_COLUMNS, crop_window, view_weights, with_crops
from tests.conftest import CLASSES, COLUMNS, branch_fold


def test_crop_is_the_box_grown_by_the_margin_and_made_square():
    # A 40 x 20 box centred at (100, 80): grown by 25 % per side, 60 x 30; square: 60.
    assert crop_window((80, 70, 120, 90), 320, 240, 0.25) == (70, 50, 130, 110)
    assert crop_window((80, 70, 120, 90), 320, 240, 0.0) == (80, 60, 120, 100)


def test_a_crop_at_the_frame_edge_moves_inside_and_stays_square():
    x0, y0, x1, y1 = crop_window((0, 100, 30, 130), 320, 240, 0.5)
    assert (x0, x1) == (0, 60) and y1 - y0 == 60 and (y0 + y1) / 2 == 115
    # A square larger than the frame's shorter side shrinks to it, still square.
    assert crop_window((10, 10, 200, 230), 320, 240, 0.25) == (0, 0, 240, 240)
    # A half-pixel side still gives a square (one rounding for both axes).
    x0, y0, x1, y1 = crop_window((10.0, 20.0, 31.0, 41.0), 320, 240, 0.25)
    assert x1 - x0 == y1 - y0 == 32


def write_frame(path, boxes, size=(120, 90)):
    """A grey frame with each box filled with its own grey level."""
    frame = np.full((size[1], size[0]), 20, dtype=np.uint8)
    for level, (x0, y0, x1, y1) in boxes:
        frame[y0:y1, x0:x1] = level
    Image.fromarray(frame, mode="L").save(path)


def test_a_frame_with_three_boxes_is_decoded_once_into_three_crops(tmp_path, monkeypatch):
    boxes = [(200, (10, 10, 30, 30)), (120, (50, 20, 70, 40)), (60, (90, 60, 110, 80))]
    write_frame(tmp_path / "frame.png", boxes)
    views = pd.DataFrame(
        {
            "path": [str(tmp_path / "frame.png")] * 3,
            **{name: [float(b[1][i]) for b in boxes] for i, name in enumerate(BOX)},
            "width": 120.0,
            "height": 90.0,
        }
    )
    opened = []
    original = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
    build_cache(with_crops(views, 0.0), 8, tmp_path / "c.npy", channels=1)
    cache = np.load(tmp_path / "c.npy")
    assert len(opened) == 1
    # With no margin each crop is exactly its box: one grey level per view.
    assert [int(np.median(view)) for view in cache] == [200, 120, 60]


def test_a_frame_changed_since_prepare_is_refused_not_padded(tmp_path):
    write_frame(tmp_path / "frame.png", [], size=(60, 40))
    views = pd.DataFrame(
        {"path": [str(tmp_path / "frame.png")], "x_min": [5.0], "y_min": [5.0]}
        | {"x_max": [25.0], "y_max": [25.0], "width": [120.0], "height": [90.0]}
    )
    with pytest.raises(InputError, match=r"frame.png is 60 x 40 px, but was 120 x 90 when"):
        build_cache(with_crops(views, 0.0), 8, tmp_path / "c.npy", channels=1)
    assert not (tmp_path / "c.npy").exists()


def write_study(folder, visit_numbers, rows):
    """A samples table of three patients' visits and an image table (rows: patient, visit,
    file, box) whose frames are written here."""
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(visit_numbers))],
            "patient_id": [p for p, _ in visit_numbers],
            "visit": [v for _, v in visit_numbers],
            "label": [CLASSES[i % 3] for i in range(len(visit_numbers))],
            "age": np.arange(len(visit_numbers), dtype=float),
        }
    )
    samples.to_csv(folder / "samples.csv", index=False)
    for _, _, file, _ in rows:
        if not (folder / file).exists():
            write_frame(folder / file, [])
    images = pd.DataFrame(
        [(p, v, f, *box) for p, v, f, box in rows],
        columns=["patient_id", "visit", "file", *BOX],
    )
    images.to_csv(folder / "images.csv", index=False)


VISITS = [(7, 1), (7, 2), (8, 1), (8, 2), (9, 1), (9, 2)]
LAYOUT = {"images": None, "path": "file", "keys": ["patient_id", "visit"], "box": list(BOX)}


def prepare_study(folder, missing_images="drop", **layout):
    layout = {**LAYOUT, "images": str(folder / "images.csv"), "image_dir": folder, **layout}
    return prepare_inputs(
        folder / "samples.csv", COLUMNS, CLASSES, {"thermal_map": layout}, missing_images
    )


def test_zero_padded_keys_match_numbers_and_orphan_rows_are_counted(tmp_path, caplog):
    rows = [("007", "01", "a.png", (1, 1, 20, 20)), ("007", "1", "b.png", (1, 1, 20, 20))]
    rows += [("8", "2.0", "a.png", (30, 30, 50, 50)), ("010", "1", "c.png", (1, 1, 9, 9))]
    rows += [("9", "01", "c.png", (100, 70, 130, 100))]  # partly outside the 120 x 90 frame
    write_study(tmp_path, VISITS, rows)
    with caplog.at_level(logging.INFO):
        samples, views, counts = prepare_study(tmp_path)
    assert views["id"].tolist() == ["s0", "s0", "s3", "s4"]
    assert views["view"].tolist() == [1, 2, 3, 4]
    assert (
        views.loc[3, ["x_max", "y_max"]].tolist() == [120, 90] and views["box_clipped"].sum() == 1
    )
    (count,) = counts
    assert count["rows_without_visit"] == 1 and count["visits_without_views"] == 3
    assert (count["views_min"], count["views_median"], count["views_max"]) == (1, 1.0, 2)
    assert (
        "1 image rows name visits the samples table lacks" in caplog.text and "10/1" in caplog.text
    )
    assert "4 image rows matched 3 visits" in caplog.text
    assert list(views.columns) == ["modality", *VIEW_COLUMNS]


def test_keys_naming_two_samples_rows_stop_with_the_rows(tmp_path):
    write_study(tmp_path, [*VISITS, (8, 2)], [("7", "1", "a.png", (1, 1, 20, 20))])
    with pytest.raises(
        InputError,
        match=r"samples table .*samples.csv: the keys \['patient_id', 'visit'\] "
        r"\(modalities.thermal_map.keys\) name more than one row: 8/2 in data rows 4, 7; "
        r"an image cannot be assigned to two visits",
    ):
        prepare_study(tmp_path)


@pytest.mark.parametrize(
    "box, message",
    [
        ((20, 10, 20, 30), r"wound boxes with no area .* in data rows 1"),
        ((130, 10, 150, 30), r"wound boxes wholly outside their frame in data rows 1 .*120 x 90"),
        (
            (0.1, 0.2, 0.5, 0.6),
            r"every wound box .* lies within 0 to 1, as fractions of the frame would \(data row "
            r"1: \[0.1, 0.2, 0.5, 0.6\] in a 120 x 90 frame\)",
        ),
    ],
)
def test_a_box_with_no_area_or_outside_its_frame_is_named(tmp_path, box, message):
    write_study(tmp_path, VISITS, [("7", "1", "a.png", box)])
    with pytest.raises(InputError, match=message):
        prepare_study(tmp_path)


def test_missing_key_column_and_visits_without_views_are_named(tmp_path):
    write_study(tmp_path, VISITS, [("7", "1", "a.png", (1, 1, 20, 20))])
    with pytest.raises(InputError, match=r"visits without thermal_map views: ids s1, s2, s3"):
        prepare_study(tmp_path, missing_images="error")
    with pytest.raises(
        InputError, match=r"image table .*images.csv: no column 'ulcer' \(config modalities"
    ):
        prepare_study(tmp_path, keys=["patient_id", "ulcer"])


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], r"image table .*images.csv \(modalities.thermal_map.images\) has a header but no "),
        (
            [("70", "1", "a.png", (1, 1, 20, 20)), ("8", "9", "a.png", (1, 1, 20, 20))],
            r"none of its 2 rows names a visit of samples table .*samples.csv by the keys "
            r"\['patient_id', 'visit'\] \(modalities.thermal_map.keys; image table: 70/1, 8/9; "
            r"samples table: 7/1, 7/2, 8/1, 8/2, 9/1 \(and 1 more; 6 in all\)\)",
        ),
        (
            [("7", "1", "", (1, 1, 20, 20)), ("70", "1", "a.png", (1, 1, 20, 20))],
            r"path column 'file' is empty in every row of a visit \(data rows 1\)",
        ),
    ],
    ids=["header only", "no key matches", "no path"],
)
def test_an_image_table_giving_no_view_is_one_error_naming_it(tmp_path, rows, message):
    """Not a TypeError in the box checks, nor an image job with 0 training groups later."""
    write_study(tmp_path, VISITS, rows)
    with pytest.raises(InputError, match=message):
        prepare_study(tmp_path)


def test_every_view_changed_from_the_table_is_a_warning_and_counted(tmp_path, caplog):
    write_frame(tmp_path / "tiny.png", [], size=(1, 1))
    rows = [
        ("7", "1", "a.png", (-500, -500, 1000, 1000)),  # far larger: clipped, and cut
        ("7", "2", "a.png", (0, 10, 100, 40)),  # wider than the frame's 90 px: cut
        ("8", "1", "b.png", (10, 10, 15, 14)),  # a 5 px box: upscaled
        ("8", "2", "tiny.png", (0, 0, 1, 1)),  # a 1 x 1 px image: upscaled
        ("9", "1", "b.png", (50, 50, 80, 80)),  # b.png also a visit of patient 8
        ("9", "2", "c.png", (50, 50, 80, 80)),  # unchanged
        ("9", "2", "c.png", (50, 50, 80, 80)),  # its copy: repeated
    ]
    write_study(tmp_path, VISITS, rows)
    with caplog.at_level(logging.WARNING):
        _, views, (count,) = prepare_study(tmp_path)
    assert len(views) == 7
    changed = ("boxes_clipped", "boxes_cut", "views_upscaled", "views_repeated")
    assert [count[key] for key in changed] == [1, 2, 2, 1]
    assert count["files_shared"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    table = f"image table {tmp_path / 'images.csv'}"
    expected = [
        f"{table}: 1 wound boxes partly outside their frame, clipped to it (data rows 1)",
        f"{table}: 2 wound boxes wider or taller than their frame's shorter side",
        f"{table}: 2 views under 8 px on a side (the image, or its wound box), upscaled to "
        "the branch's size (data rows 3, 4)",
        f"{table}: 2 rows name an image file that a visit of another patient uses too",
        f"{table}: 1 rows repeat an earlier row's visit, file and box",
    ]
    for text in expected:
        assert sum(text in w for w in warnings) == 1, (text, warnings)


def test_a_samples_column_shared_by_patients_or_a_1_px_rgba_image_is_a_warning(tmp_path, caplog):
    write_frame(tmp_path / "a.png", [])
    Image.new("RGBA", (1, 1)).save(tmp_path / "dot.png")
    write_study(tmp_path, VISITS, [])
    table = pd.read_csv(tmp_path / "samples.csv")
    table["thermal"] = ["a.png", "", "a.png", "dot.png", "", ""]
    table.to_csv(tmp_path / "samples.csv", index=False)
    layout = {"column": "thermal", "image_dir": tmp_path}
    with caplog.at_level(logging.WARNING):
        _, views, (count,) = prepare_inputs(
            tmp_path / "samples.csv", COLUMNS, CLASSES, {"thermal_map": layout}, "drop"
        )
    assert (count["files_shared"], count["views_upscaled"], count["views"]) == (1, 1, 3)
    assert count["views_converted"] == 1 and "mode RGBA converted to RGB" in caplog.text
    column = f"samples table {tmp_path / 'samples.csv'}: image column 'thermal'"
    assert f"{column}: 2 rows name an image file that a visit of another patient" in caplog.text
    assert "(ids s0, s2)" in caplog.text and "upscaled to the branch's size (ids s3)" in caplog.text
    table["thermal"] = ""
    table.to_csv(tmp_path / "samples.csv", index=False)
    with pytest.raises(InputError, match=r"image column 'thermal' \(modality thermal_map\) is "):
        prepare_inputs(tmp_path / "samples.csv", COLUMNS, CLASSES, {"thermal_map": layout}, "drop")


def test_no_patients_views_are_on_two_sides_of_any_split(cached):
    _, views, folds = cached
    for fold in (1, 2, 3):
        task = branch_fold(cached, fold=fold)
        rows = task.rows()
        train = rows[rows["split"] == "train"].reset_index(drop=True)
        held_out = inner_split(train, 0.2, 42)
        sides = [
            task.views_of(rows[rows["split"] == "val"]),
            task.views_of(train[held_out]),
            task.views_of(train[~held_out]),
        ]
        groups = [set(side["group"]) for side in sides]
        assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
        assert sum(len(side) for side in sides) == len(views)


def test_a_visit_with_ten_views_weighs_as_much_as_a_visit_with_one():
    visits = pd.Series(["many"] * 10 + ["one"])
    weights = view_weights(visits, np.full(11, 2.5))
    totals = pd.Series(weights).groupby(visits).sum()
    assert totals["many"] == pytest.approx(totals["one"]) == pytest.approx(2.5)
    assert view_weights(pd.Series(["a", "b"]), np.array([1.0, 3.0])).tolist() == [1.0, 3.0]


def test_training_arrays_weigh_each_visit_by_its_class_only(cached):
    task = branch_fold(cached)
    rows = task.rows()
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    weights = {0: 1.0, 1: 0.5, 2: 3.0}
    _, y, w = task.training_arrays(train, weights)
    views = task.views_of(train)
    per_visit = pd.Series(w).groupby(views["id"].to_numpy()).sum()
    label = train.set_index("id")["label"].map(CLASSES.index).map(weights)
    np.testing.assert_allclose(per_visit, label[per_visit.index])
    assert len(y) == len(views) > len(train)


@pytest.mark.workflow
@pytest.mark.xdist_group("tiny_run")
def test_the_image_stage_writes_visit_means_of_its_view_probabilities(tiny_run):
    from fusion_dag.artifacts import read_tsv

    stage = tiny_run / "results/image/thermal_map/repeat1/fold2"
    probs, view_probs = read_tsv(stage / "probs.tsv"), read_tsv(stage / "view_probs.tsv")
    columns = [f"prob_{c}" for c in CLASSES]
    means = view_probs.groupby(["id", "split"])[columns].mean().reset_index()
    both = probs.merge(means, on=["id", "split"], suffixes=("", "_views"), validate="1:1")
    assert len(both) == len(probs) < len(view_probs)
    np.testing.assert_allclose(both[columns], both[[f"{c}_views" for c in columns]], atol=2e-7)
    counts = read_tsv(tiny_run / "results/prepared/view_counts.tsv").set_index("modality")
    thermal = counts.loc["thermal_map"].astype(int)
    assert (thermal["views_min"], thermal["views_max"]) == (2, 5)
    assert counts.loc["thermal_map", "views_median"] >= 3
    assert thermal["rows_without_visit"] > 0 and thermal["visits"] == probs["id"].nunique()
    log = (tiny_run / "logs/prepare/prepare.log").read_text()
    assert f"{thermal['views']} image rows matched {thermal['visits']} visits" in log
    cache_log = (tiny_run / "logs/image_cache/thermal_map.log").read_text()
    assert f"{thermal['views']} cropped to their wound box (margin 0.25, square)" in cache_log
