"""Read and validate the user's samples table and images once, before any model is trained.

Why a separate stage: real tables arrive with byte-order marks, mixed text/number columns,
decimal commas, stray spaces in labels and missing images. Every later stage reads the clean
table written here, so each problem is reported once, with the file, column and rows named,
and no training job ever starts on a broken input.
"""

import logging
from pathlib import Path

import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError
from fusion_dag.image_files import resolve_images
from fusion_dag.tables import (
    clean_groups,
    clean_ids,
    feature_column,
    log_missing_cells,
    normalise_labels,
    read_table,
    require_columns,
)
from fusion_dag.views import VIEW_COLUMNS, column_views, table_views, view_counts

log = logging.getLogger(__name__)


def check_class_coverage(labels, groups, classes, column: str, source: Path) -> None:
    """Every class needs rows from at least two patients.

    Patient-grouped folds put all of a patient's rows on one side, so a class seen in one
    patient only can never be both trained on and validated, whatever ``cv.folds`` is.
    """
    for name in classes:
        patients = sorted(set(groups[labels == name]))
        if not patients:
            raise InputError(
                f"samples table {source}: class {name} has no rows in column '{column}'; "
                "remove it from 'classes' or add rows of that class"
            )
        if len(patients) == 1:
            raise InputError(
                f"samples table {source}: class {name} occurs in one patient only "
                f"({patients[0]}, rows: {int((labels == name).sum())}); patient-grouped "
                "cross-validation cannot both train on and validate it: add patients with "
                "that class or remove it from 'classes'"
            )


def clean_samples(
    table: pd.DataFrame,
    columns: dict,
    classes: list,
    image_columns: dict,
    source: Path,
    ignored_columns=(),
) -> pd.DataFrame:
    """Return the validated table: ``id``, ``group``, ``label`` then the metadata features.

    ``image_columns`` maps each modality in use to its (required) path column; ``ignored_columns``
    are the path columns of configured modalities no selected combination uses. Features are
    every column except id, group, label, those image-path columns and ``columns['exclude']``:
    a file path is never a feature (a path such as ``R/x.png`` would leak the label). A column
    that is numeric in every filled cell (or all but a few, with a warning) becomes a float.
    """
    id_column, group_column, label_column = columns.get("id"), columns["group"], columns["label"]
    wanted = [("columns.group", group_column), ("columns.label", label_column)]
    if id_column:
        wanted.append(("columns.id", id_column))
    wanted += [(f"modalities.{name}", c) for name, c in image_columns.items()]
    wanted += [("columns.exclude", c) for c in columns.get("exclude") or []]
    require_columns(table, wanted, source)
    if table.empty:
        raise InputError(f"samples table {source} has no data rows")

    ids = clean_ids(table, id_column, source)
    groups = clean_groups(table, group_column, source)
    if groups.nunique() < 2:
        raise InputError(
            f"samples table {source}: group column '{group_column}' holds a single group "
            f"({groups.iloc[0]!r}); patient-grouped cross-validation needs several patients"
        )

    labels = normalise_labels(table[label_column], classes, label_column, source)
    check_class_coverage(labels, groups, classes, label_column, source)
    dropped = {id_column, group_column, label_column, *image_columns.values(), *ignored_columns}
    dropped.update(columns.get("exclude") or [])
    features = [c for c in table.columns if c not in dropped]
    clean = pd.DataFrame({ID: ids.astype(str), GROUP: groups.astype(str), LABEL: labels})
    clashes = [c for c in features if c in clean.columns]
    if clashes:
        raise InputError(
            f"samples table {source}: feature columns {clashes} clash with the names fusion-dag "
            "uses for id, group and label; rename them or list them in columns.exclude"
        )
    for feature in features:
        clean[feature] = feature_column(table[feature], feature, source)
    log_missing_cells(clean[features], source)
    return clean


def prepare_inputs(
    samples_path: Path,
    columns: dict,
    classes: list,
    modalities: dict,
    missing_images: str,
    *,
    ignored_columns=(),
    scaled=(),
    na_values=(),
) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """Validate the table, the image tables and the images of the modalities in use; return
    (samples, views, view counts).

    ``modalities`` maps each modality in use to its layout (``config.modality_layout``: a
    samples ``column``, or an image table's ``images``, ``path``, ``keys`` and ``box``, with
    the ``image_dir`` its paths are relative to); ``ignored_columns`` are path columns of
    configured modalities not in use (never features); ``scaled`` names the modalities with a
    ``value_range``; ``na_values`` the strings that mean a missing cell besides an empty one.
    ``views`` has one row per view of every modality (``modality`` then
    :data:`~fusion_dag.views.VIEW_COLUMNS`), in the order the image cache stores them;
    ``view counts`` one record per modality (views per visit, visits without views, image rows
    without a visit, boxes clipped).
    """
    table = read_table(samples_path, na_values)
    image_columns = {m: layout["column"] for m, layout in modalities.items() if "column" in layout}
    samples = clean_samples(table, columns, classes, image_columns, samples_path, ignored_columns)
    ids = pd.Series(samples[ID].to_numpy(), index=table.index)
    groups = pd.Series(samples[GROUP].to_numpy(), index=table.index)
    views, counts = [], []
    for modality, layout in modalities.items():
        if "column" in layout:
            resolved = resolve_images(
                table,
                ids,
                modality,
                layout["column"],
                layout["image_dir"],
                missing_images,
                samples_path,
                scaled=modality in scaled,
            )
            found = column_views(resolved, pd.Series(groups.to_numpy(), index=ids.to_numpy()))
            no_orphans = pd.Series(False, index=found.index)
            count = view_counts(
                found,
                ids,
                no_orphans,
                modality,
                missing_images,
                samples_path,
                f"samples table {samples_path}: image column '{layout['column']}'",
            )
        else:
            found, count = table_views(
                table,
                ids,
                groups,
                modality,
                layout,
                missing_images,
                samples_path,
                na_values=na_values,
                scaled=modality in scaled,
            )
        log.info("Modality %s: %d images checked", modality, found["path"].nunique())
        views.append(found.assign(modality=modality))
        counts.append(count)
    counts_by_class = samples[LABEL].value_counts().reindex(classes, fill_value=0)
    log.info(
        "Samples table %s: %d rows, %d groups, %d features, classes %s",
        samples_path,
        len(samples),
        samples[GROUP].nunique(),
        samples.shape[1] - 3,
        ", ".join(f"{c}={n}" for c, n in counts_by_class.items()),
    )
    columns_out = ["modality", *VIEW_COLUMNS]
    all_views = pd.concat(views, ignore_index=True) if views else pd.DataFrame()
    return samples, all_views.reindex(columns=columns_out), counts
