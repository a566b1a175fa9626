"""Explanations: what drives the forest, what each member adds to a fusion, which labels to
re-check. Keras-free, so the tabular environment runs it; the image branches' Grad-CAM heatmaps
are :mod:`fusion_dag.heatmaps`.

Why permutation importance on held-out visits: a forest's impurity importance is measured on
the rows it was fit on and favours columns with many distinct values; shuffling one raw column
of a fold's validation visits and scoring the drop in kappa measures what the fitted pipeline
uses on patients it has not seen, in the metric the study reports. The raw column is shuffled
before encoding, so the one-hot levels of a text column move together.

Why a leak screen: in the original study a column the clinician wrote beside the label was the
top feature and inflated kappa before anyone noticed. Real leaks are rarely clean copies: a code
written on some visits only, a copy with errors, a date booked from the assessed phase, a flag
set for one class. No one measurement sees them all, so the screen has several signals (the
column alone against the whole forest, its one-vs-rest AUC where it is filled, the forest's
kappa lost without it, its permutation importance against the other columns'), and a warning
names each one that fires.

Why contributions are exact: V3 fuses with fixed weights, so a visit's fused probability of a
class is the sum over members of weight x the member's probability; each term is that member's
contribution, with no approximation (unlike SHAP values of a learned fusion).
"""

import logging

import numpy as np
import pandas as pd
from sklearn.inspection import permutation_importance
from sklearn.metrics import cohen_kappa_score, make_scorer, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices, prob_columns
from fusion_dag.evaluate import kappa
from fusion_dag.inference import compare, holm_adjusted, significance
from fusion_dag.metadata import build_pipeline, feature_frame
from fusion_dag.weights import fuse_rows, member_weights

log = logging.getLogger(__name__)

KAPPA_SCORER = make_scorer(cohen_kappa_score)
# The leak screen's signals (:func:`leak_signals`); a column is a leak suspect when any fires.
# Each threshold sits between what the demo's own columns reach and what five realistic leaks
# planted in it reach, measured on two demo seeds by bench/leaks.py (its RESULTS.md section
# prints both sides of every threshold): a threshold is not chosen to pass one seed.
#
# The chance spread of a cross-validated kappa shrinks as 1 / sqrt(visits): over the demo's
# columns that carry nothing, at 155 and at 575 visits, a column's kappa alone stays within
# about +-1.6 / sqrt(visits) and the kappa lost without it has a standard deviation of about
# 0.4 (575 visits, 300 trees) to 0.6 (155 visits, 20 trees) / sqrt(visits), 0.3 / sqrt(visits)
# at 575 visits less the other columns' median (``drop_excess``). The `alone` and
# `drop` thresholds are at least a multiple of it, so a small table's noise does not fire them
# (:func:`leak_thresholds`).
#
# ``alone``: a forest on the column alone reaches ALONE_SHARE of the kappa of the forest on
# every column, and at least ALONE_FLOOR / sqrt(visits) (0.17 at the demo's 575 visits), so
# that where nothing predicts the label a column's noise cannot fire it. The demo's columns
# reach at most about 0.6 of the forest's kappa; a label copy, even with a fifth of it
# redrawn, or a date booked from the phase, 0.85 or more. Since the forest's kappa is at most
# 1, a column alone at kappa 0.8 always fires it on a table of 25 visits or more (the screen's
# former rule).
ALONE_SHARE = 0.8
ALONE_FLOOR = 4.0
# ``auc``: the best one-vs-rest AUC of a forest on the column alone, on the visits where it is
# filled: a code written on 40 % of the visits has AUC 1 there while its kappa over every visit
# is diluted. The demo's best column reaches about 0.70 to 0.81, the leaks it caught 0.87 or
# more (a narrow margin: a referral flag sits near 0.85, so drop and importance back it).
LEAK_AUC = 0.85
# Each class needs this many visits on each side of its one-vs-rest AUC: with 20 and 20 a null
# AUC's standard error is about 0.09, so 0.85 is about 4 of them above chance.
AUC_MIN_VISITS = 20
# ``drop``: the forest's patient-grouped cross-validated kappa falls without the column by
# LEAK_DROP more than it falls without a typical other column (``drop_excess``: the column's
# drop less the median of the other columns' drops), and by at least DROP_NOISE / sqrt(visits)
# more (both 0.10 at the demo's 575 visits). Every column's drop is measured against the same
# single fit on every column, so that fit's chance offset is in all of them: on the tiny run
# (40 patients, 155 visits, 30 trees) the forest's kappa fell 0.07 without the median column
# and 0.20 without wound_depth_mm, a genuine demo column. The median over the other columns
# stands in for that one fit's offset (what the forest typically loses with one column fewer,
# from every other column's refit), so the column's own noise is left. At the demo's 575
# visits the offset was -0.03 to +0.01; the demo's columns reached at most 0.07 above it, the
# leaks, which no other column can stand in for, 0.11 to 0.35.
LEAK_DROP = 0.10
DROP_NOISE = 2.4
# ``importance``: the column's permutation importance is this many times the largest of the
# other columns'. The demo's top column reaches up to about 3.8 times the next (a strong genuine
# variable can dominate a forest), the leaks it caught 6.5 or more: it catches only leaks that
# dwarf every finding.
LEAK_IMPORTANCE_RATIO = 5.0
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


