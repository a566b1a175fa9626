"""Aggregation of per-fold metrics into the headline results table.

The headline is a mean over patient-grouped folds with its standard deviation, because with
three folds of about 50 patients a single fold's kappa moves by several hundredths.
"""

import numpy as np
import pandas as pd

MEAN_METRICS = ("kappa", "qwk", "accuracy", "macro_f1")


def per_fold_table(records: list) -> pd.DataFrame:
    """One row per combination and fold from ``{"combination", "fold", **metrics}`` records."""
    table = pd.DataFrame(records)
    return table.sort_values(["combination", "fold"], kind="stable").reset_index(drop=True)


def headline_table(per_fold: pd.DataFrame, combinations: list, classes: list) -> pd.DataFrame:
    """One row per combination, in the given order, with the contracted columns."""
    rows = []
    for name in combinations:
        folds = per_fold[per_fold["combination"] == name]
        row = {"combination": name, "n_folds": len(folds)}
        row["kappa_mean"] = folds["kappa"].mean()
        row["kappa_std"] = folds["kappa"].std(ddof=1) if len(folds) > 1 else 0.0
        for metric in MEAN_METRICS[1:]:
            row[f"{metric}_mean"] = folds[metric].mean()
        for c in classes:
            row[f"f1_{c}_mean"] = folds[f"f1_{c}"].mean()
        row["train_kappa_mean"] = folds["train_kappa"].mean()
        row["gap_mean"] = folds["gap"].mean()
        for c in classes:
            # Pooled share over all validation rows, so a small fold does not count double.
            counts = folds[f"pred_frac_{c}"] * folds["n_val"]
            row[f"pred_frac_{c}"] = counts.sum() / folds["n_val"].sum()
        rows.append(row)
    return pd.DataFrame(rows)


def ablation_table(records: list, v3_records: list) -> pd.DataFrame:
    """Mean and std over folds of validation kappa, train kappa and gap per variant, with the
    mean epochs run, best epoch and (V1) learned metadata weight: how far training moved it."""
    frame = pd.DataFrame(records + v3_records)
    columns = {"n_folds": ("kappa", "size")}
    for metric in ("kappa", "train_kappa", "gap"):
        columns[f"{metric}_mean"] = (metric, "mean")
        columns[f"{metric}_std"] = (metric, "std")
    for metric in ("epochs", "best_epoch", "learned_weight"):
        if metric in frame:
            columns[f"{metric}_mean"] = (metric, "mean")
    table = frame.groupby(["combination", "strategy", "rf_source"], sort=False).agg(**columns)
    spreads = [name for name in table if name.endswith("_std")]
    table.loc[table["n_folds"] == 1, spreads] = 0.0
    return table.reset_index()


def markdown_table(headline: pd.DataFrame) -> str:
    """The headline as a Markdown table for people, three decimals."""
    return headline.to_markdown(index=False, floatfmt=".3f") + "\n"


def figure_style():
    """Matplotlib settings for figures people put in papers: readable fonts, no clutter."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            "font.size": 11,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "figure.dpi": 120,
            "savefig.bbox": "tight",
        }
    )
    import matplotlib.pyplot as plt

    return plt


def plot_fold_kappa(per_fold: pd.DataFrame, combinations: list):
    """Validation kappa of every fold per combination, with the mean as a bar."""
    plt = figure_style()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(combinations), 4))
    for x, name in enumerate(combinations):
        folds = per_fold[per_fold["combination"] == name]
        ax.bar(
            x, folds["kappa"].mean(), color="#9ecae1", width=0.6, label="mean" if x == 0 else None
        )
        ax.scatter(
            np.full(len(folds), x),
            folds["kappa"],
            color="#08519c",
            zorder=3,
            label="fold" if x == 0 else None,
        )
    ax.set_xticks(range(len(combinations)), combinations, rotation=15, ha="right")
    ax.set_ylabel("Cohen's kappa (validation)")
    ax.set_title("Validation kappa per fold")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.legend(frameon=False)
    return fig


def plot_confusion_matrices(pooled: dict, classes: list):
    """Validation confusion matrix per combination, pooled over folds (rows: true class)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = figure_style()
    fig, axes = plt.subplots(1, len(pooled), figsize=(3.8 * len(pooled), 3.6), squeeze=False)
    for ax, (name, (truth, predicted)) in zip(axes[0], pooled.items(), strict=True):
        ConfusionMatrixDisplay.from_predictions(
            truth,
            predicted,
            labels=list(range(len(classes))),
            display_labels=classes,
            ax=ax,
            colorbar=False,
            cmap="Blues",
        )
        ax.set_title(name)
        ax.set_xlabel("Predicted phase")
        ax.set_ylabel("True phase")
    fig.tight_layout()
    return fig


def plot_learning_curves(histories: dict, modality: str):
    """Loss and kappa per epoch for each fold: training rows and the inner early-stopping rows."""
    plt = figure_style()
    fig, (loss_ax, kappa_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (fold, history), colour in zip(sorted(histories.items()), colours, strict=False):
        epoch = history["epoch"] + 1
        for ax, metric in ((loss_ax, "loss"), (kappa_ax, "kappa")):
            ax.plot(epoch, history[metric], color=colour, linestyle="--", linewidth=1)
            ax.plot(epoch, history[f"val_{metric}"], color=colour, label=f"fold {fold}")
        best = history["val_loss"].idxmin()
        loss_ax.scatter(epoch[best], history["val_loss"][best], color=colour, zorder=3)
    loss_ax.set_ylabel("Cross-entropy loss")
    kappa_ax.set_ylabel("Cohen's kappa")
    for ax in (loss_ax, kappa_ax):
        ax.set_xlabel("Epoch")
    loss_ax.set_title(f"{modality}: loss (dashed: training, solid: inner validation)")
    kappa_ax.set_title(f"{modality}: kappa")
    kappa_ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_weight_sweep(sweep: pd.DataFrame, configured: float, combination: str):
    """Validation kappa against the metadata weight, per fold and on average."""
    plt = figure_style()
    fig, ax = plt.subplots(figsize=(6, 4))
    for fold, rows in sweep.groupby("fold"):
        ax.plot(
            rows["metadata_weight"], rows["kappa"], linewidth=1, alpha=0.6, label=f"fold {fold}"
        )
    mean = sweep.groupby("metadata_weight")["kappa"].mean()
    ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=2.2, label="mean")
    ax.axvline(configured, color="#d62728", linestyle=":", label=f"configured ({configured:.2f})")
    ax.set_xlabel("Metadata (random forest) weight w")
    ax.set_ylabel("Cohen's kappa (validation)")
    ax.set_title(f"{combination}: w x RF + (1 - w) x image")
    ax.legend(frameon=False, fontsize=9)
    return fig


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically and release it."""
    from fusion_dag.artifacts import partial_path

    partial = partial_path(path)
    fig.savefig(partial, format="png")
    partial.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
