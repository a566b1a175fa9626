"""Explanations: what drives the forest, what each member adds to a fusion, which labels to
re-check. Keras-free, so the tabular environment runs it; the image branches' Grad-CAM heatmaps
are :mod:`fusion_dag.heatmaps`.

Why permutation importance on held-out visits: a forest's impurity importance is measured on
the rows it was fit on and favours columns with many distinct values; shuffling one raw column
of a fold's validation visits and scoring the drop in kappa measures what the fitted pipeline
uses on patients it has not seen, in the metric the study reports. The raw column is shuffled
before encoding, so the one-hot levels of a text column move together.

Why a leak screen: in the original study a column the clinician wrote beside the label was the
top feature and inflated kappa before anyone noticed. A column that alone predicts the label
almost perfectly under patient-grouped cross-validation is named in a warning.

Why contributions are exact: V3 fuses with fixed weights, so a visit's fused probability of a
class is the sum over members of weight x the member's probability; each term is that member's
contribution, with no approximation (unlike SHAP values of a learned fusion).
"""

import logging

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import cohen_kappa_score, make_scorer
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices, prob_columns
from fusion_dag.evaluate import kappa
from fusion_dag.inference import compare, holm_adjusted, significance
from fusion_dag.metadata import build_pipeline, feature_frame
from fusion_dag.weights import fuse_rows, member_weights

log = logging.getLogger(__name__)

KAPPA_SCORER = make_scorer(cohen_kappa_score)
# A column is a leak suspect when a forest on it alone reaches this patient-grouped
# cross-validated kappa: a clinical variable that predicts a healing phase almost perfectly by
# itself is far more likely written with (or after) the label than a finding. The label with 5 %
# of its cells redrawn at random scores about 0.93; the demo's best single column about 0.2.
LEAK_KAPPA = 0.8
# Trees of the single-column forests of the leak screen (one column needs few).
ALONE_TREES = 50


def fold_importance(
    pipeline, rows: pd.DataFrame, classes: list, permutations: int, seed: int, n_jobs: int = 1
) -> pd.DataFrame:
    """Permutation importance of each raw feature column on one fold's held-out ``rows``:
    ``feature``, ``importance`` (mean drop in kappa over ``permutations`` shuffles),
    ``importance_sd`` (their spread) and ``baseline_kappa`` (the fold's unshuffled kappa).

    ``pipeline`` is the fold's fitted metadata pipeline, which encodes raw columns itself, so a
    shuffled text column takes all its one-hot levels with it.
    """
    features = feature_frame(rows)
    truth = label_indices(rows[LABEL], classes)
    result = permutation_importance(
        pipeline,
        features,
        truth,
        scoring=KAPPA_SCORER,
        n_repeats=permutations,
        random_state=seed,
        n_jobs=n_jobs,
    )
    baseline = cohen_kappa_score(truth, pipeline.predict(features))
    return pd.DataFrame(
        {
            "feature": features.columns,
            "importance": result.importances_mean,
            "importance_sd": result.importances_std,
            "baseline_kappa": baseline,
        }
    )


def forest_importance(
    samples: pd.DataFrame, folds: pd.DataFrame, fold_files: list, load, settings: dict
) -> pd.DataFrame:
    """:func:`fold_importance` of every fold's pipeline on that fold's validation visits, with
    ``repeat`` and ``fold``: ``fold_files`` are records with ``repeat``, ``fold`` and ``model``
    (read by ``load``); ``settings`` holds ``classes``, ``permutations``, ``seed`` (cv.seed;
    repeat r shuffles with cv.seed + r - 1, its models' seed) and ``n_jobs``."""
    parts = []
    for record in fold_files:
        repeat, fold = record["repeat"], record["fold"]
        held_out = folds[(folds["repeat"] == repeat) & (folds["fold"] == fold)]
        rows = samples[samples[ID].isin(held_out[ID])]
        part = fold_importance(
            load(record["model"]),
            rows,
            settings["classes"],
            settings["permutations"],
            settings["seed"] + repeat - 1,
            settings["n_jobs"],
        )
        top = part.sort_values("importance", ascending=False).iloc[0]
        log.info(
            "Repeat %d, fold %d: %d held-out visits, kappa %.3f; top column %s (kappa drop %.3f)",
            repeat,
            fold,
            len(rows),
            part["baseline_kappa"].iloc[0],
            top["feature"],
            top["importance"],
        )
        parts.append(part.assign(repeat=repeat, fold=fold))
    columns = ["repeat", "fold", "feature", "importance", "importance_sd", "baseline_kappa"]
    return pd.concat(parts, ignore_index=True)[columns]


