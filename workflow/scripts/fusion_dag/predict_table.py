"""A new table for prediction, validated against the bundle's model spec.

Why a module of its own: the ``predict_table`` job checks the new table (and its images) before
any model is loaded or trained, in the light tabular environment, without TensorFlow. A new
clinic's table has the training table's byte-order marks, decimal commas and stray spaces plus
its own surprises (a renamed column, a class spelled differently, an image outside the image
folder), each one error naming the file, column and rows; the reading and cleaning are
:mod:`fusion_dag.tables`, as for the training table's.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError, file_sha256, read_tsv
from fusion_dag.image_files import resolve_images
from fusion_dag.tables import (
    clean_groups,
    clean_ids,
    describe_rows,
    feature_column,
    log_missing_cells,
    normalise_labels,
    read_table,
    require_columns,
    row_names,
    stripped,
)
from fusion_dag.views import (
    CROP,
    VIEW_COLUMNS,
    column_views,
    table_views,
    view_counts,
    with_crops,
)
from fusion_dag.weights import METADATA

log = logging.getLogger(__name__)


def new_samples(
    path: Path,
    image_dir: Path,
    spec: dict,
    members: list,
    image_tables: dict | None = None,
    modality_dirs: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate a new table against the bundle's spec; return (samples, views).

    Needed: the group column, the id column when training had one, the forest's feature
    columns (when ``members`` include metadata) and each image member's path column, or, for
    a member the bundle reads from an image table, that table (``image_tables``: modality ->
    path, config ``predict.images``) with the bundle's path, key and box columns. The label
    column is optional; other columns are ignored. A feature that was numeric in training must
    be numeric here; empty cells are imputed as in training, and text categories the forest has
    not seen are ignored by its encoder. A visit without an image (an empty cell, no row in the
    image table) is scored by the members it has. ``views`` has one row per view of every
    image member, with its crop cut as in training. Image paths are relative to ``image_dir``,
    or to a modality's own folder in ``modality_dirs`` (modality -> folder;
    :func:`~fusion_dag.config.predict_image_dirs`). The bundle's training table itself (by its
    SHA-256 in the manifest's provenance) is predicted with a warning: in-sample.
    """
    image_tables = image_tables or {}
    modality_dirs = modality_dirs or {}
    # A bundle made before na_values existed was trained with pandas' missing words.
    table = read_table(path, spec.get("na_values"), key="predict.samples")
    trained_on = spec.get("provenance", {}).get("data", {}).get("samples", {}).get("sha256")
    if trained_on == file_sha256(path):
        log.warning(
            "New table %s is the table the bundle was trained on (same SHA-256): its "
            "predictions and metrics are in-sample, not a validation",
            path,
        )
    columns = spec["columns"]
    features = spec["features"] if METADATA in members else []
    layouts = {m: spec["modalities"][m] for m in members if m != METADATA}
    tabled = [m for m, v in spec["modalities"].items() if "column" not in v]
    unknown = sorted(set(image_tables) - set(tabled))
    if unknown:
        raise InputError(
            f"Invalid config key 'predict.images': the bundle reads no {', '.join(unknown)} from "
            f"an image table (its image tables: {', '.join(tabled) or 'none'}); fix the name"
        )
    unused = sorted(set(image_tables) - set(layouts))
    if unused:
        log.warning(
            "predict.images: %s not read: the combination predicted (%s) does not use it",
            ", ".join(unused),
            "+".join(members),
        )
    untabled = [
        m for m, layout in layouts.items() if "column" not in layout and m not in image_tables
    ]
    if untabled:
        raise InputError(
            f"Invalid config key 'predict.images': the bundle reads {', '.join(untabled)} from "
            "an image table (one row per view); give the new visits' table, e.g. "
            f"predict.images: {{{untabled[0]}: new_{untabled[0]}_images.csv}}"
        )
    wanted = [("columns.group", columns["group"])]
    if columns["id"]:
        wanted.append(("columns.id", columns["id"]))
    wanted += [
        (f"modalities.{name}", layout["column"])
        for name, layout in layouts.items()
        if "column" in layout
    ]
    require_columns(
        table, wanted, path, "add it to the new table: the bundle's models were trained with it"
    )
    missing = [f["name"] for f in features if f["name"] not in table.columns]
    if missing:
        raise InputError(
            f"samples table {path}: no feature column {', '.join(repr(m) for m in missing)}; "
            f"the bundle's forest was trained on {', '.join(f['name'] for f in features)} "
            "(add the column; empty cells are imputed as in training)"
        )
    if table.empty:
        raise InputError(f"samples table {path} has no data rows")
    ids = clean_ids(table, columns["id"], path)
    groups = clean_groups(table, columns["group"], path)
    samples = pd.DataFrame({ID: ids, GROUP: groups})
    if columns["label"] in table.columns:
        samples[LABEL] = normalise_labels(
            table[columns["label"]], spec["classes"], columns["label"], path
        )
    else:
        samples[LABEL] = np.nan
        log.info("No label column '%s': predictions only, no metrics", columns["label"])
    for feature in features:
        samples[feature["name"]] = typed_column(table, feature, path)
    if features:
        log_missing_cells(samples[[f["name"] for f in features]], path)
    views = [
        new_views(
            table,
            ids,
            groups,
            modality,
            layout,
            (modality_dirs.get(modality, image_dir), image_tables),
            path,
            spec,
        )
        for modality, layout in layouts.items()
    ]
    columns_out = ["modality", *VIEW_COLUMNS, *CROP]
    views = pd.concat(views, ignore_index=True) if views else pd.DataFrame()
    return samples, views.reindex(columns=columns_out)


