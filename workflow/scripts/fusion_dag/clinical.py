"""What a clinical journal asks of a prediction model's report (TRIPOD+AI: Collins et al., BMJ
2024;385:e078378), from the run's own tables: the flow of participants, Table 1, calibration
slopes and intercepts, decision curves and performance in subgroups.

Why a module of its own: every number here is read off what the run already holds (the
prepared tables, folds.tsv and the pooled out-of-fold predictions); nothing is retrained, and
the headline's statistics (:mod:`fusion_dag.inference`) are reused, not redefined. The figures
of these tables are :mod:`fusion_dag.figures`'.
"""

import warnings

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL
from fusion_dag.inference import (
    bootstrap_metrics,
    corrected_interval,
    fold_test_share,
    interval,
)

# Probabilities are clipped to [CLIP, 1 - CLIP] before the logit: a forest whose trees all
# agree gives exactly 0 or 1, whose logit is infinite; clipped, it counts as a confident
# prediction (logit +-6.9) and cannot decide the slope alone.
CLIP = 1e-3
# A subgroup level with fewer visits or patients than these is flagged (never dropped): its
# intervals are wide and its point estimates unstable.
SMALL_VISITS, SMALL_PATIENTS = 30, 10
# A numeric subgroup column with more distinct values than this is cut into quartile bands.
BANDS = 4
# The thresholds of the decision curves: every probability from 1 % to 99 %.
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def logistic_recalibration(outcome, probability) -> tuple[float, float]:
    """(slope, intercept) of the logistic recalibration of one binary outcome.

    The slope is the coefficient of logit(p) in ``logit P(y) = a + b logit(p)``; the intercept
    (calibration-in-the-large) is ``a`` in ``logit P(y) = a + logit(p)``, the slope fixed at 1
    as an offset (Van Calster et al., J Clin Epidemiol 74:167, 2016). A well calibrated model
    has slope 1 and intercept 0; a slope below 1 means predictions too extreme (overfitting),
    an intercept below 0 predictions too high on average. Unpenalised maximum likelihood
    (statsmodels' GLM); NaN when the outcome has one value or the fit fails (separation).
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError

    y = np.asarray(outcome, dtype=float)
    p = np.clip(np.asarray(probability, dtype=float), CLIP, 1.0 - CLIP)
    if len(y) < 2 or y.min() == y.max():
        return float("nan"), float("nan")
    logit = np.log(p / (1.0 - p))
    family = sm.families.Binomial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slope_fit = sm.GLM(y, sm.add_constant(logit, has_constant="add"), family).fit()
            offset_fit = sm.GLM(y, np.ones((len(y), 1)), family, offset=logit).fit()
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError):
            return float("nan"), float("nan")
    if not (slope_fit.converged and offset_fit.converged):
        return float("nan"), float("nan")
    return float(slope_fit.params[1]), float(offset_fit.params[0])


def class_recalibration(oof: pd.DataFrame, classes: list) -> dict:
    """Class -> (slope, intercept) of :func:`logistic_recalibration`, one-vs-rest on ``oof``'s
    rows (the class against the others, its own probability as the prediction)."""
    labels = oof[LABEL].astype(str).to_numpy()
    return {
        name: logistic_recalibration(labels == str(name), oof[f"prob_{name}"]) for name in classes
    }


def pooled_recalibration(oof: pd.DataFrame, classes: list) -> dict:
    """Class -> (slope, intercept): the mean over repeats of each repeat's pooled out-of-fold
    recalibration, as the headline's metrics are pooled."""
    per_repeat = [class_recalibration(rows, classes) for _, rows in oof.groupby("repeat")]
    return {
        name: tuple(float(np.nanmean([r[name][i] for r in per_repeat])) for i in (0, 1))
        for name in classes
    }


def calibration_rows(combination: str, visits: str, oof: pd.DataFrame, classes: list, confidence):
    """calibration.tsv's rows of one scored table: per class the pooled slope and intercept
    (:func:`pooled_recalibration`) with the run's interval rule
    (:func:`fusion_dag.inference.corrected_interval` of the per-fold values, each fold's
    validation rows refitted alone; folds where a fit is undefined are left out)."""
    pooled = pooled_recalibration(oof, classes)
    per_fold = [class_recalibration(rows, classes) for _, rows in oof.groupby(["repeat", "fold"])]
    share = fold_test_share(oof)
    first = oof[oof["repeat"] == oof["repeat"].min()]
    rows = []
    for name in classes:
        row = {
            "combination": combination,
            "rows": visits,
            "class": name,
            "n_rows": int(oof[ID].nunique()),
            "events": int((first[LABEL].astype(str) == str(name)).sum()),
        }
        for index, part in enumerate(("slope", "intercept")):
            values = np.array([fold[name][index] for fold in per_fold])
            low, high = corrected_interval(pooled[name][index], values, share, confidence)
            row[part] = pooled[name][index]
            row[f"{part}_ci_low"], row[f"{part}_ci_high"] = low, high
        rows.append(row)
    return rows