def alone_kappas(samples: pd.DataFrame, classes: list, settings: dict, folds: int, seed: int):
    """Each feature column's patient-grouped cross-validated kappa of a forest on that column
    alone (``folds`` folds, the metadata pipeline with :data:`ALONE_TREES` trees): column ->
    kappa."""
    features = feature_frame(samples)
    truth = label_indices(samples[LABEL], classes)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    single = {**settings, "n_estimators": min(settings["n_estimators"], ALONE_TREES)}
    kappas = {}
    for column in features.columns:
        predicted = cross_val_predict(
            build_pipeline(single, seed),
            features[[column]],
            truth,
            groups=samples[GROUP],
            cv=splitter,
        )
        kappas[column] = kappa(truth, predicted, len(classes))
    return kappas


def importance_table(per_fold: pd.DataFrame, alone: dict) -> pd.DataFrame:
    """One row per feature, most important first: the mean over folds and repeats of each fold's
    importance, its standard deviation and range over folds, the fold count, the column's
    ``alone_kappa``, ``importance_ratio`` (its importance over the next-ranked column's, for
    the top column) and ``leak_suspect`` (``alone_kappa`` >= :data:`LEAK_KAPPA`)."""
    grouped = per_fold.groupby("feature", sort=False)["importance"]
    table = pd.DataFrame(
        {
            "importance_mean": grouped.mean(),
            "importance_sd": grouped.std(ddof=1),
            "importance_min": grouped.min(),
            "importance_max": grouped.max(),
            "n_folds": grouped.size(),
        }
    )
    table = table.sort_values("importance_mean", ascending=False, kind="stable")
    table = table.rename_axis("feature").reset_index()
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table["alone_kappa"] = table["feature"].map(alone)
    ratio = np.full(len(table), np.nan)
    if len(table) > 1 and table["importance_mean"].iloc[1] > 0:
        ratio[0] = table["importance_mean"].iloc[0] / table["importance_mean"].iloc[1]
    table["importance_ratio"] = ratio
    table["leak_suspect"] = table["alone_kappa"] >= LEAK_KAPPA
    return table


def leak_warnings(importance: pd.DataFrame) -> list:
    """One line per leak suspect, naming the column and the setting that leaves it out."""
    lines = []
    for row in importance[importance["leak_suspect"]].itertuples():
        lines.append(
            f"possible leak: column '{row.feature}' alone predicts the label with kappa "
            f"{row.alone_kappa:.2f} (patient-grouped cross-validation; rank {row.rank} by "
            f"permutation importance, {row.importance_mean:.3f}); if it is recorded with or "
            f"after the label, leave it out with columns: {{exclude: [{row.feature}]}}"
        )
    return lines


def contributions(
    members: list, oofs: dict, folds: pd.DataFrame, classes: list, fusion: dict
) -> pd.DataFrame:
    """Every visit's fused prediction out of fold and each member's exact part in it, per repeat.

    Each visit is fused from the members it has (:func:`fusion_dag.weights.fuse_rows`, as
    predict does); ``contribution_{member}`` is that member's weight times its probability of
    the predicted class, so the contributions of a row sum to ``prob_predicted``. A member the
    visit lacks has weight 0 and contributes 0.
    """
    columns = prob_columns(classes)
    spec = {"classes": classes, "fusion": fusion}
    parts = []
    for repeat, visits in folds.groupby("repeat", sort=True):
        probs = {m: oofs[m].loc[oofs[m]["repeat"] == repeat, [ID, *columns]] for m in members}
        fused = fuse_rows(visits[[ID, GROUP, LABEL]], probs, members, spec)
        fused = fused[fused["members_used"] != ""].reset_index(drop=True)
        fused = fused.merge(visits[[ID, "fold"]], on=ID).assign(repeat=repeat)
        parts.append(row_contributions(fused, members, classes, fusion))
    return pd.concat(parts, ignore_index=True)


