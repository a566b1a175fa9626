"""Aggregation into tables and Markdown: the headline, the paired comparisons, the ablation
tables, and their readable forms (``results/fusion_results.md``, the report's front page).

Why apart from :mod:`fusion_dag.inference`: which rows a table holds and how a reader sees it
change with the questions a study asks; the statistics behind each number do not. Which
contrasts form the pre-specified primary family is :mod:`fusion_dag.plan`'s.
"""

import logging
import re
import textwrap

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, prob_columns
from fusion_dag.evaluate import oof_table, predicted_index, predicted_shares, repeat_arrays
from fusion_dag.inference import (
    bootstrap_metrics,
    compare,
    corrected_interval,
    fold_test_share,
    fold_values,
    interval,
    significance,
    verdicts,
)
from fusion_dag.plan import ALL, COMPLETE, PRIMARY, contrasts, plan_notice
from fusion_dag.weights import METADATA, fuse_rows

log = logging.getLogger(__name__)

# Metrics with an interval in the headline, the primary one first.
INTERVAL_METRICS = (
    "kappa",
    "qwk",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "brier",
    "log_loss",
    "ece",
)


def per_fold_table(records: list) -> pd.DataFrame:
    """One row per combination, repeat and fold from the fusion jobs' metrics records."""
    table = pd.DataFrame(records)
    order = ["combination", "repeat", "fold"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def with_branches_learned(
    per_fold: pd.DataFrame, combinations: dict, learning: pd.DataFrame
) -> pd.DataFrame:
    """``per_fold`` with ``branches_learned``: whether every image branch of the fold's
    combination learned from its images in that (repeat, fold), as its image stage judged it
    (``learning``: ``member``, ``repeat``, ``fold``, ``learned``; see
    :func:`fusion_dag.image.not_learned_reasons`). True for metadata alone.

    Why per fold: a fusion whose branch learned nothing in a fold fuses only the forest there,
    so its contrast with the forest measures the weights, not the images."""
    failed = learning[~learning["learned"].astype(bool)]
    missed = set(failed[["member", "repeat", "fold"]].itertuples(index=False, name=None))
    learned = [
        not any((member, repeat, fold) in missed for member in combinations[name])
        for name, repeat, fold in zip(
            per_fold["combination"], per_fold["repeat"], per_fold["fold"], strict=True
        )
    ]
    return per_fold.assign(branches_learned=learned)


def headline_table(
    per_fold: pd.DataFrame,
    oofs: dict,
    classes: list,
    evaluation: dict,
    seed: int,
    all_visits: dict | None = None,
) -> pd.DataFrame:
    """One row per combination (in the order of ``oofs``) with the contracted columns, and a
    second row (``rows`` = ``all``) for each combination in ``all_visits``: every visit scored
    with the members it has (:func:`all_visits_oof`).

    Pooled metrics come from each repeat's out-of-fold predictions (mean over repeats);
    ``_ci_`` intervals are :func:`~fusion_dag.inference.corrected_interval` of the per-fold
    values around that mean, ``kappa_boot_`` the patient bootstrap of the pooled predictions
    (fitted models held fixed). ``kappa_std`` is the spread over all folds of all repeats; train
    and fit kappa are means over the fusion jobs' folds (complete rows only), and
    ``gap_mean`` is train kappa minus the pooled validation kappa (a measure of overfitting
    only on rows without metadata, :func:`shown_gap`). ``folds_not_learned`` counts
    the (repeat, fold) whose image branches did not all learn (``per_fold``'s
    ``branches_learned``, :func:`with_branches_learned`), on both rows of a combination.
    """
    rows = []
    scored = [(name, COMPLETE, oof) for name, oof in oofs.items()]
    scored += [(name, ALL, oof) for name, oof in (all_visits or {}).items()]
    order = {name: position for position, name in enumerate(oofs)}
    for name, visits, oof in sorted(scored, key=lambda item: order[item[0]]):
        estimates = bootstrap_metrics(oof, classes, evaluation["bootstrap"], seed)
        values = fold_values(oof, classes)
        row = {
            "combination": name,
            "rows": visits,
            "n_folds": int(oof["fold"].nunique()),
            "n_repeats": int(oof["repeat"].nunique()),
            "n_rows": int(oof[ID].nunique()),
        }
        row.update(headline_metric_columns(estimates, values, fold_test_share(oof), evaluation))
        row.update(class_columns(estimates, classes, "_mean"))
        folds = per_fold[per_fold["combination"] == name]
        complete = visits == COMPLETE
        row["train_kappa_mean"] = folds["train_kappa"].mean() if complete else np.nan
        row["gap_mean"] = row["train_kappa_mean"] - row["kappa_mean"]
        row["fit_kappa_mean"] = folds["fit_kappa"].mean() if complete else np.nan
        row["folds_not_learned"] = int((~folds["branches_learned"].astype(bool)).sum())
        predicted = np.concatenate(
            [probs.argmax(axis=1) for _, _, probs in repeat_arrays(oof, classes)]
        )
        row.update(predicted_shares(predicted, classes))
        if "weights_learned" in per_fold:
            row.update(learned_columns(folds, complete))
        rows.append(row)
    return pd.DataFrame(rows)


# With fusion.temperature: the fold means of the validation visits' calibration before and
# after each fold's temperature (fusion_dag.learn.learned_metrics).
TEMPERED_COLUMNS = ("brier_untempered", "brier_tempered", "ece_untempered", "ece_tempered")


def learned_columns(folds: pd.DataFrame, complete: bool) -> dict:
    """The headline's columns with ``fusion.learn``: ``weights_learned`` (whether the row's
    predictions were fused with weights each fold learned, as in ``learned.tsv``, rather than
    the configured ones; the ``rows: all`` rows are fused with the configured weights and no
    temperature), ``temperature_mean`` and :data:`TEMPERED_COLUMNS` as ``{name}_mean`` (means
    over folds; NaN without a learned temperature)."""
    learned = complete and bool(folds["weights_learned"].astype(bool).all())
    columns = {"weights_learned": learned}
    tempered = complete and folds["temperature"].notna().all()
    columns["temperature_mean"] = folds["temperature"].mean() if tempered else np.nan
    for name in TEMPERED_COLUMNS:
        columns[f"{name}_mean"] = folds[name].mean() if tempered else np.nan
    return columns


def headline_metric_columns(
    estimates: dict, values: dict, test_share: float, evaluation: dict
) -> dict:
    """``{metric}_mean`` with its corrected interval ``{metric}_ci_low``/``_high`` for every
    interval metric; ``kappa_std`` (fold spread) and the patient-bootstrap ``kappa_boot_low``/
    ``_high`` beside kappa's."""
    columns = {}
    for metric in INTERVAL_METRICS:
        point = estimates[metric][0]
        columns[f"{metric}_mean"] = point
        if metric == "kappa":
            columns["kappa_std"] = float(np.std(values["kappa"], ddof=1))
        low, high = corrected_interval(point, values[metric], test_share, evaluation["confidence"])
        columns[f"{metric}_ci_low"], columns[f"{metric}_ci_high"] = low, high
        if metric == "kappa":
            boot = interval(estimates["kappa"][1], evaluation["confidence"])
            columns["kappa_boot_low"], columns["kappa_boot_high"] = boot
    return columns


def class_columns(estimates: dict, classes: list, suffix: str) -> dict:
    """Accuracy, per-class F1 and recall point estimates, named ``...{suffix}``."""
    columns = {f"accuracy{suffix}": estimates["accuracy"][0]}
    for index, name_of_class in enumerate(classes):
        columns[f"f1_{name_of_class}{suffix}"] = estimates[f"f1_{index}"][0]
        columns[f"recall_{name_of_class}{suffix}"] = estimates[f"recall_{index}"][0]
    return columns


def all_visits_oof(
    members: list, member_oofs: dict, folds: pd.DataFrame, classes: list, fusion: dict
) -> pd.DataFrame:
    """Pooled out-of-fold predictions of a combination on every visit that has any member,
    each fused from the members it has with :func:`fusion_dag.weights.fuse_rows` (predict's own
    reweighting), from the members' pooled out-of-fold probabilities ``member_oofs``.

    This is the policy ``predict`` applies to a visit that lacks an image; the complete-row
    headline never measured it. ``fusion`` holds ``metadata_weight`` and ``weights``.
    """
    columns = prob_columns(classes)
    spec = {"classes": classes, "fusion": fusion}
    parts = []
    for repeat, visits in folds.groupby("repeat", sort=True):
        probs = {
            m: member_oofs[m].loc[member_oofs[m]["repeat"] == repeat, [ID, *columns]]
            for m in members
        }
        fused = fuse_rows(visits[[ID, GROUP, LABEL]], probs, members, spec)
        fused = fused.loc[fused["members_used"] != "", [ID, *columns]]
        parts.append(fused.merge(visits[[ID, GROUP, LABEL, "fold"]], on=ID).assign(repeat=repeat))
    return pd.concat(parts, ignore_index=True)[["repeat", "fold", ID, GROUP, LABEL, *columns]]


def member_oofs(member_files: pd.DataFrame, read, folds: pd.DataFrame, classes: list) -> dict:
    """Each fusion member's pooled out-of-fold probabilities (member -> out-of-fold table) from
    the records of its stage files (``member``, ``repeat``, ``fold``, ``probs``); ``read``
    reads one file."""
    return {
        member: oof_table(
            [(r.repeat, r.fold, read(r.probs)) for r in files.itertuples()], folds, classes
        )
        for member, files in member_files.groupby("member")
    }


def all_visits_oofs(
    combinations: dict,
    oofs: dict,
    member_oofs: dict,
    folds: pd.DataFrame,
    classes: list,
    fusion: dict,
) -> dict:
    """:func:`all_visits_oof` of every fusion that some visits lack a member of (name ->
    table): the combinations whose ``rows: all`` scores more visits than its complete rows."""
    scored_all = {}
    for name, members in combinations.items():
        if len(members) < 2:
            continue
        scored = all_visits_oof(members, member_oofs, folds, classes, fusion)
        if scored[ID].nunique() > oofs[name][ID].nunique():
            scored_all[name] = scored
            log.info(
                "%s: %d of %d visits have every member; rows: all scores each of them with "
                "the members it has, as predict does",
                name,
                oofs[name][ID].nunique(),
                scored[ID].nunique(),
            )
    return scored_all


def metric_columns(estimates: dict, classes: list, evaluation: dict, suffix: str) -> dict:
    """Point estimates (named ``{metric}{suffix}``) with patient-bootstrap percentile intervals
    of the interval metrics, then accuracy and per-class F1 and recall, from
    :func:`~fusion_dag.inference.bootstrap_metrics`. For one fixed model scored on new
    patients (``predict``), where the bootstrap's premise, fitted models held fixed, is the
    situation itself."""
    columns = {}
    for metric in INTERVAL_METRICS:
        point, samples = estimates[metric]
        columns[f"{metric}{suffix}"] = point
        low, high = interval(samples, evaluation["confidence"])
        columns[f"{metric}_ci_low"], columns[f"{metric}_ci_high"] = low, high
    return columns | class_columns(estimates, classes, suffix)


def external_metrics(
    predictions: pd.DataFrame, members: list, classes: list, evaluation: dict, seed: int
) -> pd.DataFrame:
    """Metrics of a labelled new table, with patient-bootstrap intervals.

    One row for the fused predictions (each row scored by the members it has) and one per
    member on the rows it scored, so a team sees what each input contributes on the new
    patients. ``n_unscored`` counts labelled rows the predictor could not score. Rows whose
    patients trained the bundle (``seen_in_training`` true) are left out: their metrics would
    be in-sample; ``n_seen`` counts them. No row is left when every labelled patient was seen.
    With ``prediction_set`` (predict.coverage), the fused row has ``set_coverage`` (share of
    visits whose set holds their class) and ``set_size`` (mean classes per set).
    """
    labelled = predictions[predictions[LABEL].notna()]
    unknown = pd.Series(pd.NA, index=labelled.index, dtype="boolean")
    in_training = labelled.get("seen_in_training", unknown).fillna(False).to_numpy(dtype=bool)
    labelled = labelled[~in_training]
    if labelled.empty:
        return pd.DataFrame(columns=["predictor", "n_rows", "n_groups", "n_unscored", "n_seen"])
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
            "n_seen": int(in_training.sum()),
        }
        if len(scored) and "prediction_set" in scored and not prefix:
            sets = scored["prediction_set"].fillna("").str.split("|")
            row["set_coverage"] = float(
                np.mean([label in s for label, s in zip(scored[LABEL], sets, strict=True)])
            )
            row["set_size"] = float(sets.map(len).mean())
        if len(scored):
            estimates = bootstrap_metrics(table, classes, evaluation["bootstrap"], seed)
            row.update(metric_columns(estimates, classes, evaluation, ""))
            row.update(predicted_shares(predicted_index(table, classes), classes))
        rows.append(row)
    return pd.DataFrame(rows)


