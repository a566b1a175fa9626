"""The report's figures: fold kappa, confusion matrices, learning curves, the weight sweep,
kappa intervals, paired comparisons, reliability diagrams, the metadata columns' permutation
importance and the image branches' Grad-CAM grids, each saved as a PNG.

Why a module of its own: the tables (``fusion_dag.report``) are imported by jobs that only
compute numbers (aggregation, ablation, scoring a new table); keeping the figures here means
those jobs never import matplotlib, and only the plot rule scripts pay for it.
"""

import textwrap

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID, LABEL, partial_path
from fusion_dag.evaluate import calibration_bins, calibration_error, repeat_arrays


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


def learning_label(repeat: int, fold: int, history: pd.DataFrame, metrics: dict) -> str:
    """A fold's legend entry: which fold, the epoch whose weights were kept, how many epochs it
    trained, and whether its branch learned nothing (the image stage's verdict)."""
    label = f"repeat {repeat}, fold {fold}: best {metrics['best_epoch']} of {len(history)}"
    return label if metrics["learned"] else f"{label}, learned nothing"


def plot_learning_curves(histories: dict, metrics: dict, modality: str, warmup: int):
    """Loss and kappa per epoch for each (repeat, fold): training rows (dashed) and the inner
    early-stopping rows (solid); each curve ends where its fold stopped.

    Why the marks: a branch that learned nothing shows as a best epoch at or before the
    warm-up's end (the grey dotted line at ``warmup``, ``image_model.warmup_epochs``) or the
    first; each fold's kept epoch (``metrics``: its image stage's ``best_epoch``, not the
    lowest loss, which may fall inside the warm-up) is a dot on both panels, and the legend
    gives it, the epochs trained and the stage's verdict (:func:`learning_label`).
    """
    plt = figure_style()
    fig, (loss_ax, kappa_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, ((repeat, fold), history) in enumerate(sorted(histories.items())):
        colour = colours[index % len(colours)]
        epoch = history["epoch"] + 1
        record = metrics[(repeat, fold)]
        label = learning_label(repeat, fold, history, record)
        best = record["best_epoch"] - 1
        for ax, metric in ((loss_ax, "loss"), (kappa_ax, "kappa")):
            ax.plot(epoch, history[metric], color=colour, linestyle="--", linewidth=1)
            ax.plot(epoch, history[f"val_{metric}"], color=colour, label=label)
            ax.scatter(epoch[best], history[f"val_{metric}"][best], color=colour, zorder=3)
    for ax in (loss_ax, kappa_ax):
        if warmup:
            ax.axvline(warmup, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("Epoch")
    loss_ax.set_ylabel("Cross-entropy loss")
    kappa_ax.set_ylabel("Cohen's kappa")
    warm_up = f"; dotted: warm-up end (epoch {warmup})" if warmup else ""
    loss_ax.set_title(f"{modality}: loss (dashed: training, solid: inner validation)", fontsize=9)
    kappa_ax.set_title(f"{modality}: kappa (dots: kept epoch{warm_up})", fontsize=9)
    kappa_ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def plot_weight_sweep(sweep: pd.DataFrame, configured: float, combination: str):
    """Validation kappa against the metadata weight, per fold and on average."""
    plt = figure_style()
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, rows in sweep.groupby(["repeat", "fold"]):
        ax.plot(rows["metadata_weight"], rows["kappa"], linewidth=1, alpha=0.4, color="#6baed6")
    mean = sweep.groupby("metadata_weight")["kappa"].mean()
    ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=2.2, label="mean (thin: folds)")
    ax.axvline(configured, color="#d62728", linestyle=":", label=f"configured ({configured:.2f})")
    ax.set_xlabel("Metadata (random forest) weight w")
    ax.set_ylabel("Cohen's kappa (validation)")
    ax.set_title(f"{combination}: w x RF + (1 - w) x image")
    ax.legend(frameon=False, fontsize=9)
    return fig


def row_labels(table: pd.DataFrame) -> list:
    """A combination's name, marked when its row scores every visit (``rows: all``)."""
    return [
        f"{name} (all visits)" if rows == "all" else name
        for name, rows in zip(table["combination"], table["rows"], strict=True)
    ]


def plot_kappa_intervals(headline: pd.DataFrame):
    """Forest plot: each combination's pooled validation kappa with its corrected interval."""
    plt = figure_style()
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.5 * len(headline)))
    y = np.arange(len(headline))[::-1]
    low = headline["kappa_mean"] - headline["kappa_ci_low"]
    high = headline["kappa_ci_high"] - headline["kappa_mean"]
    ax.errorbar(headline["kappa_mean"], y, xerr=[low, high], fmt="o", color="#08519c", capsize=4)
    ax.set_yticks(y, row_labels(headline))
    ax.set_xlabel("Cohen's kappa (pooled out-of-fold), corrected resampled interval")
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_title("Validation kappa per combination")
    return fig