def screen_columns(
    samples: pd.DataFrame, classes: list, settings: dict, folds: int, seed: int, n_jobs: int = 1
) -> pd.DataFrame:
    """The leak screen's measurements of each feature column, on one patient-grouped partition
    (``folds`` folds of :class:`StratifiedGroupKFold`, shuffled with ``seed``): one row per
    column with

    * ``alone_kappa``: the cross-validated kappa of a forest on the column alone (the metadata
      pipeline with :data:`ALONE_TREES` trees), and ``alone_share``, that over
      ``forest_kappa``, the kappa of the forest (``settings``) on every column;
    * ``alone_auc``: the best one-vs-rest AUC over the classes (:func:`filled_auc`) of the
      out-of-fold probabilities of a forest on the column alone, fit and scored on the
      ``n_filled`` visits where the column is filled (of ``n_visits``): a column written on a
      few visits, but with the label when it is, scores a low kappa over every visit and an
      AUC near 1 here;
    * ``drop_kappa``: ``forest_kappa`` less the kappa of the same forest without the column,
      on the same partition and seed.
    """
    features = feature_frame(samples)
    truth = label_indices(samples[LABEL], classes)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(features, truth, samples[GROUP]))
    single = build_pipeline(
        {**settings, "n_estimators": min(settings["n_estimators"], ALONE_TREES)}, seed
    )
    forest = build_pipeline(settings, seed)
    every = np.ones(len(features), dtype=bool)

    def grouped_kappa(pipeline, x):
        predicted = out_of_fold(pipeline, x, truth, splits, every, "predict", n_jobs)
        return kappa(truth, predicted, len(classes))

    forest_kappa = grouped_kappa(forest, features)
    records = []
    for column in features.columns:
        alone_kappa = grouped_kappa(single, features[[column]])
        filled = features[column].notna().to_numpy()
        probs = out_of_fold(
            single, features[[column]], truth, splits, filled, "predict_proba", n_jobs
        )
        records.append(
            {
                "feature": column,
                "alone_kappa": alone_kappa,
                "forest_kappa": forest_kappa,
                "alone_share": alone_kappa / forest_kappa if forest_kappa > 0 else np.nan,
                "alone_auc": filled_auc(probs, truth[filled], len(classes)),
                "n_filled": int(filled.sum()),
                "n_visits": len(features),
                "drop_kappa": forest_kappa - grouped_kappa(forest, features.drop(columns=column)),
            }
        )
    return pd.DataFrame(records)


def out_of_fold(pipeline, x: pd.DataFrame, truth, splits: list, rows, method: str, n_jobs: int):
    """``pipeline``'s out-of-fold ``method`` (predict or predict_proba) for the ``rows`` (a
    boolean mask) of ``x``, each fold fit and scored on its own rows among them: the partition
    ``splits`` (train, test index pairs over all rows) narrowed to ``rows``, so still grouped by
    patient."""
    kept = np.flatnonzero(rows)
    position = np.full(len(rows), -1)
    position[kept] = np.arange(len(kept))
    narrowed = [
        (position[train[rows[train]]], position[test[rows[test]]]) for train, test in splits
    ]
    return cross_val_predict(
        pipeline,
        x.iloc[kept],
        truth[kept],
        cv=narrowed,
        method=method,
        n_jobs=min(n_jobs, len(splits)),
    )