COMPARISON_COLUMNS = [
    "combination",
    "versus",
    "primary",
    "family",
    "rows",
    "n_rows",
    "kappa_diff",
    "kappa_diff_ci_low",
    "kappa_diff_ci_high",
    "kappa_diff_folds",
    "t_corrected",
    "p_value",
    "p_holm",
    "verdict",
    "detectable_gain",
    "kappa_diff_boot_low",
    "kappa_diff_boot_high",
    "brier_diff",
    "brier_diff_ci_low",
    "brier_diff_ci_high",
    "brier_p_value",
]


def comparisons_table(
    oofs: dict,
    classes: list,
    evaluation: dict,
    seed: int,
    all_visits: dict | None = None,
) -> pd.DataFrame:
    """Every contrast :func:`fusion_dag.plan.contrasts` plans for the combinations run: each
    fusion holding ``evaluation.primary`` against it on the visits both scored (the primary
    family) and, for a combination in ``all_visits``, on every visit as predict scores it;
    then the secondary contrasts. Each family gets its own Holm adjustment and verdicts;
    ``primary`` marks the pre-specified family."""
    all_visits = all_visits or {}
    rows = [
        (name, versus, family, visits, all_visits[name] if visits == ALL else oofs[name])
        for name, versus, family, visits in contrasts(list(oofs), evaluation["primary"])
        if visits == COMPLETE or name in all_visits
    ]
    records = []
    for name, versus, family, visits, oof in rows:
        result = compare(oof, oofs[versus], classes, evaluation, seed)
        records.append(
            {
                "combination": name,
                "versus": versus,
                "primary": family == PRIMARY,
                "family": family,
                "rows": visits,
                **result,
            }
        )
    table = pd.DataFrame(
        records, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "verdict")]
    )
    table["p_holm"], table["verdict"] = np.nan, ""
    for _, members in table.groupby("family", sort=False).groups.items():
        adjusted, words = verdicts(
            table.loc[members, "kappa_diff_folds"],
            table.loc[members, "p_value"],
            significance(evaluation),
        )
        table.loc[members, "p_holm"], table.loc[members, "verdict"] = adjusted, words
    return table[COMPARISON_COLUMNS]


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
    :func:`~fusion_dag.inference.compare`'s interval and p-value (the run's one rule),
    Holm-adjusted over the variants (the ablation is its own family) at alpha =
    1 - ``evaluation.confidence``; the verdict names V3.
    """
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
                "v3_kappa_gain_folds": result["kappa_diff_folds"],
                "v3_p_value": result["p_value"],
            }
        )
    table = pd.DataFrame(rows)
    adjusted, words = verdicts(
        table["v3_kappa_gain_folds"], table["v3_p_value"], significance(evaluation)
    )
    table["v3_p_holm"] = adjusted
    table["v3_verdict"] = [f"V3 {word}" if word != "inconclusive" else word for word in words]
    return table


def markdown_table(headline: pd.DataFrame) -> str:
    """A table as Markdown for people, three decimals."""
    return headline.to_markdown(index=False, floatfmt=".3f") + "\n"


# The second headline table's headers and their metrics (balanced_acc: the table fits within
# LINE_WIDTH whatever the combinations' names).
SHORT_HEADERS = {
    "auc": "auc",
    "balanced_acc": "balanced_accuracy",
    "macro_f1": "macro_f1",
    "brier": "brier",
    "ece": "ece",
    "train_kappa": "train_kappa",
}
# What a readable table shows where a row has no value (a NaN would print as ``nan``).
MISSING = "–"
# The width the Markdown results are kept to, so a reader needs no horizontal scrolling.
LINE_WIDTH = 100


def level(confidence: float) -> str:
    """The interval's level as the run configured it (``evaluation.confidence``): ``95 %``."""
    return f"{100 * confidence:g} %"