def plot_comparisons(comparisons: pd.DataFrame):
    """Paired per-fold kappa differences with their corrected t intervals, Holm-adjusted
    p-values and verdicts; the primary contrasts in red, the others in grey."""
    plt = figure_style()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.55 * max(len(comparisons), 1)))
    y = np.arange(len(comparisons))[::-1]
    labels = [
        f"{c} vs {v}" + (" (all visits)" if rows == "all" else "")
        for c, v, rows in zip(
            comparisons["combination"], comparisons["versus"], comparisons["rows"], strict=True
        )
    ]
    centre = comparisons["kappa_diff_folds"]
    low = centre - comparisons["kappa_diff_ci_low"]
    high = comparisons["kappa_diff_ci_high"] - centre
    colours = np.where(comparisons["primary"].astype(bool), "#a50f15", "#636363")
    for row in range(len(comparisons)):
        ax.errorbar(
            centre.iloc[row],
            y[row],
            xerr=[[low.iloc[row]], [high.iloc[row]]],
            fmt="s",
            color=colours[row],
            capsize=4,
        )
        ax.annotate(
            f"{comparisons['verdict'].iloc[row]}, Holm p = {comparisons['p_holm'].iloc[row]:.3f}",
            (centre.iloc[row], y[row]),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=9,
        )
    ax.set_yticks(y, labels)
    ax.set_ylim(-0.6, len(comparisons) - 0.2)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("Kappa difference (paired per-fold mean, corrected t interval)")
    ax.set_title("Does the fusion add? Primary contrasts in red")
    return fig


