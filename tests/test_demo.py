import numpy as np
import pandas as pd
from PIL import Image

from fusion_dag.demo import (
    CLASSES,
    FRAME_SIZE,
    NEW_TABLE,
    NEW_THERMAL_TABLE,
    NON_FEATURE_COLUMNS,
    THERMAL_BOX,
    THERMAL_TABLE,
    thermal_frame,
    write_demo,
)


def test_demo_is_deterministic(tmp_path):
    first = write_demo(tmp_path / "a" / "samples.csv", patients=12, seed=3)
    second = write_demo(tmp_path / "b" / "samples.csv", patients=12, seed=3)
    pd.testing.assert_frame_equal(first, second)
    views = [pd.read_csv(tmp_path / name / THERMAL_TABLE) for name in ("a", "b")]
    pd.testing.assert_frame_equal(*views)
    for image in (first["depth_map"].dropna().iloc[0], views[0]["file"].iloc[0]):
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


def test_new_patients_are_written_beside_the_demo_and_leave_it_unchanged(tmp_path):
    """The later patients predict is shown on: new patients with images of their own, and the
    demo table, its thermal table and its images byte for byte as without them."""
    alone = write_demo(tmp_path / "a" / "samples.csv", patients=12, seed=3)
    table = write_demo(tmp_path / "b" / "samples.csv", patients=12, seed=3, new_patients=6)
    pd.testing.assert_frame_equal(alone, table)
    for name in (THERMAL_TABLE, "samples.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    new = pd.read_csv(tmp_path / "b" / NEW_TABLE)
    assert new["patient_id"].nunique() == 6 and new["patient_id"].str.startswith("N").all()
    assert not set(new["patient_id"]) & set(table["patient_id"])
    views = pd.read_csv(tmp_path / "b" / NEW_THERMAL_TABLE)
    assert set(views["patient_id"]) <= set(new["patient_id"])
    for image in (*new["depth_map"].dropna(), *views["file"]):
        assert (tmp_path / "b" / image).is_file()
    demo_views = pd.read_csv(tmp_path / "a" / THERMAL_TABLE)
    for image in (
        *alone["depth_map"].dropna(),
        *alone["wound_photo"].dropna(),
        *demo_views["file"],
    ):
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    assert not (tmp_path / "a" / NEW_TABLE).exists()


def test_demo_shape_matches_the_problem(demo_table):
    table = pd.read_csv(demo_table)
    visits = table.groupby("patient_id").size()
    assert visits.min() >= 1 and visits.max() <= 6
    shares = table["label"].value_counts(normalize=True)
    assert set(shares.index) == set(CLASSES)
    assert abs(shares["P"] - 0.60) < 0.05 and abs(shares["R"] - 0.11) < 0.05
    features = table.drop(columns=list(NON_FEATURE_COLUMNS))
    assert 18 <= features.shape[1] <= 24
    assert 0.05 < features.isna().to_numpy().mean() < 0.15
    kinds = {str(features[c].dropna().map(type).iloc[0].__name__) for c in features}
    assert kinds >= {"str", "float"}


def test_patient_traits_are_shared_by_visits(demo_table):
    table = pd.read_csv(demo_table)
    filled = table.groupby("patient_id")["sex"].agg(lambda s: s.dropna().nunique())
    assert filled.max() == 1


def test_thermal_views_are_frames_with_a_small_wound_box_and_several_per_visit(demo_table):
    table = pd.read_csv(demo_table)
    views = pd.read_csv(demo_table.parent / THERMAL_TABLE, dtype={"visit_number": str})
    assert views["visit_number"].str.startswith("0").all()  # zero-padded, unlike the table
    per_visit = views.groupby(["patient_id", "visit_number"]).size()
    assert per_visit.min() == 2 and per_visit.max() == 5
    # Some visits have no views; some rows belong to visits the samples table lacks.
    assert len(per_visit) != len(table)
    with Image.open(demo_table.parent / views["file"].iloc[0]) as image:
        assert image.mode == "RGB" and image.size == FRAME_SIZE
    widths = views[THERMAL_BOX[2]] - views[THERMAL_BOX[0]]
    assert widths.median() < FRAME_SIZE[0] / 4


def test_inflamed_wounds_look_hotter_inside_the_box_only():
    rng = np.random.default_rng(0)

    def inside_and_outside(signal):
        frame, (x0, y0, x1, y1) = thermal_frame(signal, rng)
        mask = np.zeros(frame.shape[:2], dtype=bool)
        mask[int(y0) : int(y1), int(x0) : int(x1)] = True
        return frame[mask].mean(), frame[~mask].mean()

    inflamed = np.mean([inside_and_outside(-2.0) for _ in range(10)], axis=0)
    healing = np.mean([inside_and_outside(2.0) for _ in range(10)], axis=0)
    assert inflamed[0] > healing[0] + 10
    assert abs(inflamed[1] - healing[1]) < 2
