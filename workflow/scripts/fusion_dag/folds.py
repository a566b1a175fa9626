"""Patient-grouped, label-stratified outer folds.

Why grouped: one patient has many visits that share a patient effect; a visit-level split
lets a model recognise the patient instead of the wound and inflates validation kappa.
Why stratified: the rarest class (R, about 11 %) must reach every training split, or that
fold's model cannot predict it at all.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError
from fusion_dag.tables import normalise_labels, read_table, stripped

log = logging.getLogger(__name__)


def assign_folds(samples: pd.DataFrame, n_folds: int, seed: int, classes: list) -> pd.DataFrame:
    """Return ``id``, ``group``, ``label``, ``fold`` (1-based) for every sample.

    Fails before any training when there are fewer patients than folds, or when a class is
    absent from some fold's training rows.
    """
    n_groups = samples[GROUP].nunique()
    if n_groups < n_folds:
        raise InputError(
            f"{n_groups} groups (patients) cannot fill cv.folds={n_folds} folds; "
            "lower cv.folds or add patients"
        )
    check_rarest_class(samples[LABEL], samples[GROUP], n_folds, classes, "the samples table")
    # Imported here: rules/common.smk imports this module for its start-up check, and
    # scikit-learn would add about a second to every Snakemake start and every cluster job.
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = samples[[ID, GROUP, LABEL]].copy()
    folds["fold"] = 0
    for number, (_, validation) in enumerate(
        splitter.split(samples, samples[LABEL], samples[GROUP]), start=1
    ):
        folds.iloc[validation, folds.columns.get_loc("fold")] = number
    check_training_classes(folds, classes)
    return folds


def check_rarest_class(labels, groups, n_folds: int, classes: list, source) -> None:
    """``cv.folds`` may not exceed the patients of the rarest class: patient-grouped folds
    would then leave a validation fold without a visit of that class, whose kappa and AUC
    quietly describe one class fewer (and the AUC interval fewer folds)."""
    patients = pd.Series(list(groups), index=list(labels)).groupby(level=0).nunique()
    patients = patients.reindex(classes, fill_value=0)
    rarest = patients.idxmin()
    if patients[rarest] < n_folds:
        raise InputError(
            f"Invalid config key 'cv.folds': {n_folds} folds need at least {n_folds} patients "
            f"of every class, and class {rarest} has {patients[rarest]} in {source}; a "
            f"validation fold would hold no visit of it: lower cv.folds to "
            f"{max(2, patients[rarest])} or add patients of class {rarest}"
        )


def check_table_folds(
    path: Path, columns: dict, classes: list, n_folds: int, na_values, table=None
) -> None:
    """The start-up check of ``cv.folds`` against the samples table, before any job runs
    (:func:`check_rarest_class`). ``table``: the table as read already (start-up reads it once
    for all its checks), else it is read from ``path``. A table that cannot be read this far is
    left to the prepare job, which names its problem; the folds job checks the cleaned table
    again."""
    try:
        if table is None:
            table = read_table(Path(path), na_values)
        labels = normalise_labels(table[columns["label"]], classes, columns["label"], path)
    except (InputError, KeyError):
        return
    groups = stripped(table[columns["group"]]) if columns["group"] in table else None
    if groups is not None:
        check_rarest_class(labels, groups, n_folds, classes, f"samples table {path}")


def check_training_classes(folds: pd.DataFrame, classes: list) -> None:
    """Every class must appear in the training rows of every fold."""
    for fold in sorted(folds["fold"].unique()):
        present = set(folds.loc[folds["fold"] != fold, LABEL])
        absent = [c for c in classes if c not in present]
        if absent:
            raise InputError(
                f"fold {fold}: class {', '.join(absent)} has no training rows; "
                "add samples of that class or lower cv.folds"
            )


def split_rows(folds: pd.DataFrame, fold: int) -> pd.Series:
    """``train`` or ``val`` for each row of ``folds``, for outer fold ``fold``."""
    return folds["fold"].eq(fold).map({True: "val", False: "train"})


def image_rows(folds: pd.DataFrame, views: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The fold table's visits that have at least one view, with their outer ``split``."""
    table = folds[folds[ID].isin(views[ID])].reset_index(drop=True)
    table["split"] = split_rows(table, fold).to_numpy()
    return table


def inner_split(train: pd.DataFrame, validation_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the training rows held out for early stopping.

    Patient-grouped and label-stratified, like the outer folds, so early stopping is decided
    on patients the network has not seen, and never on the outer validation fold. The held-out
    share is one of ``round(1 / validation_fraction)`` inner folds (StratifiedGroupKFold keeps
    patients whole and classes balanced, which an exact fraction of rows cannot promise); the
    log states the share actually held out.
    """
    n_splits = max(2, round(1.0 / validation_fraction))
    if train[GROUP].nunique() < n_splits:
        raise InputError(
            f"{train[GROUP].nunique()} training groups are too few for "
            f"image_model.validation_fraction={validation_fraction} (its inner split needs "
            f"{n_splits} patients with views): the branch has views of too few visits (see "
            "results/prepared/view_counts.tsv and the image table's keys), or raise "
            "validation_fraction"
        )
    # Imported here, as in assign_folds.
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held_out = next(splitter.split(train, train[LABEL], train[GROUP]))
    mask = np.zeros(len(train), dtype=bool)
    mask[held_out] = True
    log.info(
        "Early stopping holds out 1 of %d patient-grouped inner folds (validation_fraction "
        "%.2f): %d of %d training rows (%.1f %%)",
        n_splits,
        validation_fraction,
        mask.sum(),
        len(mask),
        100.0 * mask.mean(),
    )
    return mask


def early_stopping_split(
    folds: pd.DataFrame, views: pd.DataFrame, fold: int, validation_fraction: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """(the outer-training visits with a view, the mask of those held out for early stopping).

    One function for the image stage, which trains on the rest, and for the fusion job that
    learns weights on the held-out visits (:mod:`fusion_dag.learn`): the same fold table,
    visits (``views``: any table with an ``id`` column, e.g. the image stage's probabilities),
    fraction and seed give the same split.
    """
    table = image_rows(folds, views, fold)
    train = table[table["split"] == "train"].reset_index(drop=True)
    return train, inner_split(train, validation_fraction, seed)


def without_screened(table: pd.DataFrame, screened: pd.DataFrame | None) -> pd.DataFrame:
    """``table`` (samples or a fold table) without the screened visits' rows; unchanged when
    nothing is screened (``screened`` None). Only training visits are ever screened, so a fold
    table keeps every validation visit."""
    if screened is None:
        return table
    return table[~table[ID].isin(screened[ID])].reset_index(drop=True)


# The final models' partition (repeat, fold): cross-validation numbers both from 1, and the
# final models hold out fold 0 of repeat 0, which no row is in, so they train on every row.
FINAL_PLACEMENT = (0, 0)


def final_fold_table(samples: pd.DataFrame) -> pd.DataFrame:
    """``id``, ``group``, ``label``, ``repeat``, ``fold`` with every row in fold 1 of repeat 0.

    Holding out fold 0 of this table (:data:`FINAL_PLACEMENT`) leaves every labelled row
    training, so the final models go through the same stage code as the fold models.
    """
    table = samples[[ID, GROUP, LABEL]].copy()
    table["repeat"] = FINAL_PLACEMENT[0]
    table["fold"] = 1
    return table
