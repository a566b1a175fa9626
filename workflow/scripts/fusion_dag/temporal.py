"""Temporal validation: the models fit on the earlier patients, scored on the later ones.

Why: cross-validation shuffles patients, so it estimates how the models do on new patients
drawn from the same population at the same time. A clinic's next patients come later, and a
shift over time (new staff, a new camera, a changed referral pattern) shows only when the
models are fit on the earlier patients and scored on the later ones. In the original study the
forest's cross-validated kappa was 0.298 and 0.187 on the later half of patients.

How: ``evaluation.temporal: {column, test}`` orders the patients by each one's first value of
``column`` (a date or a number; without a column, by each patient's first row in the table),
and the last ``test`` share of patients is held out. The split is one partition more, repeat 0
fold 1 (``results/folds/repeat0.tsv``: the later patients fold 1, the earlier fold 2; repeat 0
is outside the cross-validation, as the final models' fold 0 is), so the stages that train
every fold train on the earlier patients and score the later ones under the same contract
(each image branch alone, checkpointed, loaded and frozen in the fusion) with the seed of the
final models. Patients never straddle the split: the unit is the patient, and patients tied
at the cut go to the same side (the later one).
"""

import math

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError, prob_columns
from fusion_dag.tables import describe_rows, read_table

# The partition outside the cross-validation that holds the later patients out.
REPEAT, LATER, EARLIER = 0, 1, 2
# The share of patients held out when evaluation.temporal gives none.
TEST_SHARE = 0.3
SIDES = {LATER: "later", EARLIER: "earlier"}


def order_values(values: pd.Series, column: str | None, source) -> pd.Series:
    """The ordering value of each row: the row's position without a ``column``; else the
    column's numbers, or its dates (ISO 8601, e.g. ``2021-03-04``). Text that is neither is an
    error naming the column and rows; empty cells are missing."""
    if column is None:
        return pd.Series(np.arange(len(values), dtype=float), index=values.index)
    filled = values.notna() & (values.astype(str).str.strip() != "")
    text = values.where(filled).astype(str).str.strip()
    numbers = pd.to_numeric(text.where(filled), errors="coerce")
    if numbers[filled].notna().all():
        return numbers.astype(float)
    dates = pd.to_datetime(text.where(filled), errors="coerce", format="ISO8601")
    if dates[filled].notna().all():
        return dates
    bad = filled & numbers.isna() & dates.isna()
    rows = [str(i + 1) for i in values.index[bad]]
    raise InputError(
        f"samples table {source}: evaluation.temporal column '{column}' is neither a number "
        f"nor an ISO date (YYYY-MM-DD) in data rows {describe_rows(rows)}"
    )


def patient_order(groups: pd.Series, order: pd.Series, column: str | None, source) -> pd.Series:
    """Each patient's first (smallest) ordering value, indexed by group; a patient with no
    value at all is an error naming it."""
    first = order.groupby(groups.to_numpy(), sort=False).min()
    missing = first[first.isna()]
    if len(missing):
        raise InputError(
            f"samples table {source}: evaluation.temporal column '{column}' is empty for every "
            f"visit of patients {describe_rows(sorted(map(str, missing.index)))}; each patient "
            "needs a value to be ordered by"
        )
    return first


def temporal_sides(first: pd.Series, test: float) -> pd.Series:
    """``later`` or ``earlier`` per patient (``first``: each patient's first value, indexed by
    group): the last ``test`` share of patients by ``first`` (at least one) is ``later``, with
    every patient tied with the first of them. An error when no patient is left earlier (all
    tied at the cut)."""
    ordered = first.sort_values(kind="stable")
    n_later = min(max(1, math.ceil(round(test * len(ordered), 9))), len(ordered))
    cut = ordered.iloc[len(ordered) - n_later]
    sides = pd.Series(np.where(first >= cut, "later", "earlier"), index=first.index)
    if (sides == "later").all():
        raise InputError(
            f"evaluation.temporal: every one of the {len(first)} patients ties at the cut "
            f"({cut}); order the patients by a column that separates them"
        )
    return sides