def number(value, form: str = "{:.3f}") -> str:
    """``value`` in ``form``, or an en dash where the row has none (NaN)."""
    return MISSING if pd.isna(value) else form.format(value)


def p_text(p: float) -> str:
    """A p-value with three decimals, ``< 0.001`` below that (``= 0.000`` would read as zero)."""
    return MISSING if pd.isna(p) else ("< 0.001" if p < 0.001 else f"= {p:.3f}")


def with_interval(point: float, low: float, high: float, signed: bool = False) -> str:
    """``0.307 [0.230, 0.379]`` (``+0.037 [-0.010, +0.084]`` for a difference); an en dash for
    a point the row lacks, ``[–]`` for an interval the folds could not give."""
    form = "{:+.3f}" if signed else "{:.3f}"
    if pd.isna(point):
        return MISSING
    if pd.isna(low) or pd.isna(high):
        return f"{form.format(point)} [{MISSING}]"
    return f"{form.format(point)} [{form.format(low)}, {form.format(high)}]"


def readable_table(table: pd.DataFrame, style: str = "pipe") -> str:
    """A readable table as Markdown (``pipe``) or reStructuredText (``rst``): three decimals,
    an en dash for values a row does not have, numbers right-aligned.

    Cells are formatted here, not by tabulate, which prints a NaN as ``nan`` and re-reads
    ``0.010`` as ``0.01``.
    """
    shown = table.astype(object).map(lambda v: number(v) if isinstance(v, float) else v)
    align = ["right" if pd.api.types.is_numeric_dtype(table[c]) else "left" for c in table]
    return shown.to_markdown(index=False, tablefmt=style, disable_numparse=True, colalign=align)