def plot_roc_curves(oofs: dict, shown: list, classes: list):
    """One-vs-rest ROC curve of each class for the combinations ``shown`` (the primary and the
    fusions compared with it), from the pooled out-of-fold predictions of every repeat."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = figure_style()
    fig, axes = plt.subplots(1, len(classes), figsize=(3.8 * len(classes), 3.9), squeeze=False)
    for index, (ax, name_of_class) in enumerate(zip(axes[0], classes, strict=True)):
        for name in shown:
            arrays = repeat_arrays(oofs[name], classes)
            truth = np.concatenate([t for _, t, _ in arrays]) == index
            score = np.concatenate([p for _, _, p in arrays])[:, index]
            false_positive, true_positive, _ = roc_curve(truth, score)
            area = roc_auc_score(truth, score)
            ax.plot(false_positive, true_positive, linewidth=1.2, label=f"{name} ({area:.2f})")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{name_of_class} vs rest")
        ax.set_xlabel("False positive rate")
        ax.legend(frameon=False, fontsize=7, loc="lower right", title="AUC", title_fontsize=7)
    axes[0][0].set_ylabel("True positive rate")
    fig.tight_layout()
    return fig


def plot_reliability(oofs: dict, classes: list):
    """Reliability diagram per combination: accuracy against top-label confidence per bin."""
    plt = figure_style()
    fig, axes = plt.subplots(1, len(oofs), figsize=(3.6 * len(oofs), 3.6), squeeze=False)
    for ax, (name, oof) in zip(axes[0], oofs.items(), strict=True):
        arrays = repeat_arrays(oof, classes)
        truth = np.concatenate([t for _, t, _ in arrays])
        probs = np.concatenate([p for _, _, p in arrays])
        bins = calibration_bins(probs)
        correct = probs.argmax(axis=1) == truth
        confidence = probs.max(axis=1)
        frame = pd.DataFrame({"bin": bins, "correct": correct, "confidence": confidence})
        summary = frame.groupby("bin").agg(
            accuracy=("correct", "mean"), confidence=("confidence", "mean"), n=("correct", "size")
        )
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.scatter(
            summary["confidence"],
            summary["accuracy"],
            s=10 + 200 * summary["n"] / summary["n"].sum(),
            color="#08519c",
        )
        ax.plot(summary["confidence"], summary["accuracy"], color="#08519c", linewidth=1)
        ece = float(calibration_error(np.ones((1, len(truth))), truth, probs)[0])
        ax.set_title(f"{name}\nECE {ece:.3f}")
        ax.set_xlabel("Top-label confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("Accuracy")
    fig.tight_layout()
    return fig


def plot_calibration_slopes(calibration: pd.DataFrame):
    """Each combination's calibration slope and intercept per class (one-vs-rest) with their
    corrected intervals; 1 and 0 (perfect calibration) marked."""
    plt = figure_style()
    classes = list(dict.fromkeys(calibration["class"]))
    labels = list(dict.fromkeys(row_labels(calibration)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.5 + 0.45 * len(labels) * len(classes)))
    shown = calibration.assign(label=row_labels(calibration))
    for ax, part, reference in zip(axes, ("slope", "intercept"), (1.0, 0.0), strict=True):
        for offset, name in enumerate(classes):
            rows = shown[shown["class"] == name].set_index("label").reindex(labels)
            y = np.arange(len(labels))[::-1] * (len(classes) + 1) + offset
            errors = [rows[part] - rows[f"{part}_ci_low"], rows[f"{part}_ci_high"] - rows[part]]
            ax.errorbar(rows[part], y, xerr=np.abs(errors), fmt="o", capsize=3, label=name)
        ticks = np.arange(len(labels))[::-1] * (len(classes) + 1) + (len(classes) - 1) / 2
        ax.set_yticks(ticks, labels if part == "slope" else [""] * len(labels))
        ax.axvline(reference, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"calibration {part} (one-vs-rest)")
    axes[1].legend(title="class", fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("Calibration slope (1: ideal) and intercept (0: ideal)")
    fig.tight_layout()
    return fig


def plot_decision_curves(curves: pd.DataFrame):
    """Net benefit against the threshold probability, one panel per decision: each shown
    combination, treat-all and treat-none (each combination's own visits)."""
    plt = figure_style()
    decisions = list(dict.fromkeys(curves["decision"]))
    if not decisions:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "No decisions configured (evaluation.decisions)", ha="center")
        ax.set_axis_off()
        return fig
    fig, axes = plt.subplots(1, len(decisions), figsize=(6 * len(decisions), 4.5), squeeze=False)
    for ax, decision in zip(axes[0], decisions, strict=True):
        rows = curves[curves["decision"] == decision]
        models = rows[rows["strategy"] == "model"]
        for name, curve in models.groupby("combination", sort=False):
            ax.plot(curve["threshold"], curve["net_benefit"], label=name)
        first = rows[rows["combination"] == rows["combination"].iloc[0]]
        treat_all = first[first["strategy"] == "treat_all"]
        ax.plot(treat_all["threshold"], treat_all["net_benefit"], color="grey", label="treat all")
        ax.axhline(0, color="black", linewidth=0.8, label="treat none")
        prevalence = float(first["prevalence"].iloc[0])
        ax.set_ylim(-0.05, max(prevalence, 0.05) * 1.1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("threshold probability")
        ax.set_ylabel("net benefit")
        ax.set_title(f"{decision} (prevalence {prevalence:.2f})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_participant_flow(participants: pd.DataFrame):
    """The flow of visits (patients) from the table read to each fold's training and
    validation, by class: one box per step, the visits left out beside it with the reason."""
    plt = figure_style()
    everyone = participants[participants["repeat"].isna()]

    def box_text(step: str, scope: str) -> str:
        rows = everyone[(everyone["step"] == step) & (everyone["scope"] == scope)]
        total = rows[rows["label"] == "all"].iloc[0]
        by_class = ", ".join(
            f"{r.label} {r.visits}" for r in rows[rows["label"] != "all"].itertuples()
        )
        return f"{total.visits} visits, {total.patients} patients\n({by_class})"

    boxes = [("Samples table read", box_text("read", "samples"), "")]
    for modality in everyone.loc[everyone["step"] == "with_images", "scope"].unique():
        boxes.append(
            (
                f"With {modality} images",
                box_text("with_images", modality),
                "left out: " + box_text("without_images", modality).replace("\n", " "),
            )
        )
    for name in everyone.loc[everyone["step"] == "scored", "scope"].unique():
        boxes.append(
            (
                f"Scored by {name}",
                box_text("scored", name),
                "not scored: " + box_text("not_scored", name).replace("\n", " "),
            )
        )
    folds = participants[(participants["scope"] == "folds") & (participants["label"] == "all")]
    validation = folds[folds["step"] == "validation"]["visits"]
    training = folds[folds["step"] == "training"]["visits"]
    n_parts = folds[["repeat", "fold"]].drop_duplicates()
    boxes.append(
        (
            f"{len(n_parts)} folds ({n_parts['repeat'].nunique()} repeats)",
            f"training {training.min()}-{training.max()} visits,\n"
            f"validation {validation.min()}-{validation.max()} visits per fold",
            "",
        )
    )
    fig, ax = plt.subplots(figsize=(11, 1.1 * len(boxes) + 0.5))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(boxes) - 0.5)
    style = {"boxstyle": "round", "facecolor": "#deebf7", "edgecolor": "#08519c"}
    for index, (title, text, aside) in enumerate(boxes):
        y = len(boxes) - 1 - index
        ax.text(0.22, y, f"{title}\n{text}", ha="center", va="center", fontsize=9, bbox=style)
        if aside:
            ax.text(0.47, y, textwrap.fill(aside, 70), ha="left", va="center", fontsize=8)
        if index:
            ax.annotate("", (0.22, y + 0.28), (0.22, y + 0.72), arrowprops={"arrowstyle": "->"})
    ax.set_title("Participant flow (visits; results/report/participants.tsv)")
    return fig


def save_figure(fig, path) -> None:
    """Save a figure as PNG atomically and release it."""
    partial = partial_path(path)
    fig.savefig(partial, format="png")
    partial.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def plot_importance(importance: pd.DataFrame, warnings: list, top: int = 15):
    """The ``top`` columns by permutation importance (mean drop in kappa over folds and repeats,
    whiskers the fold range), leak suspects in red with the warning under the plot."""
    figure_style()
    import matplotlib.pyplot as plt

    shown = importance.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(shown) + 1.8))
    colours = np.where(shown["leak_suspect"], "#c0392b", "#2c7fb8")
    spread = np.vstack(
        [
            shown["importance_mean"] - shown["importance_min"],
            shown["importance_max"] - shown["importance_mean"],
        ]
    )
    ax.barh(shown["feature"], shown["importance_mean"], xerr=spread, color=colours, capsize=2)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Drop in validation kappa when the column is shuffled")
    ax.set_title("Metadata: permutation importance on held-out visits")
    if warnings:
        text = "\n".join(textwrap.fill(line, 110) for line in warnings)
        fig.text(0.01, 0.01, text, color="#c0392b", fontsize=7, va="bottom")
        fig.subplots_adjust(bottom=0.12 + 0.06 * len(warnings))
    fig.tight_layout(rect=(0, 0.1 * bool(warnings), 1, 1))
    return fig