def new_views(table, ids, groups, modality, layout, sources, path, spec) -> pd.DataFrame:
    """One image member's views of the new visits, read and cut as the bundle says;
    ``sources`` is (the image folder, modality -> image table)."""
    image_dir, image_tables = sources
    scaled = layout["value_range"] is not None
    if "column" in layout:
        resolved = resolve_images(
            table, ids, modality, layout["column"], image_dir, "drop", path, scaled=scaled
        )
        views = column_views(resolved, pd.Series(groups.to_numpy(), index=ids.to_numpy()))
        no_orphans = pd.Series(False, index=views.index)
        where = f"samples table {path}: image column '{layout['column']}'"
        view_counts(views, ids, no_orphans, modality, "drop", path, where)
    else:
        given = {**layout, "images": image_tables[modality], "image_dir": image_dir}
        views, _ = table_views(
            table,
            ids,
            groups,
            modality,
            given,
            "drop",
            path,
            spec.get("na_values"),
            scaled=scaled,
            images_key=f"predict.images.{modality}",
        )
    return with_crops(views, layout.get("box_margin", 0)).assign(modality=modality)


def typed_column(table: pd.DataFrame, feature: dict, path: Path) -> pd.Series:
    """A feature column read as the type it had in training (numeric or text).

    A numeric feature is read as in training (:func:`~fusion_dag.tables.feature_column`): a few
    stray texts are missing cells with a warning, infinite values an error; a column that is
    mostly text cannot be the training's number and is an error naming the rows.
    """
    name = feature["name"]
    if feature["type"] == "text":
        return stripped(table[name]).astype(object)
    fix = "fix them in the new table (it is read with the bundle's na_values)"
    column = feature_column(table[name], name, path, fix)
    if column.dtype == object:
        text = pd.to_numeric(column, errors="coerce").isna() & column.notna()
        values = ", ".join(repr(v) for v in sorted(set(column[text].astype(str)))[:5])
        raise InputError(
            f"samples table {path}: feature column '{name}' was numeric in training but holds "
            f"text ({values}) in data rows {describe_rows(row_names(text))}; fix the cells "
            "or empty them"
        )
    return column


def read_new_samples(path: Path, spec: dict) -> pd.DataFrame:
    """Read a validated new table back with text features as text."""
    text = {f["name"]: str for f in spec["features"] if f["type"] == "text"}
    return read_tsv(path, dtype=text)