def temporal_partition(
    samples: pd.DataFrame, table: pd.DataFrame, temporal: dict, source
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the partition ``id``, ``group``, ``label``, ``repeat`` 0, ``fold`` (1 later, 2
    earlier); one row per patient ``group``, ``first``, ``side``, ``visits``).

    ``samples`` is the prepared table, ``table`` the samples table as read (its rows in the
    same order: prepare keeps every row), so the ordering column may be one the forest does
    not use (``columns.exclude``).
    """
    if len(table) != len(samples):
        raise InputError(
            f"samples table {source} has {len(table)} rows, the prepared table {len(samples)}: "
            "re-run prepare"
        )
    column = temporal.get("column")
    order = order_values(table[column] if column else table.iloc[:, 0], column, source)
    order.index = samples.index
    first = patient_order(samples[GROUP], order, column, source)
    sides = temporal_sides(first, temporal.get("test", TEST_SHARE))
    folds = samples[[ID, GROUP, LABEL]].assign(repeat=REPEAT)
    folds["fold"] = np.where(samples[GROUP].map(sides) == "later", LATER, EARLIER)
    patients = pd.DataFrame(
        {
            GROUP: first.index,
            # Without a column, a patient's first data row (numbered from 1, as messages do).
            "first": [str(int(v) + 1) if column is None else str(v) for v in first],
            "side": sides.to_numpy(),
            "visits": samples.groupby(GROUP).size().reindex(first.index).to_numpy(),
        }
    )
    return folds, patients


def read_partition(samples: pd.DataFrame, path, temporal: dict, na_values=()):
    """:func:`temporal_partition` of the samples table at ``path``."""
    return temporal_partition(samples, read_table(path, na_values), temporal, path)


# The metrics of the temporal table, each beside its cross-validated estimate.
TEMPORAL_METRICS = ("kappa", "qwk", "balanced_accuracy", "auc", "brier", "ece")


def temporal_table(
    scored: dict, folds: pd.DataFrame, headline: pd.DataFrame, classes: list, evaluation, seed
) -> pd.DataFrame:
    """One row per combination: the later patients' metrics with patient-bootstrap intervals
    (``{metric}``, ``_ci_low``, ``_ci_high``), beside the cross-validated ones of the
    headline's ``complete`` row (``cv_{metric}``, ``cv_{metric}_ci_low``, ``_ci_high``) and
    the difference (``{metric}_diff``: temporal minus cross-validated).

    ``scored`` maps each combination to its fusion probabilities of the temporal fold (``id``,
    ``split``, ``prob_{class}``); only its ``val`` rows (the later patients) are scored.
    """
    from fusion_dag.inference import bootstrap_metrics
    from fusion_dag.report import metric_columns

    train = folds[folds["fold"] == EARLIER]
    later = folds[folds["fold"] == LATER]
    cv = headline[headline["rows"] == "complete"].set_index("combination")
    rows = []
    for combination, probs in scored.items():
        val = probs[probs["split"] == "val"].merge(later[[ID, GROUP, LABEL]], on=ID)
        table = val[[ID, GROUP, LABEL, *prob_columns(classes)]].assign(repeat=1)
        row = {
            "combination": combination,
            "n_train_patients": int(train[GROUP].nunique()),
            "n_train_visits": len(train),
            "n_patients": int(val[GROUP].nunique()),
            "n_rows": len(val),
        }
        estimates = bootstrap_metrics(table, classes, evaluation["bootstrap"], seed)
        columns = metric_columns(estimates, classes, evaluation, "")
        for metric in TEMPORAL_METRICS:
            row[metric] = columns[metric]
            row[f"{metric}_ci_low"] = columns[f"{metric}_ci_low"]
            row[f"{metric}_ci_high"] = columns[f"{metric}_ci_high"]
            known = combination in cv.index
            for part in ("mean", "ci_low", "ci_high"):
                name = f"cv_{metric}" + ("" if part == "mean" else f"_{part}")
                row[name] = float(cv.loc[combination, f"{metric}_{part}"]) if known else np.nan
            row[f"{metric}_diff"] = row[metric] - row[f"cv_{metric}"]
        rows.append(row)
    return pd.DataFrame(rows)