def row_contributions(fused: pd.DataFrame, members: list, classes: list, fusion: dict):
    """``fused`` (a :func:`fuse_rows` table) with ``prob_predicted`` and each member's
    ``weight_`` and ``contribution_`` to it: the rows of a new table's predictions too."""
    predicted = pd.Categorical(fused["predicted"], categories=classes).codes
    table = fused[[c for c in ("repeat", "fold") if c in fused]].copy()
    table[[ID, GROUP, LABEL, "members_used", "predicted"]] = fused[
        [ID, GROUP, LABEL, "members_used", "predicted"]
    ]
    rows = np.arange(len(fused))
    table["prob_predicted"] = fused[prob_columns(classes)].to_numpy(dtype=float)[rows, predicted]
    weights = {m: np.zeros(len(fused)) for m in members}
    for used, at in fused.groupby("members_used").indices.items():
        for member, weight in member_weights(used.split("+"), **fusion).items():
            weights[member][at] = weight
    for member in members:
        probs = fused[[f"{member}_{c}" for c in prob_columns(classes)]].to_numpy(dtype=float)
        table[f"weight_{member}"] = weights[member]
        part = weights[member] * np.nan_to_num(probs[rows, predicted])
        table[f"contribution_{member}"] = part
    return table


def fused_oof(oof: pd.DataFrame, member_tables: dict, weights: dict, classes: list):
    """``oof``'s rows (repeat, fold, id, group, label) fused from ``member_tables`` with
    ``weights``: the combination's out-of-fold predictions computed from its members'."""
    columns = prob_columns(classes)
    keys = oof[["repeat", "fold", ID, GROUP, LABEL]].reset_index(drop=True)
    fused = np.zeros((len(keys), len(columns)))
    for member, weight in weights.items():
        aligned = keys[["repeat", ID]].merge(
            member_tables[member][["repeat", ID, *columns]], on=["repeat", ID], how="left"
        )
        fused += weight * aligned[columns].to_numpy(dtype=float)
    return pd.concat([keys, pd.DataFrame(fused, columns=columns)], axis=1)


def pooled_kappa(oof: pd.DataFrame, classes: list) -> float:
    """The headline's kappa: pooled over each repeat's visits, then averaged over repeats."""
    truth = label_indices(oof[LABEL], classes)
    predicted = oof[prob_columns(classes)].to_numpy().argmax(axis=1)
    return float(
        np.mean(
            [
                kappa(truth[rows], predicted[rows], len(classes))
                for rows in oof.groupby("repeat").indices.values()
            ]
        )
    )


