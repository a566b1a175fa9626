"""Aggregation: the headline table, paired comparisons and the ablation tables.

Why intervals and paired tests: on one 3-fold partition of a clinical table a forest's kappa
moves by 0.05 with the partition seed alone, so a mean over folds cannot tell a real gain from
noise. The headline averages repeated partitions and gives each metric a patient-bootstrap
interval; a claim that one combination beats another rests on a paired comparison on the
same rows (a paired bootstrap interval and the corrected resampled t-test).
"""

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, label_indices, prob_columns
from fusion_dag.evaluate import (
    bootstrap_metrics,
    corrected_resampled_ttest,
    interval,
    kappa,
    oof_table,
    predicted_index,
    predicted_shares,
    repeat_arrays,
)

# Metrics with a patient-bootstrap interval in the headline, the primary one first.
INTERVAL_METRICS = ("kappa", "qwk", "balanced_accuracy", "macro_f1", "brier", "log_loss", "ece")
SIGNIFICANCE = 0.05


def per_fold_table(records: list) -> pd.DataFrame:
    """One row per combination, repeat and fold from the fusion jobs' metrics records."""
    table = pd.DataFrame(records)
    order = ["combination", "repeat", "fold"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def headline_table(
    per_fold: pd.DataFrame, oofs: dict, classes: list, evaluation: dict, seed: int
) -> pd.DataFrame:
    """One row per combination (in the order of ``oofs``) with the contracted columns.

    Pooled metrics come from each repeat's out-of-fold predictions (mean over repeats, with a
    patient-bootstrap interval); ``kappa_std`` is the spread over all folds of all repeats;
    train and fit kappa are means over folds, and ``gap_mean`` is train kappa minus the pooled
    validation kappa.
    """
    rows = []
    for name, oof in oofs.items():
        folds = per_fold[per_fold["combination"] == name]
        estimates = bootstrap_metrics(oof, classes, evaluation["bootstrap"], seed)
        row = {
            "combination": name,
            "n_folds": int(folds["fold"].nunique()),
            "n_repeats": int(oof["repeat"].nunique()),
            "n_rows": int(oof[ID].nunique()),
        }
        kappa_std = folds["kappa"].std(ddof=1) if len(folds) > 1 else 0.0
        for column, value in metric_columns(estimates, classes, evaluation, "_mean").items():
            row[column] = value
            if column == "kappa_mean":
                row["kappa_std"] = kappa_std
        row["train_kappa_mean"] = folds["train_kappa"].mean()
        row["gap_mean"] = row["train_kappa_mean"] - row["kappa_mean"]
        row["fit_kappa_mean"] = folds["fit_kappa"].mean()
        predicted = np.concatenate(
            [probs.argmax(axis=1) for _, _, probs in repeat_arrays(oof, classes)]
        )
        row.update(predicted_shares(predicted, classes))
        rows.append(row)
    return pd.DataFrame(rows)


def metric_columns(estimates: dict, classes: list, evaluation: dict, suffix: str) -> dict:
    """Point estimates (named ``{metric}{suffix}``) with percentile intervals of the interval
    metrics, then accuracy and per-class F1 and recall, from :func:`bootstrap_metrics`."""
    columns = {}
    for metric in INTERVAL_METRICS:
        point, samples = estimates[metric]
        columns[f"{metric}{suffix}"] = point
        low, high = interval(samples, evaluation["confidence"])
        columns[f"{metric}_ci_low"], columns[f"{metric}_ci_high"] = low, high
    columns[f"accuracy{suffix}"] = estimates["accuracy"][0]
    for index, name_of_class in enumerate(classes):
        columns[f"f1_{name_of_class}{suffix}"] = estimates[f"f1_{index}"][0]
        columns[f"recall_{name_of_class}{suffix}"] = estimates[f"recall_{index}"][0]
    return columns


def external_metrics(
    predictions: pd.DataFrame, members: list, classes: list, evaluation: dict, seed: int
) -> pd.DataFrame:
    """Metrics of a labelled new table, with patient-bootstrap intervals.

    One row for the fused predictions (each row scored by the members it has) and one per
    member on the rows it scored, so a team sees what each input contributes on the new
    patients. ``n_unscored`` counts labelled rows the predictor could not score.
    """
    labelled = predictions[predictions[LABEL].notna()]
    if labelled.empty:
        return pd.DataFrame(columns=["predictor", "n_rows", "n_groups", "n_unscored"])
    predictors = {"+".join(members): ""} | (
        {m: f"{m}_" for m in members} if len(members) > 1 else {}
    )
    rows = []
    for name, prefix in predictors.items():
        columns = [f"{prefix}prob_{c}" for c in classes]
        scored = labelled[labelled[columns].notna().all(axis=1)]
        table = scored[[ID, GROUP, LABEL]].assign(repeat=1)
        table[prob_columns(classes)] = scored[columns].to_numpy()
        row = {
            "predictor": name,
            "n_rows": len(scored),
            "n_groups": int(scored[GROUP].nunique()),
            "n_unscored": len(labelled) - len(scored),
        }
        if len(scored):
            estimates = bootstrap_metrics(table, classes, evaluation["bootstrap"], seed)
            row.update(metric_columns(estimates, classes, evaluation, ""))
            row.update(predicted_shares(predicted_index(table, classes), classes))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_rows(first: pd.DataFrame, second: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two out-of-fold tables restricted to the (repeat, id) rows both scored."""
    keys = first[["repeat", ID]].merge(second[["repeat", ID]], on=["repeat", ID])
    return (
        keys.merge(first, on=["repeat", ID], validate="1:1"),
        keys.merge(second, on=["repeat", ID], validate="1:1"),
    )


def fold_kappa_differences(first, second, classes: list) -> np.ndarray:
    """Per (repeat, fold) validation kappa of ``first`` minus ``second``.

    The tables are row-aligned (as :func:`paired_rows` returns them).
    """
    columns = prob_columns(classes)
    truth = label_indices(first["label"], classes)
    mine = first[columns].to_numpy().argmax(axis=1)
    theirs = second[columns].to_numpy().argmax(axis=1)
    differences = []
    for rows in first.groupby(["repeat", "fold"], sort=True).indices.values():
        differences.append(
            kappa(truth[rows], mine[rows], len(classes))
            - kappa(truth[rows], theirs[rows], len(classes))
        )
    return np.asarray(differences)


def compare(
    first: pd.DataFrame, second: pd.DataFrame, classes: list, evaluation: dict, seed: int
) -> dict:
    """Paired comparison of two combinations' validation kappa on the rows both scored.

    The difference is the mean over repeats of (kappa of ``first`` - kappa of ``second``); its
    interval resamples patients once for both sides (a paired patient bootstrap); the p-value
    is the corrected resampled t-test over the repeats x folds differences.
    """
    first, second = paired_rows(first, second)
    # The same rows, hence the same patients and seed: both sides get the same patient draws.
    mine, theirs = (
        bootstrap_metrics(table, classes, evaluation["bootstrap"], seed)["kappa"]
        for table in (first, second)
    )
    difference = mine[0] - theirs[0]
    low, high = interval(mine[1] - theirs[1], evaluation["confidence"])
    fold_rows = first.groupby(["repeat", "fold"]).size()
    repeat_rows = first.groupby("repeat").size()
    test_share = float(
        np.mean(fold_rows / (repeat_rows.reindex(fold_rows.index, level=0) - fold_rows))
    )
    t, p = corrected_resampled_ttest(fold_kappa_differences(first, second, classes), test_share)
    if p < SIGNIFICANCE:
        verdict = "fusion better" if difference > 0 else "fusion worse"
    else:
        verdict = "no evidence of a difference"
    return {
        "n_rows": int(first[ID].nunique()),
        "kappa_diff": difference,
        "kappa_diff_ci_low": low,
        "kappa_diff_ci_high": high,
        "t_corrected": t,
        "p_value": p,
        "verdict": verdict,
    }


def comparisons_table(oofs: dict, classes: list, evaluation: dict, seed: int) -> pd.DataFrame:
    """Each combination of several members against each of its members run alone."""
    rows = []
    for name, oof in oofs.items():
        members = name.split("+")
        if len(members) < 2:
            continue
        for member in members:
            if member in oofs:
                result = compare(oof, oofs[member], classes, evaluation, seed)
                rows.append({"combination": name, "versus": member, **result})
    columns = ["combination", "versus", "n_rows", "kappa_diff", "kappa_diff_ci_low"]
    columns += ["kappa_diff_ci_high", "t_corrected", "p_value", "verdict"]
    return pd.DataFrame(rows, columns=columns)


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


def versus_v3(
    v3_oof: pd.DataFrame,
    variant_probs: list,
    folds: pd.DataFrame,
    classes: list,
    evaluation: dict,
    seed: int,
) -> pd.DataFrame:
    """V3's pooled kappa minus each ablation variant's, paired on the same rows.

    ``variant_probs`` holds ``(repeat, fold, table)`` of the ablation's per-fold probabilities
    (every variant, told apart by ``strategy`` and ``rf_source``). The columns carry
    :func:`compare`'s interval and corrected p-value; the verdict names V3.
    """
    wording = {"fusion better": "V3 better", "fusion worse": "V3 worse"}
    variants = variant_probs[0][2][["strategy", "rf_source"]].drop_duplicates()
    rows = []
    for strategy, source in variants.itertuples(index=False):
        parts = [
            (r, k, table[(table["strategy"] == strategy) & (table["rf_source"] == source)])
            for r, k, table in variant_probs
        ]
        result = compare(v3_oof, oof_table(parts, folds, classes), classes, evaluation, seed)
        rows.append(
            {
                "strategy": strategy,
                "rf_source": source,
                "v3_kappa_gain": result["kappa_diff"],
                "v3_kappa_gain_ci_low": result["kappa_diff_ci_low"],
                "v3_kappa_gain_ci_high": result["kappa_diff_ci_high"],
                "v3_p_value": result["p_value"],
                "v3_verdict": wording.get(result["verdict"], result["verdict"]),
            }
        )
    return pd.DataFrame(rows)


def markdown_table(headline: pd.DataFrame) -> str:
    """The headline as a Markdown table for people, three decimals."""
    return headline.to_markdown(index=False, floatfmt=".3f") + "\n"