CALIBRATION_COLUMNS = [
    "combination",
    "rows",
    "class",
    "n_rows",
    "events",
    "slope",
    "slope_ci_low",
    "slope_ci_high",
    "intercept",
    "intercept_ci_low",
    "intercept_ci_high",
]


def calibration_table(scored: list, classes: list, confidence: float) -> pd.DataFrame:
    """``results/report/calibration.tsv``: :func:`calibration_rows` of every scored table
    (``scored``: (combination, rows, out-of-fold table), as the headline's rows)."""
    rows = [
        row
        for combination, visits, oof in scored
        for row in calibration_rows(combination, visits, oof, classes, confidence)
    ]
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)


def with_calibration(headline: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """``headline`` with ``calibration_slope_{class}`` and ``calibration_intercept_{class}``
    from :func:`calibration_table`, matched on combination and rows (its other columns kept)."""
    wide = calibration.pivot(index=["combination", "rows"], columns="class")
    columns = {}
    for part in ("slope", "intercept"):
        for name in calibration["class"].drop_duplicates():
            columns[f"calibration_{part}_{name}"] = wide[(part, name)]
    extra = pd.DataFrame(columns).reset_index()
    return headline.merge(extra, on=["combination", "rows"], how="left", validate="1:1")


PARTICIPANT_COLUMNS = [
    "step",
    "scope",
    "repeat",
    "fold",
    "label",
    "visits",
    "patients",
    "images",
    "reason",
]


def counted(step: str, scope: str, visits: pd.DataFrame, classes: list, **fields) -> list:
    """participants.tsv's rows of one step: visits and patients of ``visits`` (``id``,
    ``group``, ``label``; ``images`` when it has that column) for every class, then ``all``."""
    rows = []
    for name in [*classes, "all"]:
        part = visits if name == "all" else visits[visits[LABEL].astype(str) == str(name)]
        row = {
            "step": step,
            "scope": scope,
            "label": name,
            "visits": int(part[ID].nunique()),
            "patients": int(part[GROUP].nunique()),
            "images": int(part["images"].sum()) if "images" in part else np.nan,
        }
        rows.append(row | fields)
    return rows


def participants_table(
    samples: pd.DataFrame,
    views: pd.DataFrame,
    view_counts: pd.DataFrame,
    folds: pd.DataFrame,
    oofs: dict,
    classes: list,
) -> pd.DataFrame:
    """``results/report/participants.tsv``: the flow of visits and patients, by class.

    Steps: ``read`` (the prepared samples table: prepare stops on a bad row rather than
    dropping it, so every row read is kept); per modality (``scope``) the visits ``with_images``
    and those ``without_images`` (left out of that modality's branch, ``missing_images: drop``),
    and the image-table rows that name no visit (``images``: rows, ``view_counts.tsv``'s
    ``rows_without_visit``); per combination the visits ``scored`` (with every member) and
    those ``not_scored``; then each repeat and fold's ``training`` and ``validation`` visits, for
    the partition (``scope`` ``folds``: folds.tsv) and for each combination (its out-of-fold
    table: the fold's validation visits it scored, and the visits it scored in the other
    folds as training).
    """
    base = samples[[ID, GROUP, LABEL]].astype({ID: str, GROUP: str})
    rows = counted("read", "samples", base, classes, reason="")
    per_visit = views.groupby(views[ID].astype(str)).size() if len(views) else pd.Series()
    for modality in view_counts["modality"]:
        mine = views[views["modality"] == modality]
        images = mine.groupby(mine[ID].astype(str)).size() if len(mine) else per_visit.iloc[:0]
        has = base.assign(images=base[ID].map(images).fillna(0).astype(int))
        rows += counted("with_images", modality, has[has["images"] > 0], classes, reason="")
        rows += counted(
            "without_images",
            modality,
            has[has["images"] == 0],
            classes,
            reason="no image of this modality (missing_images: drop)",
        )
        orphans = view_counts.loc[view_counts["modality"] == modality, "rows_without_visit"]
        rows.append(
            {
                "step": "image_rows_without_visit",
                "scope": modality,
                "label": "all",
                "visits": 0,
                "patients": 0,
                "images": int(orphans.iloc[0]),
                "reason": "image-table rows whose keys match no visit of the samples table",
            }
        )
    for name, oof in oofs.items():
        scored = set(oof[ID].astype(str))
        inside = base[ID].isin(scored)
        rows += counted("scored", name, base[inside], classes, reason="")
        rows += counted("not_scored", name, base[~inside], classes, reason="lacks a member's image")
    tables = {"folds": folds, **oofs}
    for scope, table in tables.items():
        table = table.astype({ID: str, GROUP: str})
        for (repeat, fold), validation in table.groupby(["repeat", "fold"], sort=True):
            same = table[(table["repeat"] == repeat) & (table["fold"] != fold)]
            for step, part in (("training", same), ("validation", validation)):
                rows += counted(step, scope, part, classes, repeat=repeat, fold=fold, reason="")
    frame = pd.DataFrame(rows, columns=PARTICIPANT_COLUMNS)
    return frame.astype({"repeat": "Int64", "fold": "Int64", "images": "Int64"})


def table_one(samples: pd.DataFrame, classes: list) -> pd.DataFrame:
    """``results/report/table1.tsv``: every metadata column of the prepared samples table by
    class (tableone's TableOne): numbers as median [Q1,Q3] (not assumed normal), text columns
    as n (%) per level of the filled cells, with each column's missing count; then the patients
    per class and the label's shares (visits: a patient with several visits counts in each).

    Columns: ``variable``, ``level``, ``missing``, ``overall``, then one per class.
    """
    from tableone import TableOne

    features = [c for c in samples.columns if c not in (ID, GROUP, LABEL)]
    data = samples[features].copy()
    data[LABEL] = samples[LABEL].astype(str)
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(data[c])]
    categorical = [c for c in features if c not in numeric]
    for column in categorical:
        data[column] = data[column].astype("object")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = TableOne(
            data,
            columns=features,
            categorical=categorical,
            nonnormal=numeric,
            groupby=LABEL,
            missing=True,
            include_null=False,
            overall=True,
            pval=False,
        ).tableone
    table.columns = [column[-1] for column in table.columns]
    table = table.reset_index()
    table.columns = ["variable", "level", *table.columns[2:]]
    class_names = [str(c) for c in classes]
    table = table.rename(columns={"Missing": "missing", "Overall": "overall"})
    table = table[["variable", "level", "missing", "overall", *class_names]]
    counts = samples[LABEL].astype(str).value_counts().reindex(class_names, fill_value=0)
    patients = samples.groupby(samples[LABEL].astype(str))[GROUP].nunique()
    total = int(counts.sum())
    extra = [
        {
            "variable": "patients",
            "level": "",
            "missing": "",
            "overall": str(samples[GROUP].nunique()),
            **{c: str(int(patients.get(c, 0))) for c in class_names},
        },
        {
            "variable": "label, n (%)",
            "level": "",
            "missing": "",
            "overall": f"{total} (100.0)",
            **{c: f"{int(counts[c])} ({100.0 * counts[c] / total:.1f})" for c in class_names},
        },
    ]
    table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    return table.fillna("").astype(str).apply(lambda column: column.str.strip())


