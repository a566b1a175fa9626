"""Grad-CAM: where a branch looks, on images whose label is drawn in one quadrant."""

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import ID, LABEL
from fusion_dag.figures import HEAT_MAP, plot_heatmap, plot_heatmap_grid
from fusion_dag.heatmaps import (
    chosen_visits,
    feature_map_layer,
    grad_cam,
    grey_view,
    one_class,
    overlay,
)
from tests.conftest import CLASSES

SIZE = 24


def quadrant_images(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Grey images of full-range noise whose class is drawn in the top-left quadrant only:
    horizontal stripes (I), vertical stripes (P) or a disc (R), in black and white as bright
    as the noise, so an untrained branch has no reason to look there."""
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 1)).astype(np.uint8)
    half = SIZE // 2
    rows, columns = np.mgrid[0:half, 0:half]
    patterns = [
        (rows % 4 < 2) * 255,
        (columns % 4 < 2) * 255,
        ((rows - half / 2) ** 2 + (columns - half / 2) ** 2 < (half / 3) ** 2) * 255,
    ]
    for image, label in zip(images, labels, strict=True):
        image[:half, :half, 0] = patterns[label]
    return images, labels


def quadrant_share(heat: np.ndarray) -> np.ndarray:
    """Each heatmap's share of its heat in the top-left quadrant."""
    half = heat.shape[1] // 2
    return heat[:, :half, :half].sum(axis=(1, 2)) / np.maximum(heat.sum(axis=(1, 2)), 1e-12)


@pytest.fixture(scope="module")
def quadrant_branch():
    """A small-CNN branch trained on quadrant images, with held-out images and labels."""
    import keras

    from fusion_dag.branch import build_image_branch, configure_tensorflow
    from fusion_dag.image import compile_branch

    configure_tensorflow(1, 1, 42)
    rng = np.random.default_rng(0)
    images, labels = quadrant_images(360, rng)
    model = build_image_branch("thermal_map", (SIZE, SIZE, 1), 3)
    compile_branch(model, 0.003, 3)
    model.fit(images[:300], labels[:300], epochs=12, batch_size=32, verbose=0)
    keras.utils.set_random_seed(42)
    return model, images[300:], labels[300:]


def test_grad_cam_puts_most_heat_where_the_label_is_drawn(quadrant_branch):
    model, images, labels = quadrant_branch
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert (predicted == labels).mean() > 0.9  # the branch did learn the patterns
    layer = feature_map_layer("thermal_map", {"backbone": "small_cnn"})
    heat = grad_cam(model, images, predicted, layer)
    assert heat.shape == (len(images), 6, 6)  # conv3 after two 2x poolings of 24 px
    assert heat.max() == pytest.approx(1.0)
    # Uniform heat puts 0.25 in the quadrant, and so does (0.27 measured) the same branch
    # untrained, below; trained, most of it (more than half, twice chance) must be there, on
    # average and for four images in five (measured: mean 0.68, tenth percentile 0.62).
    share = quadrant_share(heat)
    assert share.mean() > 0.5
    assert (share > 0.5).mean() >= 0.8
    from fusion_dag.branch import build_image_branch

    untrained = build_image_branch("thermal_map", (SIZE, SIZE, 1), 3)
    assert quadrant_share(grad_cam(untrained, images, predicted, layer)).mean() < 0.4


def test_grad_cam_of_a_nested_backbone_weighs_its_output_feature_map():
    from fusion_dag.branch import build_image_branch

    settings = {"backbone": "MobileNetV3Small", "backbone_weights": None}
    model = build_image_branch("thermal_map", (32, 32, 1), 3, settings)
    layer = feature_map_layer("thermal_map", settings)
    assert layer == "thermal_map_backbone"
    images = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 1)).astype(np.uint8)
    heat = grad_cam(model, images, np.array([0, 2]), layer)
    # MobileNetV3Small's output at 32 px is 1 x 1: one cell, its heat 0 or 1.
    assert heat.shape == (2, 1, 1)
    assert set(np.unique(heat)) <= {0.0, 1.0}


def test_overlay_is_an_enlarged_rgb_picture():
    image = np.full((24, 24, 1), 100, dtype=np.uint8)
    heat = np.zeros((6, 6))
    heat[0, 0] = 1.0
    picture = overlay(image, heat)
    assert picture.shape == (160, 160, 3) and picture.dtype == np.uint8
    # The hot corner takes the colour map's hottest colour (inferno: pale yellow, more red than
    # blue); where there is no heat the grey view shows.
    red, _, blue = picture[5, 5].tolist()
    assert red > blue + 50
    assert picture[-5, -5].tolist() == [100, 100, 100]