def filled_auc(probs: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """The best one-vs-rest AUC over the classes with at least :data:`AUC_MIN_VISITS` visits
    on each side (NaN when none has)."""
    aucs = []
    for index in range(n_classes):
        positive = truth == index
        if min(positive.sum(), (~positive).sum()) >= AUC_MIN_VISITS:
            aucs.append(roc_auc_score(positive, probs[:, index]))
    return max(aucs, default=np.nan)


def importance_table(per_fold: pd.DataFrame, screen: pd.DataFrame) -> pd.DataFrame:
    """One row per feature, most important first: the mean over folds and repeats of each fold's
    importance, its standard deviation and range over folds, the fold count, the column's
    :func:`screen_columns` measurements, ``importance_ratio`` (its importance over the largest
    importance of the other columns: for the top column, over the next one's), ``drop_excess``
    (its ``drop_kappa`` less the median of the other columns': the shared offset of the one
    fit on every column removed; its own drop on a table of one column), the
    ``leak_signals`` that fire (:func:`leak_signals`, comma-separated, empty when none) and
    ``leak_suspect`` (any fires)."""
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
    table = table.merge(screen, on="feature", how="left", validate="one_to_one")
    means = table["importance_mean"].to_numpy()
    ratio = np.full(len(table), np.nan)
    for index in range(len(table)):
        others = np.delete(means, index)
        if len(others) and others.max() > 0:
            ratio[index] = means[index] / others.max()
    table["importance_ratio"] = ratio
    drops = table["drop_kappa"].to_numpy(dtype=float)
    table["drop_excess"] = [
        drops[index] - np.median(np.delete(drops, index)) if len(drops) > 1 else drops[index]
        for index in range(len(drops))
    ]
    table["leak_signals"] = [", ".join(leak_signals(row)) for _, row in table.iterrows()]
    table["leak_suspect"] = table["leak_signals"] != ""
    return table


def leak_thresholds(visits: int) -> dict:
    """Each signal's threshold on a table of ``visits`` visits (the ``alone`` signal's is the
    floor under ALONE_SHARE x the forest's kappa); see the constants for why."""
    noise = 1.0 / np.sqrt(visits)
    return {
        "alone": ALONE_FLOOR * noise,
        "auc": LEAK_AUC,
        "drop": max(LEAK_DROP, DROP_NOISE * noise),
        "importance": LEAK_IMPORTANCE_RATIO,
    }


def leak_signals(row: pd.Series) -> list:
    """The names of the leak screen's signals that fire for one row of the importance table,
    at :func:`leak_thresholds` of its ``n_visits``."""
    threshold = leak_thresholds(row["n_visits"])
    alone_bar = max(ALONE_SHARE * row["forest_kappa"], threshold["alone"])
    fired = {
        "alone": row["alone_kappa"] >= alone_bar,
        "auc": row["alone_auc"] >= threshold["auc"],
        "drop": row["drop_excess"] >= threshold["drop"],
        "importance": row["importance_ratio"] >= threshold["importance"],
    }
    return [name for name, fires in fired.items() if fires]


def leak_warnings(importance: pd.DataFrame) -> list:
    """One line per leak suspect, naming the column, each signal that fired with what it
    measured, and the setting that leaves the column out."""
    lines = []
    for _, row in importance[importance["leak_suspect"]].iterrows():
        measured = {
            "alone": f"alone (a forest on it alone: kappa {row['alone_kappa']:.2f}, "
            f"{row['alone_share']:.2f} x the forest's {row['forest_kappa']:.2f} on every column)",
            "auc": f"auc (one-vs-rest AUC {row['alone_auc']:.2f} on its {row['n_filled']} "
            "filled visits)",
            "drop": f"drop (the forest's kappa falls {row['drop_kappa']:.2f} without it, "
            f"{row['drop_excess']:.2f} more than without the median other column)",
            "importance": f"importance (permutation importance {row['importance_mean']:.3f}, "
            f"{row['importance_ratio']:.1f} x the next column's)",
        }
        fired = [measured[name] for name in row["leak_signals"].split(", ")]
        feature = row["feature"]
        lines.append(
            f"possible leak: column '{feature}' fires {'; '.join(fired)} (patient-grouped "
            f"cross-validation; rank {row['rank']} by permutation importance); if it is "
            f"recorded with or after the label, leave it out with columns: "
            f"{{exclude: [{feature}]}}"
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