def member_drop_table(
    combinations: dict,
    oofs: dict,
    member_tables: dict,
    classes: list,
    fusion: dict,
    evaluation: dict,
    seed: int,
) -> pd.DataFrame:
    """Per fusion and member: the kappa lost when the member is dropped, on the visits with
    every member; from the cached out-of-fold probabilities (no model is retrained), with the
    comparisons' corrected resampled t-test (:func:`fusion_dag.inference.compare`) and Holm
    within each combination. ``verdict``: ``adds`` or ``hurts`` when the adjusted p is below
    alpha (1 - ``evaluation.confidence``, as every verdict of the run), else ``inconclusive``.

    The other members keep the weights :func:`fusion_dag.weights.member_weights` gives them as
    a combination of their own, which are the weights ``predict`` (:func:`fuse_rows`) fuses a
    visit lacking the member with: the loss is "this member missing, as deployed". Rescaling
    the remaining weights proportionally instead would mix removing the member with
    up-weighting metadata (dropping an image from 0.70 / 0.15 / 0.15 would leave 0.82 / 0.18,
    where a visit without that image gets 0.70 / 0.30).
    """
    records = []
    for name, members in combinations.items():
        if len(members) < 2:
            continue
        weights = member_weights(members, **fusion)
        full = fused_oof(oofs[name], member_tables, weights, classes)
        kappa_full = pooled_kappa(full, classes)
        for member in members:
            remaining = [m for m in members if m != member]
            deployed = member_weights(remaining, **fusion)
            dropped = fused_oof(oofs[name], member_tables, deployed, classes)
            result = compare(full, dropped, classes, evaluation, seed)
            records.append(
                {
                    "combination": name,
                    "member": member,
                    "weight": weights[member],
                    "weights_dropped": ", ".join(f"{m}={w:.3f}" for m, w in deployed.items()),
                    "n_rows": result["n_rows"],
                    "kappa_full": kappa_full,
                    "kappa_dropped": pooled_kappa(dropped, classes),
                    "kappa_loss": result["kappa_diff"],
                    "kappa_loss_ci_low": result["kappa_diff_ci_low"],
                    "kappa_loss_ci_high": result["kappa_diff_ci_high"],
                    "kappa_loss_folds": result["kappa_diff_folds"],
                    "t_corrected": result["t_corrected"],
                    "p_value": result["p_value"],
                }
            )
    table = pd.DataFrame(records)
    if table.empty:
        return table
    table["p_holm"], table["verdict"] = np.nan, ""
    alpha = significance(evaluation)
    for _, rows in table.groupby("combination", sort=False).groups.items():
        adjusted = holm_adjusted(table.loc[rows, "p_value"])
        table.loc[rows, "p_holm"] = adjusted
        table.loc[rows, "verdict"] = [
            ("adds" if loss > 0 else "hurts") if p < alpha else "inconclusive"
            for loss, p in zip(table.loc[rows, "kappa_loss_folds"], adjusted, strict=True)
        ]
    return table


def review_table(oof: pd.DataFrame, members: list, member_tables: dict, classes: list):
    """Visits the combination misclassified out of fold in every repeat, most confidently wrong
    first: ``repeats_wrong``, the most frequent ``predicted`` class, the mean fused
    ``prob_label`` and ``prob_{class}``, and each member's mean ``{member}_prob_{class}``.

    For a clinician to re-check the label; never a filter for the training data: dropping the
    visits a model gets wrong out of fold removes the hard cases from every later estimate.
    """
    columns = prob_columns(classes)
    table = oof.copy()
    table["predicted"] = np.asarray(classes)[table[columns].to_numpy().argmax(axis=1)]
    table["prob_label"] = table[columns].to_numpy()[
        np.arange(len(table)), label_indices(table[LABEL], classes)
    ]
    table["wrong"] = table["predicted"] != table[LABEL]
    n_repeats = oof["repeat"].nunique()
    per_visit = table.groupby(ID, sort=False)
    counts = per_visit["wrong"].agg(["sum", "size"])
    always = counts.index[(counts["sum"] == counts["size"]) & (counts["size"] == n_repeats)]
    wrong = table[table[ID].isin(always)]
    summary = wrong.groupby([ID, GROUP, LABEL], sort=False).agg(
        repeats_wrong=("wrong", "sum"),
        predicted=("predicted", lambda values: values.mode().iloc[0]),
        prob_label=("prob_label", "mean"),
        **{column: (column, "mean") for column in columns},
    )
    summary = summary.reset_index()
    for member in members:
        probs = member_tables[member]
        probs = probs[probs[ID].isin(always)].groupby(ID)[columns].mean()
        probs.columns = [f"{member}_{c}" for c in columns]
        summary = summary.merge(probs, left_on=ID, right_index=True, how="left")
    return summary.sort_values("prob_label", kind="stable").reset_index(drop=True)