def interval_cells(table: pd.DataFrame, metric: str, signed: bool = False) -> list:
    """``{metric}_mean`` (or ``{metric}_folds`` for a difference) with its ``_ci_`` interval,
    one text per row."""
    point = f"{metric}_folds" if signed else f"{metric}_mean"
    return [
        with_interval(*values, signed=signed)
        for values in table[[point, f"{metric}_ci_low", f"{metric}_ci_high"]].itertuples(
            index=False
        )
    ]


def readable_headline(headline: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Every headline row with the columns a reader needs first, for the log (the TSV keeps
    every column)."""
    table = headline[["combination", "rows", "n_rows"]].copy()
    for metric in ("kappa", "qwk", "auc"):
        table[f"{metric} ({level(confidence)} CI)"] = interval_cells(headline, metric)
        if metric == "kappa":
            table["kappa_std"] = headline["kappa_std"]
    for column, name in (
        ("balanced_accuracy_mean", "balanced_accuracy"),
        ("macro_f1_mean", "macro_f1"),
        ("brier_mean", "brier"),
        ("ece_mean", "ece"),
        ("train_kappa_mean", "train_kappa"),
    ):
        table[name] = headline[column]
    table["gap"] = shown_gap(headline)
    return table


def shown_gap(headline: pd.DataFrame) -> pd.Series:
    """``gap_mean`` where it can show overfitting, NaN elsewhere: on rows without metadata,
    whose train kappa is in-sample (an image branch's own predictions on the visits it was
    trained on, or their fixed-weight fusion). On a row with metadata the forest's train kappa
    is an inner out-of-fold estimate, so the gap is about 0 by construction (the TSV keeps it).
    """
    in_sample = [METADATA not in name.split("+") for name in headline["combination"]]
    return headline["gap_mean"].where(in_sample)


def readable_comparisons(comparisons: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """The comparisons' columns a reader needs: the difference with its corrected interval,
    the p-values, the verdict and the gain the test could see."""
    table = comparisons[["combination", "versus", "family", "rows", "n_rows"]].copy()
    table[f"kappa_diff ({level(confidence)} CI)"] = interval_cells(comparisons, "kappa_diff", True)
    columns = ["p_value", "p_holm", "verdict", "detectable_gain"]
    table[columns] = comparisons[columns]
    return table


def legend(confidence: float) -> dict:
    """What each column of the Markdown results means, by its header: read off the code that
    computes it (:func:`headline_table`, :func:`~fusion_dag.inference.compare`,
    :func:`~fusion_dag.evaluate.weighted_metrics`)."""
    ci, alpha = level(confidence), 1 - confidence
    return {
        "#": "the combination's label in these tables (the Combinations table names it).",
        "combination": "the inputs fused, joined by `+`: `metadata` is the random forest on the "
        "clinical table, any other name the image branch of that modality.",
        "rows": "which visits a row scores: `complete`, the visits with every member of the "
        "combination; `all`, every visit with any member, each scored with the members it has "
        "(as `predict` scores a new visit).",
        "n_rows": "the number of visits scored (in a contrast: the visits both sides scored).",
        f"kappa ({ci} CI)": "Cohen's kappa (unweighted: 1 is perfect, 0 chance agreement) "
        "between the true and the predicted phase (the most probable) of the pooled "
        "out-of-fold predictions, the mean over repeats; in brackets its corrected resampled t "
        f"interval at {ci} (Nadeau and Bengio 2003) from the spread of the per-fold kappas, so "
        "it includes how differently the models came out in each fold.",
        "kappa_std": "the standard deviation of the validation kappa over all folds of all "
        "repeats.",
        f"qwk ({ci} CI)": "quadratic weighted kappa: as kappa, but a miss by two phases (I for "
        "R) costs four times a miss by one; same pooling and interval.",
        "auc": "the mean over phases of the one-vs-rest ROC AUC of the predicted probabilities "
        "(0.5 is chance, 1 a perfect ranking), the mean over repeats.",
        "balanced_acc": "the mean over phases of recall (the share of each true phase "
        "predicted as such): balanced accuracy, which counts a rare phase as much as a common "
        "one.",
        "macro_f1": "the unweighted mean over phases of F1 (the harmonic mean of precision and "
        "recall).",
        "brier": "the Brier score: the mean over visits of the summed squared differences "
        "between the predicted probabilities and the true phase's 0/1 vector (0 is perfect, 2 "
        "the worst; lower is better).",
        "ece": "expected calibration error: visits binned by their top probability into 10 "
        "equal-width bins; the visit-weighted mean over bins of the absolute difference between "
        "the bin's accuracy and its mean top probability (0 is perfectly calibrated).",
        "train_kappa": "kappa on each fold's training visits, the mean over folds, of the "
        "probabilities the fusion stage sees for them: for `metadata` (the forest) an inner "
        "out-of-fold estimate (each training visit predicted by a forest fit on the other "
        "training patients), for an image branch its network's own predictions on the visits "
        "it was trained on, for a fusion the fixed-weight fusion of its members' such "
        f"probabilities. {MISSING} on `all` rows.",
        "gap": "train_kappa minus kappa, only on rows without metadata, where train_kappa is "
        "in-sample (the image branch's own predictions on its training visits): how much better "
        "training visits are scored than held-out ones, so overfitting shows as a large gap. "
        f"{MISSING} on rows with metadata: there the forest's train_kappa is an inner "
        "out-of-fold estimate, so the gap is about 0 by construction and could not show "
        f"overfitting (`gap_mean` in the TSV keeps it); {MISSING} on `all` rows.",
        "folds_not_learned": "the number of folds (of all repeats) in which an image branch of "
        "the combination learned nothing from its images (its best epoch at or before the "
        "warm-up's end or the first, a training kappa at chance level, or one phase predicted "
        "for every training or validation visit; the image stage's metrics.json says which and "
        "why); 0 for metadata alone. In such a fold the fusion only reweighs its other members.",
        f"kappa_diff ({ci} CI)": "the combination's kappa minus the primary's on the visits "
        "both scored: the mean of the paired per-fold differences over repeats x folds, with "
        f"the {ci} interval of the run's test (corrected resampled variance, J - 1 degrees of "
        "freedom for J = folds x repeats values; Bouckaert and Frank 2004), not adjusted for "
        f"the family: it excludes 0 exactly when p_value < {alpha:g}. A `better` or `worse` "
        "verdict always has an interval on its side of 0; in a family of several contrasts an "
        "`inconclusive` one can have an interval that excludes 0 before Holm's adjustment.",
        "p_value": "the two-sided p-value of that test of the paired per-fold kappa "
        "differences, before adjustment.",
        "p_holm": "p_value after Holm's adjustment within its family (the primary family: each "
        "fusion holding the primary against it on the visits with every member, as "
        "results/analysis_plan.json fixed it before any model was trained), which bounds the "
        f"chance of any false verdict in the family at {alpha:g} (1 - the interval's "
        "confidence).",
        "verdict": f"`better` or `worse` (the sign of kappa_diff) when p_holm < {alpha:g}; "
        "otherwise `inconclusive`: this design cannot tell the difference from zero, which is "
        "not evidence that there is none.",
        "detectable_gain": "the true kappa difference this contrast's test would call with 80 % "
        f"power at {alpha:g} (before Holm's adjustment): (t(1 - alpha/2, J - 1) + t(0.80, "
        "J - 1)) x the corrected standard error of its per-fold differences. An inconclusive "
        "contrast observed smaller than it was not seeable at this design.",
    }


def labelled(table: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """``table`` with its combination names replaced by their short labels (``#``)."""
    return table.drop(columns="combination").assign(**{"#": table["combination"].map(labels)})


def spoken_list(names: list) -> str:
    """``a``, ``a and b``, ``a, b and c``: names as a sentence lists them."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def not_learned_sentence(combination: str, not_learned: int, folds: int) -> str:
    """What a contrast cannot say when the combination's image branches learned nothing in
    ``not_learned`` of its ``folds`` folds (empty when they always learned)."""
    if not not_learned:
        return ""
    images = [member for member in combination.split("+") if member != METADATA]
    subject = (
        f"{images[0]}'s branch"
        if len(images) == 1
        else f"An image branch ({', '.join(images[:-1])} or {images[-1]})"
    )
    return (
        f"{subject} learned nothing in {not_learned} of {folds} folds: this contrast does not "
        "measure what the images carry."
    )


def contrast_sentence(row, confidence: float, learning: tuple) -> str:
    """One plain sentence for one primary contrast (a row of the comparisons table): what the
    fusion changes, by how much, how sure the design is, on which visits; then, when
    ``learning`` (folds whose branches learned nothing, folds) says so, that the contrast does
    not measure the images (:func:`not_learned_sentence`)."""
    sentence = contrast_verdict(row, confidence)
    note = not_learned_sentence(row.combination, *learning)
    return f"{sentence} {note}" if note else sentence


def contrast_verdict(row, confidence: float) -> str:
    """:func:`contrast_sentence`'s sentence of the difference itself. A primary contrast is
    nested (the fusion holds the primary, :func:`fusion_dag.plan.holds`) and on the complete
    visits, so the sentence names what the fusion adds."""
    reference = row.versus.split("+")
    added = [m for m in row.combination.split("+") if m not in reference]
    subject = f"Adding {spoken_list(added)} to {row.versus}"
    d, low, high = row.kappa_diff_folds, row.kappa_diff_ci_low, row.kappa_diff_ci_high
    numbers = (
        f"({level(confidence)} CI {number(low, '{:+.2f}')} to {number(high, '{:+.2f}')}, "
        f"unadjusted; Holm p {p_text(row.p_holm)})"
    )
    visits = f"on the {row.n_rows} visits with every member"
    if row.verdict == "better":
        return f"{subject} improves kappa by {number(abs(d), '{:.2f}')} {numbers} {visits}."
    if row.verdict == "worse":
        return f"{subject} lowers kappa by {number(abs(d), '{:.2f}')} {numbers} {visits}."
    return (
        f"{subject}: inconclusive: this design detects gains of about "
        f"{number(row.detectable_gain, '{:+.2f}')}; observed {number(d, '{:+.2f}')} {numbers} "
        f"{visits}."
    )


def primary_contrasts(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The comparisons of the pre-specified question: each fusion holding the primary against
    it, on the visits with every member (the analysis plan's primary family)."""
    return comparisons[comparisons["family"] == PRIMARY]


def fold_learning(headline: pd.DataFrame) -> dict:
    """Combination -> (``folds_not_learned``, its folds over all repeats), from the headline."""
    return {
        row.combination: (int(row.folds_not_learned), int(row.n_folds * row.n_repeats))
        for row in headline.itertuples(index=False)
    }


def contrast_sentences(
    comparisons: pd.DataFrame, headline: pd.DataFrame, primary: str, confidence: float
) -> list:
    """:func:`contrast_sentence` of every primary contrast, or why there is none."""
    rows = primary_contrasts(comparisons)
    if rows.empty:
        return [f"No primary contrast: no fusion run holds {primary}."]
    learning = fold_learning(headline)
    return [
        contrast_sentence(row, confidence, learning[row.combination])
        for row in rows.itertuples(index=False)
    ]


def markdown_list(items: list) -> list:
    """Markdown list items, each wrapped at LINE_WIDTH with its continuation indented."""
    return [
        textwrap.fill(item, LINE_WIDTH, initial_indent="- ", subsequent_indent="  ")
        for item in items
    ]


def plan_sentence(plan: dict) -> str:
    """What the report says of the analysis plan (the ``results/analysis_plan.json`` record,
    :func:`fusion_dag.plan.plan_record`): where the primary family was fixed, and which
    contrasts are secondary."""
    fixed = plan["plan"]
    return (
        f"Pre-specified in results/analysis_plan.json (written {plan['written']}, before any "
        "model was trained): the primary family is each fusion holding "
        f"{fixed['primary_family']['primary']} against it on the visits with every member, "
        f"Holm-adjusted as one family at alpha {fixed['alpha']:g}. The same contrasts on every "
        "visit (scored as predict scores a visit lacking an image) and each fusion against its "
        "other members are secondary families: comparisons.md."
    )


def results_markdown(
    headline: pd.DataFrame, comparisons: pd.DataFrame, evaluation: dict, plan: dict
) -> str:
    """``results/fusion_results.md``, for a reader new to the project: a notice when the
    analysis plan (``plan``, the record of results/analysis_plan.json) replaced an earlier one,
    one sentence per primary contrast and where its family was fixed, then the tables, then
    what every column shown means.

    Combinations are named by short labels in the tables (and in full in a table of their
    own, beside how many folds their image branches learned nothing in), so the tables stay
    within LINE_WIDTH with the demo's four-input names; the TSVs keep every column.
    """
    primary, confidence = evaluation["primary"], evaluation["confidence"]
    names = list(dict.fromkeys(headline["combination"]))
    labels = {name: f"C{index}" for index, name in enumerate(names, start=1)}
    not_learned = headline.drop_duplicates("combination").set_index("combination")
    key = pd.DataFrame(
        {
            "#": list(labels.values()),
            "combination": names,
            "folds_not_learned": not_learned.loc[names, "folds_not_learned"].to_numpy(),
        }
    )
    ci = level(confidence)
    tables = [("Combinations", key)]
    contrasts = primary_contrasts(comparisons)
    if len(contrasts):
        table = labelled(contrasts, labels)[["#", "rows", "n_rows"]]
        table[f"kappa_diff ({ci} CI)"] = interval_cells(contrasts, "kappa_diff", True)
        table[["p_value", "p_holm", "verdict"]] = contrasts[["p_value", "p_holm", "verdict"]]
        tables.append((f"Primary contrasts: each fusion against {primary}", table))
    rows = labelled(headline, labels)
    agreement = rows[["#", "rows", "n_rows"]].copy()
    agreement[f"kappa ({ci} CI)"] = interval_cells(headline, "kappa")
    agreement["kappa_std"] = headline["kappa_std"]
    agreement[f"qwk ({ci} CI)"] = interval_cells(headline, "qwk")
    tables.append(("Headline: agreement with the true phase", agreement))
    other = rows[["#", "rows"]].copy()
    for column, metric in SHORT_HEADERS.items():
        other[column] = headline[f"{metric}_mean"]
    other["gap"] = shown_gap(headline)
    tables.append(("Headline: ranking, calibration and overfitting", other))
    lines = [f"# Does each fusion add to {primary}?", ""]
    notice = plan_notice(plan)
    if notice:
        lines += [textwrap.fill(f"**{notice}**", LINE_WIDTH), ""]
    lines += [*markdown_list(contrast_sentences(comparisons, headline, primary, confidence)), ""]
    lines += [textwrap.fill(plan_sentence(plan), LINE_WIDTH), ""]
    for title, table in tables:
        lines += [f"## {title}", "", readable_table(table), ""]
    definitions = legend(confidence)
    shown = {column for _, table in tables for column in table.columns}
    lines += ["## Legend", ""]
    lines += markdown_list(
        [
            f"`{column}`: {definitions[column]}"
            for column in sorted(shown, key=list(definitions).index)
        ]
    )
    lines += [
        "",
        textwrap.fill(
            "Every column and every comparison: `results/fusion_results.tsv` and "
            "`results/comparisons.tsv`; how each number is computed: docs/evaluation.md.",
            LINE_WIDTH,
        ),
        "",
    ]
    return "\n".join(lines)


def comparisons_markdown(comparisons: pd.DataFrame, confidence: float) -> str:
    """``results/comparisons.md``: every comparison, readable columns."""
    return readable_table(readable_comparisons(comparisons, confidence)) + "\n"


# A headline metric's point and interval columns, as suffixes of its name.
PARTS = ("mean", "ci_low", "ci_high")


def temporal_sentences(
    temporal: pd.DataFrame | None, comparisons: pd.DataFrame, primary: str, confidence: float
) -> list:
    """One plain sentence per combination of the primary family (``primary`` and each fusion
    contrasted with it) that the temporal table (``results/temporal.tsv``) holds: its kappa on
    the later patients against its cross-validated kappa, both with intervals, and the
    difference; none without the table (``None``: no ``evaluation.temporal``)."""
    if temporal is None:
        return []
    family = [primary, *primary_contrasts(comparisons)["combination"]]
    rows = temporal.set_index("combination")
    sentences = []
    for combination in dict.fromkeys(family):
        if combination not in rows.index:
            continue
        row = rows.loc[combination]
        later = with_interval(row["kappa"], row["kappa_ci_low"], row["kappa_ci_high"])
        cv = with_interval(row["cv_kappa"], row["cv_kappa_ci_low"], row["cv_kappa_ci_high"])
        sentences.append(
            f"Over time: {combination}, fit on the {int(row['n_train_patients'])} earlier "
            f"patients, reached kappa {later} on the {int(row['n_patients'])} later patients "
            f"({int(row['n_rows'])} visits) against {cv} cross-validated, a difference of "
            f"{number(row['kappa_diff'], '{:+.3f}')} ({level(confidence)} intervals; "
            "results/temporal.tsv)."
        )
    return sentences


def front_page(
    headline: pd.DataFrame,
    comparisons: pd.DataFrame,
    run: dict,
    confidence,
    plan: dict,
    temporal: pd.DataFrame | None = None,
) -> str:
    """The HTML report's front page (reStructuredText): the answer in one sentence per primary
    contrast (after a notice when the analysis plan ``plan`` replaced an earlier one) and, with
    the temporal table ``temporal``, one per primary combination on the later patients
    (:func:`temporal_sentences`), what was run, the contrasts and the headline, then what each
    term means, so a reader of the report sees the answer before any click.

    Lists, not tables: the report sets the page's text in a column beside the workflow's
    graph, where a table of the headline's width runs under the graph. ``run`` holds
    ``classes``, ``folds``, ``repeats``, ``primary``, ``modalities`` and the fusion
    ``weights`` description; ``confidence`` is ``evaluation.confidence``. Snakemake renders
    the page with Jinja2 first: nothing here may contain a Jinja delimiter.
    """
    primary, ci = run["primary"], level(confidence)
    images = ", ".join(run["modalities"]) or "none"
    sentences = contrast_sentences(comparisons, headline, primary, confidence)
    sentences += temporal_sentences(temporal, comparisons, primary, confidence)
    notice = plan_notice(plan)
    lines = [f"**{notice}**", ""] if notice else []
    lines += [f"- {sentence}" for sentence in sentences]
    lines += ["", *forest_plot(primary_contrasts(comparisons))]
    lines += [
        "",
        f"fusion-dag classifies wound healing phases ({' < '.join(run['classes'])}) by fusing a "
        f"random forest on the clinical metadata with an image branch per modality ({images}). "
        "Each image branch is trained alone, its checkpoint loaded by layer name into the "
        f"fusion job, frozen and verified, and fused with fixed weights ({run['weights']}); the "
        "forest's training-row probabilities are out-of-fold. Every number below is out-of-fold, "
        f"on {run['folds']} patient-grouped folds x {run['repeats']} repeats (each repeat its own "
        "partition and model seeds).",
        "",
    ]
    contrasts = primary_contrasts(comparisons)
    if len(contrasts):
        title = f"Does each fusion add to {primary}?"
        lines += [title, "-" * len(title), ""]
        for row in contrasts.itertuples(index=False):
            interval_text = with_interval(
                row.kappa_diff_folds, row.kappa_diff_ci_low, row.kappa_diff_ci_high, signed=True
            )
            lines.append(
                f"- **{row.combination}** against {row.versus}, {row.n_rows} visits (the visits "
                "with every member): "
                f"kappa {interval_text}, p {p_text(row.p_value)}, Holm p {p_text(row.p_holm)}: "
                f"**{row.verdict}** (detectable gain {number(row.detectable_gain, '{:+.2f}')})"
            )
        lines += [
            "",
            plan_sentence(plan),
            "",
            "Each contrast: the mean paired "
            f"per-fold kappa difference with the {ci} interval of the corrected resampled "
            "t-test (not adjusted for the family), its p-value Holm-adjusted within the family. "
            f"Better or worse when the Holm p is below {1 - confidence:g}, otherwise "
            "inconclusive, which is not evidence of no difference; each contrast's detectable "
            "gain is the difference its test would call with 80 % power.",
            "",
        ]
    lines += ["Headline", "--------", ""]
    for row, gap in zip(headline.itertuples(index=False), shown_gap(headline), strict=True):
        visits = f"all {row.n_rows} visits" if row.rows == ALL else f"{row.n_rows} visits"
        metrics = ", ".join(
            f"{name} {with_interval(*(getattr(row, f'{metric}_{part}') for part in PARTS))}"
            for metric, name in (("kappa", "kappa"), ("qwk", "QWK"), ("auc", "AUC"))
        )
        extra = (
            f"balanced accuracy {number(row.balanced_accuracy_mean)}, ECE {number(row.ece_mean)}"
        )
        if not pd.isna(gap):
            extra += f", train - validation gap {number(gap)}"
        if row.folds_not_learned:
            extra += (
                f", an image branch learned nothing in {row.folds_not_learned} of "
                f"{row.n_folds * row.n_repeats} folds"
            )
        lines.append(f"- **{row.combination}** ({visits}): {metrics}; {extra}")
    lines += [
        "",
        f"The mean over repeats of each metric on the pooled out-of-fold predictions, with {ci} "
        "intervals from the spread of the refitted fold models (corrected resampled variance), "
        "which include training variability. Every column and comparison: "
        "fusion_results.tsv and comparisons.tsv under Results; how each number is computed: "
        "docs/evaluation.md.",
        "",
        "What the terms mean",
        "-------------------",
        "",
    ]
    definitions = legend(confidence)
    terms = {
        "kappa": f"kappa ({ci} CI)",
        "QWK": f"qwk ({ci} CI)",
        "AUC": "auc",
        "balanced accuracy": "balanced_acc",
        "ECE": "ece",
        "train - validation gap": "gap",
        "train kappa": "train_kappa",
        "learned nothing": "folds_not_learned",
        "p": "p_value",
        "Holm p": "p_holm",
        "better, worse, inconclusive": "verdict",
        "detectable gain": "detectable_gain",
    }
    lines += [f"- **{term}**: {rst_text(definitions[column])}" for term, column in terms.items()]
    lines += ["", *tripod_checklist(), ""]
    return "\n".join(lines)


# The forest plot in pixels: the plotting area's width, a label character's width, a row's
# height.
FOREST_AREA, FOREST_CHARACTER, FOREST_ROW = 400, 7, 30


def forest_plot(contrasts: pd.DataFrame) -> list:
    """The front page's forest plot of the primary contrasts (reStructuredText lines: an inline
    SVG in a raw HTML block, so the page needs no image file and its job no matplotlib): each
    contrast's kappa difference with its interval, zero (solid) and its detectable gain
    (dashed tick) marked. Empty without a primary contrast."""
    rows = contrasts[np.isfinite(contrasts["kappa_diff_folds"].astype(float))]
    if rows.empty:
        return []
    values = [0.0]
    for column in ("kappa_diff_ci_low", "kappa_diff_ci_high", "detectable_gain"):
        values += [v for v in rows[column].astype(float) if np.isfinite(v)]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    low, high = low - 0.08 * span, high + 0.08 * span
    labels = [f"{row.combination} ({row.verdict})" for row in rows.itertuples(index=False)]
    left = FOREST_CHARACTER * max(len(label) for label in labels) + 20
    width, total = FOREST_AREA, left + FOREST_AREA + 20

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * width

    height = FOREST_ROW * (len(rows) + 1) + 10
    bottom = height - FOREST_ROW
    shapes = [
        f'<line x1="{x(0):.1f}" y1="5" x2="{x(0):.1f}" y2="{bottom}" stroke="black"/>',
        f'<text x="{x(0):.1f}" y="{bottom + 18}" text-anchor="middle">0</text>',
        f'<text x="{left + width / 2:.1f}" y="{height - 2}" text-anchor="middle">'
        "kappa difference (dashed: detectable gain)</text>",
    ]
    for index, (row, label) in enumerate(zip(rows.itertuples(index=False), labels, strict=True)):
        y = FOREST_ROW * (index + 0.5) + 5
        ends = (row.kappa_diff_ci_low, row.kappa_diff_ci_high)
        if all(np.isfinite(ends)):
            shapes.append(
                f'<line x1="{x(ends[0]):.1f}" y1="{y:.1f}" x2="{x(ends[1]):.1f}" '
                f'y2="{y:.1f}" stroke="#08519c" stroke-width="2"/>'
            )
        if np.isfinite(row.detectable_gain):
            gain = x(row.detectable_gain)
            shapes.append(
                f'<line x1="{gain:.1f}" y1="{y - 9:.1f}" x2="{gain:.1f}" y2="{y + 9:.1f}" '
                'stroke="#cb181d" stroke-dasharray="3,2"/>'
            )
        shapes += [
            f'<circle cx="{x(row.kappa_diff_folds):.1f}" cy="{y:.1f}" r="5" fill="#08519c"/>',
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>',
        ]
    svg = [
        # Scaled to the page's text column (the report draws the workflow beside it): at its
        # own width the plot pushed the text under the workflow in a browser.
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {total} {height}" '
        f'width="100%" style="max-width: {total}px" font-family="sans-serif" font-size="12">',
        *[f"  {shape}" for shape in shapes],
        "</svg>",
    ]
    return [".. raw:: html", "", *[f"   {line}" for line in svg]]


# TRIPOD+AI items (Collins et al., BMJ 2024;385:e078378) the run answers, each with the report
# entries that answer it (result file names link to the report's entries).
TRIPOD_ANSWERED = (
    ("12c", "internal validation: patient-grouped folds, repeated", ["fusion_results.tsv"]),
    ("12e", "performance measures: discrimination, calibration, clinical utility", []),
    ("20a", "flow of participants, by class", ["participants.tsv", "flow.png"]),
    ("20b", "characteristics by class, with missing data", ["table1.tsv"]),
    ("21", "participants and outcome events in each analysis (every fold)", ["participants.tsv"]),
    (
        "23a",
        "performance with confidence intervals, including subgroups",
        ["fusion_results.tsv", "calibration.tsv", "decision_curves.tsv", "subgroups.tsv"],
    ),
)
# The items only the authors can answer.
TRIPOD_LEFT = (
    "title, abstract and introduction (1-4); data sources, dates, setting and eligibility "
    "(5-6); the outcome's definition and who assessed it (8); the predictors' definitions (9); "
    "the sample size's rationale (10); fairness and health inequalities (3c, 14); ethics, "
    "funding, conflicts and data and code availability (17-19); the discussion, limitations "
    "and intended use (25-27)"
)


def tripod_checklist() -> list:
    """The front page's reporting checklist: the TRIPOD+AI items the run answers, each linked
    to the report entries that answer it (Snakemake's report links a result by its file name),
    and the items left to the authors."""
    title = "Reporting checklist (TRIPOD+AI)"
    lines = [title, "-" * len(title), "", "Items this run answers:", ""]
    for item, topic, files in TRIPOD_ANSWERED:
        where = ", ".join(f"`{name}`_" for name in files) or "docs/evaluation.md"
        lines.append(f"- **{item}** {topic}: {where}")
    lines += ["", f"Left to the authors: {TRIPOD_LEFT}."]
    return lines


def rst_text(markdown: str) -> str:
    """A legend entry's Markdown code spans as reStructuredText literals."""
    return re.sub(r"`([^`]+)`", r"``\1``", markdown)
