import numpy as np
import pandas as pd
from PIL import Image

from fusion_dag.demo import CLASSES, NON_FEATURE_COLUMNS, thermal_map, write_demo


def test_demo_is_deterministic(tmp_path):
    first = write_demo(tmp_path / "a" / "samples.csv", patients=12, seed=3)
    second = write_demo(tmp_path / "b" / "samples.csv", patients=12, seed=3)
    pd.testing.assert_frame_equal(first, second)
    image = first["thermal_map"].iloc[0]
    assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()


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


def test_thermal_maps_are_rgb_at_64_pixels(demo_table):
    table = pd.read_csv(demo_table)
    with Image.open(demo_table.parent / table["thermal_map"].iloc[0]) as image:
        assert image.mode == "RGB" and image.size == (64, 64)


def test_inflamed_wounds_look_hotter():
    rng = np.random.default_rng(0)
    inflamed = np.mean([thermal_map(-2.0, rng).mean() for _ in range(20)])
    healing = np.mean([thermal_map(2.0, rng).mean() for _ in range(20)])
    assert inflamed > healing