def test_visits_are_chosen_per_class_and_per_correct_or_wrong():
    rng = np.random.default_rng(3)
    n = 90
    labels = pd.DataFrame({ID: [f"V{i}" for i in range(n)], LABEL: rng.choice(CLASSES, n)})
    probs = pd.DataFrame(rng.dirichlet([1, 1, 1], n), columns=["prob_I", "prob_P", "prob_R"])
    probs.insert(0, ID, labels[ID])
    probs.insert(1, "split", np.where(np.arange(n) < 60, "val", "train"))
    chosen = chosen_visits(probs, labels, CLASSES, 12, seed=0)
    assert len(chosen) == 12 and chosen[ID].is_unique
    assert chosen[ID].isin(probs.loc[probs["split"] == "val", ID]).all()
    cells = chosen.groupby([LABEL, "correct"]).size()
    # Six cells, two visits each when every cell has two to give.
    assert len(cells) == 6 and cells.max() - cells.min() <= 1
    again = chosen_visits(probs, labels, CLASSES, 12, seed=0)
    assert chosen[ID].tolist() == again[ID].tolist()


def test_a_colour_view_is_shown_in_grey_under_the_heat():
    """A colour-mapped view (pure red, as a thermal colour map's hot end): its colours would
    compete with the heat's, so the overlay's base is its grey luminance."""
    image = np.zeros((24, 24, 3), dtype=np.uint8)
    image[..., 0] = 200
    assert grey_view(image).shape == (24, 24)
    picture = overlay(image, np.zeros((6, 6)))
    red, green, blue = picture[80, 80].tolist()
    assert red == green == blue and 0 < red < 200
    # With heat everywhere, the picture is the colour map's top colour blended over grey.
    from matplotlib import colormaps

    hot = overlay(image, np.ones((6, 6)))[80, 80].astype(float)
    expected = 0.4 * red + 0.6 * np.asarray(colormaps[HEAT_MAP](1.0)[:3]) * 255
    np.testing.assert_allclose(hot, expected, atol=1.5)


def test_a_branch_predicting_one_class_is_found_on_its_validation_visits():
    probs = pd.DataFrame(
        {
            ID: ["a", "b", "c", "d"],
            "split": ["val", "val", "val", "train"],
            "prob_I": [0.3, 0.35, 0.2, 0.9],
            "prob_P": [0.5, 0.45, 0.6, 0.05],
            "prob_R": [0.2, 0.2, 0.2, 0.05],
        }
    )
    assert one_class(probs, CLASSES)
    probs.loc[0, ["prob_I", "prob_P"]] = [0.6, 0.2]
    assert not one_class(probs, CLASSES)


def heatmap_rows(one_class_fold: int) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "fold": [1, 1, 2, 2],
            ID: ["a", "b", "c", "d"],
            LABEL: ["I", "P", "I", "P"],
            "predicted": ["I", "P", "P", "P"],
            "prob_predicted": [0.5, 0.6, 0.35, 0.4],
        }
    )
    rows["correct"] = rows["predicted"] == rows[LABEL]
    rows["learned"] = True
    rows["one_class"] = rows["fold"] == one_class_fold
    return rows


def titles(fig) -> list:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_heatmap_figures_have_a_colour_bar_and_mark_a_one_class_fold():
    pictures = [np.zeros((160, 160, 3), dtype=np.uint8)] * 4
    rows = heatmap_rows(one_class_fold=2)
    grid = plot_heatmap_grid(rows, pictures, "thermal_map")
    assert any(ax.get_label() == "<colorbar>" for ax in grid.axes)
    marked = [t for t in titles(grid) if "one class" in t]
    # Both of fold 2's panels, and none of fold 1's.
    assert len(marked) == 2 and all(t.startswith("fold 2") for t in marked)
    single = plot_heatmap(pictures[0], "c: P\none class predicted for every visit")
    assert any(ax.get_label() == "<colorbar>" for ax in single.axes)
    # A fold the image stage says learned nothing, though it predicts two classes.
    rows = heatmap_rows(one_class_fold=0)
    rows.loc[rows["fold"] == 1, "learned"] = False
    marked = [t for t in titles(plot_heatmap_grid(rows, pictures, "thermal_map")) if "learned" in t]
    assert len(marked) == 2 and all(t.startswith("fold 1") for t in marked)