# The colour map of every Grad-CAM heat: perceptually uniform and readable in grey print, over
# views shown in grey.
HEAT_MAP = "inferno"
HEAT_LABEL = "Grad-CAM heat (share of the view's maximum)"


def panel_note(row) -> str:
    """What a heatmap panel must say of its branch: ``one class predicted for every visit``,
    ``branch learned nothing`` (the image stage's verdict, for another reason), or nothing."""
    if bool(row.get("one_class", False)):
        return "one class predicted for every visit"
    if not bool(row.get("learned", True)):
        return "branch learned nothing"
    return ""


def panel_title(row) -> str:
    """A heatmap's title: the fold (explain) or the visit (predict), the predicted class and
    its probability when known, and :func:`panel_note` on a line of its own."""
    where = f"fold {row['fold']}" if "fold" in row else str(row[ID])
    probability = f" {row['prob_predicted']:.2f}" if "prob_predicted" in row else ""
    note = panel_note(row)
    return f"{where}: {row['predicted']}{probability}" + (f"\n{note}" if note else "")


def heat_colorbar(fig, axes):
    """The colour bar of :data:`HEAT_MAP` from 0 to 1 beside ``axes``."""
    from matplotlib import cm, colors

    scale = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=HEAT_MAP)
    bar = fig.colorbar(scale, ax=axes, fraction=0.05, pad=0.02)
    bar.set_label(HEAT_LABEL, fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return bar


def plot_heatmap(picture: np.ndarray, title: str):
    """One Grad-CAM overlay with its title (a panel note in red) and the heat's colour bar."""
    figure_style()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.8))
    ax.imshow(picture)
    ax.axis("off")
    ax.set_title(title, fontsize=8, color="#c0392b" if "\n" in title else "black")
    heat_colorbar(fig, ax)
    return fig