def shown_combinations(combinations, primary: str) -> list:
    """The combinations the decision curves and subgroups show: the primary and every fusion
    (several members), in run order; every combination when the primary is not run."""
    names = list(combinations)
    if primary not in names:
        return names
    return [n for n in names if n == primary or len(combinations[n]) > 1]


DECISION_COLUMNS = [
    "decision",
    "combination",
    "strategy",
    "threshold",
    "n_rows",
    "prevalence",
    "net_benefit",
]


def decision_curves(oofs: dict, decisions: dict | None, shown: list) -> pd.DataFrame:
    """``results/report/decision_curves.tsv``: net benefit against the threshold probability
    (Vickers and Elkin, Med Decis Making 26:565, 2006; dcurves' ``dca``) of each named decision
    (``evaluation.decisions``: name -> the classes counted positive; its probability is their
    summed probabilities) for each ``shown`` combination on its out-of-fold visits, beside
    ``treat_all`` and ``treat_none`` on the same visits.

    Net benefit = TP/n - FP/n x t / (1 - t): treating everyone gives
    prevalence - (1 - prevalence) x t / (1 - t), treating no one 0. The repeats' rows are
    pooled: each repeat scores the same visits, so this is the mean over repeats.
    """
    from dcurves import dca

    rows = []
    for decision, positive in (decisions or {}).items():
        wanted = [str(c) for c in positive]
        for name in shown:
            oof = oofs[name]
            data = pd.DataFrame(
                {
                    "outcome": oof[LABEL].astype(str).isin(wanted).astype(int).to_numpy(),
                    "model": oof[[f"prob_{c}" for c in positive]].sum(axis=1).to_numpy(),
                }
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve = dca(
                    data=data, outcome="outcome", modelnames=["model"], thresholds=THRESHOLDS
                )
            strategy = curve["model"].map(
                {"model": "model", "all": "treat_all", "none": "treat_none"}
            )
            rows.append(
                pd.DataFrame(
                    {
                        "decision": decision,
                        "combination": name,
                        "strategy": strategy.to_numpy(),
                        "threshold": curve["threshold"].round(2).to_numpy(),
                        "n_rows": int(oof[ID].nunique()),
                        "prevalence": curve["prevalence"].to_numpy(),
                        "net_benefit": curve["net_benefit"].to_numpy(),
                    }
                )
            )
    if not rows:
        return pd.DataFrame(columns=DECISION_COLUMNS)
    return pd.concat(rows, ignore_index=True)[DECISION_COLUMNS]


def subgroup_levels(values: pd.Series) -> pd.Series:
    """Each visit's level of one samples-table column, as text: a numeric column with more than
    :data:`BANDS` distinct values in quartile bands (``pandas.qcut``; ties can merge bands),
    each named ``[lowest, highest]`` of its visits' values, any other column by value; an empty
    cell is ``missing``, a level of its own."""
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > BANDS:
        bands = pd.qcut(values, BANDS, duplicates="drop")
        edges = values.groupby(bands, observed=True).agg(["min", "max"])
        names = {band: f"[{low:g}, {high:g}]" for band, (low, high) in edges.iterrows()}
        text = bands.map(names).astype(object)
    else:
        text = values.map(lambda v: f"{v:g}" if isinstance(v, float) else str(v)).astype(object)
    return text.where(values.notna(), "missing")


SUBGROUP_COLUMNS = [
    "combination",
    "column",
    "level",
    "n_visits",
    "n_patients",
    "small",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "ece",
    "ece_ci_low",
    "ece_ci_high",
]


def subgroup_table(
    oofs: dict,
    samples: pd.DataFrame,
    columns: list,
    shown: list,
    classes: list,
    evaluation: dict,
    seed: int,
) -> pd.DataFrame:
    """``results/report/subgroups.tsv``: kappa, AUC and ECE (calibration) of each ``shown``
    combination on the visits of each level (:func:`subgroup_levels`) of each column, with
    patient-bootstrap intervals (:func:`fusion_dag.inference.bootstrap_metrics`, the
    headline's ``kappa_boot_``: a level's patients resampled, the fitted models held fixed; a
    level's visits come from every fold, so the corrected per-fold rule has no per-level
    folds to use). ``small``: fewer than 30 visits or 10 patients; such a level is shown,
    never dropped.

    Why not fairlearn's MetricFrame: its intervals (``n_boot``) resample rows, which splits a
    patient's visits between draws and makes the intervals too narrow; the levels here are a
    pandas group-by and each level's metrics the headline's own.
    """
    levels = samples.set_index(samples[ID].astype(str))
    rows = []
    for name in shown:
        oof = oofs[name].assign(**{ID: oofs[name][ID].astype(str)})
        for column in columns:
            level_of = subgroup_levels(levels[column])
            assigned = oof[ID].map(level_of)
            for level in pd.unique(level_of.sort_values()):
                part = oof[assigned == level]
                row = {
                    "combination": name,
                    "column": column,
                    "level": level,
                    "n_visits": int(part[ID].nunique()),
                    "n_patients": int(part[GROUP].nunique()),
                }
                row["small"] = row["n_visits"] < SMALL_VISITS or row["n_patients"] < SMALL_PATIENTS
                if len(part):
                    # A small level can leave a metric undefined (a class absent): NaN, quietly.
                    with np.errstate(all="ignore"), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        estimates = bootstrap_metrics(part, classes, evaluation["bootstrap"], seed)
                        for metric in ("kappa", "auc", "ece"):
                            point, samples_of = estimates[metric]
                            row[metric] = point
                            low, high = interval(samples_of, evaluation["confidence"])
                            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
                rows.append(row)
    return pd.DataFrame(rows, columns=SUBGROUP_COLUMNS)


def check_subgroup_columns(samples: pd.DataFrame, columns: list, source) -> None:
    """Every ``evaluation.subgroups`` column is a metadata column of the prepared samples table
    (``source``), so a typo stops the report job with the names it can use."""
    missing = [c for c in columns if c not in samples.columns or c in (ID, GROUP, LABEL)]
    if missing:
        known = [c for c in samples.columns if c not in (ID, GROUP, LABEL)]
        raise ValueError(
            f"Invalid config key 'evaluation.subgroups': {missing} are not metadata columns of "
            f"{source}; use any of {known}"
        )
