"""Patient-grouped, label-stratified outer folds.

Why grouped: one patient has many visits that share a patient effect; a visit-level split
lets a model recognise the patient instead of the wound and inflates validation kappa.
Why stratified: the rarest class (R, about 11 %) must reach every training split, or that
fold's model cannot predict it at all.
"""

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError


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
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = samples[[ID, GROUP, LABEL]].copy()
    folds["fold"] = 0
    for number, (_, validation) in enumerate(
        splitter.split(samples, samples[LABEL], samples[GROUP]), start=1
    ):
        folds.iloc[validation, folds.columns.get_loc("fold")] = number
    check_training_classes(folds, classes)
    return folds


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