def plot_heatmap_grid(rows: pd.DataFrame, pictures: list, modality: str, per_cell: int = 6):
    """Grad-CAM overlays in a grid: one row per (label, correct or wrong), up to ``per_cell``
    visits each, titled with the fold, the predicted class and its probability, and in red
    when the fold's branch predicts one class for every visit or learned nothing
    (:func:`panel_note`); one colour bar for the heat."""
    figure_style()
    import matplotlib.pyplot as plt

    cells = rows.assign(picture=range(len(rows))).groupby([LABEL, "correct"], sort=False)
    order = sorted(cells.groups, key=lambda key: (str(key[0]), not key[1]))
    fig, axes = plt.subplots(
        len(order), per_cell, figsize=(1.7 * per_cell + 1, 2.1 * len(order)), squeeze=False
    )
    for line, key in enumerate(order):
        members = cells.get_group(key).head(per_cell)
        for column, ax in enumerate(axes[line]):
            ax.axis("off")
            if column < len(members):
                row = members.iloc[column]
                ax.imshow(pictures[int(row["picture"])])
                note = panel_note(row)
                title = "\n".join(textwrap.fill(part, 26) for part in panel_title(row).split("\n"))
                ax.set_title(title, fontsize=6 if note else 7, color="#c0392b" if note else "black")
        axes[line][0].text(
            -0.1,
            0.5,
            f"label {key[0]}\n{'correct' if key[1] else 'wrong'}",
            transform=axes[line][0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(f"{modality}: Grad-CAM of the predicted class (repeat 1, validation visits)")
    fig.tight_layout(rect=(0.06, 0, 0.9, 0.97))
    heat_colorbar(fig, axes.ravel().tolist())
    return fig
