"""The report's figures: what each draws, on tiny generated tables, and how it is saved."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.evaluate import calibration_error
from fusion_dag.figures import (
    plot_comparisons,
    plot_confusion_matrices,
    plot_fold_kappa,
    plot_kappa_intervals,
    plot_reliability,
    save_figure,
)
from tests.conftest import CLASSES, synthetic_oof

matplotlib.use("Agg")


def test_fold_kappa_draws_one_bar_per_combination_at_its_mean_and_a_dot_per_fold():
    per_fold = pd.DataFrame(
        {"combination": ["a"] * 3 + ["a+b"] * 3, "kappa": [0.1, 0.2, 0.3, 0.4, 0.5, 0.9]}
    )
    fig = plot_fold_kappa(per_fold, ["a", "a+b"])
    (ax,) = fig.axes
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.2, 0.6])
    dots = np.vstack([collection.get_offsets() for collection in ax.collections])
    assert sorted(dots[:, 1]) == pytest.approx(sorted(per_fold["kappa"]))
    assert [label.get_text() for label in ax.get_xticklabels()] == ["a", "a+b"]


def test_confusion_matrices_one_axis_per_combination_with_the_pooled_counts():
    truth = np.array([0, 0, 1, 2, 2, 2])
    pooled = {"a": (truth, np.array([0, 1, 1, 2, 2, 0])), "b": (truth, truth)}
    fig = plot_confusion_matrices(pooled, CLASSES)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    counts = [int(text.get_text()) for text in fig.axes[0].texts]
    assert counts == [1, 1, 0, 0, 1, 0, 1, 0, 2]  # row by row: true I, P, R
    assert [int(text.get_text()) for text in fig.axes[1].texts] == [2, 0, 0, 0, 1, 0, 0, 0, 3]


def headline_rows():
    return pd.DataFrame(
        {
            "combination": ["a", "a+b", "a+b"],
            "rows": ["complete", "complete", "all"],
            "kappa_mean": [0.3, 0.4, 0.35],
            "kappa_ci_low": [0.2, 0.25, 0.3],
            "kappa_ci_high": [0.4, 0.55, 0.4],
        }
    )


def test_kappa_intervals_mark_the_all_visits_row_and_span_each_interval():
    fig = plot_kappa_intervals(headline_rows())
    (ax,) = fig.axes
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels == ["a", "a+b", "a+b (all visits)"]
    whiskers = ax.collections[0].get_segments()
    spans = sorted((segment[0][0], segment[1][0]) for segment in whiskers)
    assert spans == pytest.approx([(0.2, 0.4), (0.25, 0.55), (0.3, 0.4)])


def test_comparisons_annotate_each_verdict_and_colour_the_primary_red():
    comparisons = pd.DataFrame(
        {
            "combination": ["a+b", "a+b"],
            "versus": ["a", "b"],
            "rows": ["complete", "complete"],
            "primary": [True, False],
            "family": ["primary", "secondary"],
            "kappa_diff_folds": [0.1, -0.05],
            "kappa_diff_ci_low": [0.02, -0.2],
            "kappa_diff_ci_high": [0.18, 0.1],
            "verdict": ["better", "inconclusive"],
            "p_holm": [0.01, 0.5],
        }
    )
    fig = plot_comparisons(comparisons)
    (ax,) = fig.axes
    notes = [text.get_text() for text in ax.texts]
    assert notes == ["better, Holm p = 0.010", "inconclusive, Holm p = 0.500"]
    colours = [line.get_color() for line in ax.lines if line.get_marker() == "s"]
    assert colours == ["#a50f15", "#636363"]


def test_reliability_titles_each_combination_with_its_calibration_error():
    oofs = {"a": synthetic_oof(0.3, patients=20, seed=1), "b": synthetic_oof(0.6, seed=2)}
    fig = plot_reliability(oofs, CLASSES)
    assert len(fig.axes) == 2
    for ax, oof in zip(fig.axes, oofs.values(), strict=True):
        probs = oof[[f"prob_{c}" for c in CLASSES]].to_numpy()
        truth = oof["label"].map(CLASSES.index).to_numpy()
        ece = calibration_error(np.ones((1, len(truth))), truth, probs)[0]
        assert ax.get_title().endswith(f"ECE {ece:.3f}")


def test_save_figure_writes_a_png_near_its_size_in_pixels_and_closes_it(tmp_path):
    import matplotlib.pyplot as plt

    fig = plot_fold_kappa(pd.DataFrame({"combination": ["a"], "kappa": [0.3]}), ["a"])
    width, height = fig.get_size_inches() * fig.dpi  # 3.4 x 4 inches at 120 dpi
    path = tmp_path / "fold_kappa.png"
    save_figure(fig, path)
    with Image.open(path) as image:
        assert image.format == "PNG"
        # savefig.bbox "tight" trims or extends the margins by a few dozen pixels at most.
        assert abs(image.size[0] - width) < 0.25 * width
        assert abs(image.size[1] - height) < 0.25 * height
    assert [p.name for p in tmp_path.iterdir()] == ["fold_kappa.png"]  # no partial file left
    assert fig.number not in plt.get_fignums()


def test_learning_curves_mark_each_folds_kept_epoch_the_warm_up_and_a_branch_that_learned_nothing():
    from fusion_dag.figures import plot_learning_curves

    history = pd.DataFrame({"epoch": range(8), "phase": 1, "loss": np.linspace(1, 0.5, 8)})
    history = history.assign(kappa=0.1, val_loss=history["loss"] + 0.1, val_kappa=0.05)
    histories = {(1, 1): history, (1, 2): history.head(3)}
    metrics = {
        (1, 1): {"best_epoch": 7, "learned": True},
        (1, 2): {"best_epoch": 3, "learned": False},
    }
    figure = plot_learning_curves(histories, metrics, "thermal_map", warmup=5)
    loss_ax, kappa_ax = figure.axes
    labels = [text.get_text() for text in kappa_ax.get_legend().get_texts()]
    assert labels == [
        "repeat 1, fold 1: best 7 of 8",
        "repeat 1, fold 2: best 3 of 3, learned nothing",
    ]
    warm_up = [line for line in loss_ax.get_lines() if list(line.get_xdata()) == [5, 5]]
    assert len(warm_up) == 1
    kept = [collection.get_offsets()[0][0] for collection in loss_ax.collections]
    assert kept == [7, 3]
