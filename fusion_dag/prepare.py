"""Read and validate the user's samples table and images once, before any model is trained.

Why a separate stage: real tables arrive with byte-order marks, mixed text/number columns,
decimal commas, stray spaces in labels and missing images. Every later stage reads the clean
table written here, so each problem is reported once, with the file, column and rows named,
and no training job ever starts on a broken input.
"""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fusion_dag.artifacts import GROUP, ID, LABEL

log = logging.getLogger(__name__)

SHOWN_ROWS = 5
DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


class InputError(ValueError):
    """A problem with the user's data or settings, stated in one line that says what to change."""


def describe_rows(row_labels) -> str:
    """Name the first few offending rows and how many there are in all."""
    row_labels = [str(r) for r in row_labels]
    shown = ", ".join(row_labels[:SHOWN_ROWS])
    more = len(row_labels) - SHOWN_ROWS
    return f"{shown} (and {more} more; {len(row_labels)} in all)" if more > 0 else shown


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table with every cell as text (or missing).

    Text is kept as text so identifiers such as ``007`` survive; numeric columns are recognised
    later by :func:`coerce_numeric`. A UTF-8 byte-order mark in the header is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"samples table {path} does not exist; set 'samples' in the config")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(path)
        return table.astype(object).where(table.notna(), None).astype(object)
    separators = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
    if suffix not in separators:
        raise InputError(
            f"samples table {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet"
        )
    try:
        return pd.read_csv(
            path, sep=separators[suffix], dtype=object, encoding="utf-8-sig", skipinitialspace=True
        )
    except UnicodeDecodeError as error:
        raise InputError(
            f"samples table {path} is not UTF-8 text (byte {error.start}); re-save it as UTF-8"
        ) from None


def coerce_numeric(column: pd.Series) -> pd.Series:
    """Return the column as floats when every non-missing cell is a number, else as text.

    Decimal commas (``3,5``) count as numbers when the whole column uses them, as exported by
    spreadsheets in many locales.
    """
    present = column.dropna().astype(str).str.strip()
    if present.empty:
        return pd.Series(np.nan, index=column.index, dtype=float)
    if present.str.match(DECIMAL_COMMA.pattern).all():
        present = present.str.replace(",", ".", regex=False)
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.notna().all():
        return numbers.reindex(column.index).astype(float)
    return stripped(column).astype(object)


def require_columns(table: pd.DataFrame, wanted: list, source: Path) -> None:
    """Fail with the list of available columns when a configured column is absent.

    ``wanted`` holds ``(config key, column name)`` pairs so the message names both.
    """
    missing = [(key, name) for key, name in wanted if name not in table.columns]
    if missing:
        names = ", ".join(f"'{name}' (config {key})" for key, name in missing)
        available = ", ".join(repr(c) for c in table.columns)
        raise InputError(f"samples table {source}: no column {names}; columns are {available}")


def stripped(column: pd.Series) -> pd.Series:
    """Text cells without surrounding spaces; other cells unchanged."""
    return column.map(lambda v: v.strip() if isinstance(v, str) else v)


def blank(column: pd.Series) -> pd.Series:
    """Missing or empty cells of a stripped column."""
    return column.isna() | (column == "")


def row_names(mask: pd.Series) -> list:
    """Human row names: 1-based data row numbers (the header is not counted)."""
    return [i + 1 for i in np.flatnonzero(mask.to_numpy())]


def normalise_labels(labels: pd.Series, classes: list, column: str, source: Path) -> pd.Series:
    """Map labels onto the configured class names, ignoring surrounding spaces and case.

    Empty labels and labels that match no class are errors naming the rows, because a
    silently dropped or guessed label changes the class balance the metrics depend on.
    """
    text = stripped(labels)
    empty = blank(text)
    if empty.any():
        raise InputError(
            f"samples table {source}: column '{column}' is empty in data rows "
            f"{describe_rows(row_names(empty))}; give every row a label"
        )
    by_folded = {c.casefold(): c for c in classes}
    mapped = text.map(lambda v: by_folded.get(str(v).casefold()))
    unknown = mapped.isna()
    if unknown.any():
        values = ", ".join(repr(v) for v in sorted(set(text[unknown].astype(str))))
        raise InputError(
            f"samples table {source}: column '{column}' has labels outside classes {list(classes)} "
            f"({values}) in data rows {describe_rows(row_names(unknown))}; "
            "fix the labels or the 'classes' setting"
        )
    changed = int((mapped != labels).sum())
    if changed:
        log.info("Normalised %d labels (surrounding spaces or letter case)", changed)
    return mapped


def clean_samples(
    table: pd.DataFrame,
    columns: dict,
    classes: list,
    image_columns: list,
    source: Path,
) -> pd.DataFrame:
    """Return the validated table: ``id``, ``group``, ``label`` then the metadata features.

    Features are every column except id, group, label, image-path columns and
    ``columns['exclude']``; a column that is numeric in every filled cell becomes a float.
    """
    id_column, group_column, label_column = columns.get("id"), columns["group"], columns["label"]
    wanted = [("columns/group", group_column), ("columns/label", label_column)]
    if id_column:
        wanted.append(("columns/id", id_column))
    wanted += [("modalities", c) for c in image_columns]
    wanted += [("columns/exclude", c) for c in columns.get("exclude") or []]
    require_columns(table, wanted, source)
    if table.empty:
        raise InputError(f"samples table {source} has no data rows")

    if id_column:
        ids = stripped(table[id_column])
        if blank(ids).any():
            raise InputError(
                f"samples table {source}: id column '{id_column}' is empty in data rows "
                f"{describe_rows(row_names(blank(ids)))}"
            )
        repeated = ids.duplicated(keep=False)
        if repeated.any():
            raise InputError(
                f"samples table {source}: id column '{id_column}' repeats ids "
                f"{describe_rows(sorted(set(ids[repeated].astype(str))))} in data rows "
                f"{describe_rows(row_names(repeated))}; ids must be unique"
            )
    else:
        ids = pd.Series([str(i + 1) for i in range(len(table))], index=table.index)

    groups = stripped(table[group_column])
    if blank(groups).any():
        raise InputError(
            f"samples table {source}: group column '{group_column}' is empty in data rows "
            f"{describe_rows(row_names(blank(groups)))}; every row needs its patient"
        )
    if groups.nunique() < 2:
        raise InputError(
            f"samples table {source}: group column '{group_column}' holds a single group "
            f"({groups.iloc[0]!r}); patient-grouped cross-validation needs several patients"
        )

    labels = normalise_labels(table[label_column], classes, label_column, source)
    dropped = {id_column, group_column, label_column, *image_columns}
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
        clean[feature] = coerce_numeric(table[feature])
    return clean


def resolve_images(
    table: pd.DataFrame,
    ids: pd.Series,
    modality: str,
    column: str,
    image_dir: Path,
    missing_images: str,
    source: Path,
) -> pd.Series:
    """Validate one modality's image paths and return them resolved, indexed by sample id.

    Paths are relative to ``image_dir`` and may not leave it (a table is not allowed to make
    the workflow read arbitrary files). Empty cells are an error or, with
    ``missing_images: drop``, rows left out of this modality and counted in the log. Every image
    is decoded once here so a truncated or unreadable file stops the run before training.
    """
    root = Path(image_dir).resolve()
    cells = stripped(table[column])
    empty = blank(cells)
    if empty.any() and missing_images == "error":
        raise InputError(
            f"samples table {source}: image column '{column}' (modality {modality}) is empty for "
            f"ids {describe_rows(ids[empty].tolist())}; fill them or set missing_images: drop"
        )
    if empty.any():
        log.info("Modality %s: dropped %d rows with no image", modality, int(empty.sum()))
    paths = cells[~empty].map(lambda v: (root / str(v)).resolve())
    outside = paths.map(lambda p: not p.is_relative_to(root))
    if outside.any():
        raise InputError(
            f"samples table {source}: image column '{column}' points outside image_dir {root} "
            f"for ids {describe_rows(ids[~empty][outside].tolist())}; paths must stay inside it"
        )
    absent = paths.map(lambda p: not p.is_file())
    if absent.any():
        first = paths[absent].iloc[0]
        raise InputError(
            f"image file {first} does not exist (modality {modality}; ids "
            f"{describe_rows(ids[~empty][absent].tolist())} have missing files); fix the paths "
            "or image_dir, or empty those cells and set missing_images: drop"
        )
    for sample_id, path in zip(ids[~empty], paths, strict=True):
        check_image(path, modality, sample_id)
    return pd.Series(paths.map(str).to_numpy(), index=ids[~empty].to_numpy(), name=modality)


def check_image(path: Path, modality: str, sample_id: str) -> None:
    """Decode an image fully; refuse unreadable files, empty sizes and unusual channel counts."""
    try:
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(
            f"image file {path} (modality {modality}, id {sample_id}) cannot be read: {error}; "
            "replace the file"
        ) from None
    if min(size) == 0:
        raise InputError(
            f"image file {path} (modality {modality}, id {sample_id}) has size {size}; "
            "replace the file"
        )
    if mode not in ("RGB", "L"):
        raise InputError(
            f"image file {path} (modality {modality}, id {sample_id}) has mode {mode}; "
            "expected 3-channel RGB or 1-channel grayscale; convert it"
        )


def prepare_inputs(
    samples_path: Path,
    image_dir: Path,
    columns: dict,
    classes: list,
    modalities: dict,
    missing_images: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the table and the images of the modalities in use; return (samples, images).

    ``images`` has one row per sample and one column per modality holding the resolved image
    path (empty where the row was dropped from that modality).
    """
    table = read_table(samples_path)
    samples = clean_samples(table, columns, classes, list(modalities.values()), samples_path)
    images = pd.DataFrame({ID: samples[ID]})
    for modality, column in modalities.items():
        resolved = resolve_images(
            table, samples[ID], modality, column, image_dir, missing_images, samples_path
        )
        images[modality] = images[ID].map(resolved)
        log.info("Modality %s: %d images checked", modality, resolved.size)
    counts = samples[LABEL].value_counts().reindex(classes, fill_value=0)
    log.info(
        "Samples table %s: %d rows, %d groups, %d features, classes %s",
        samples_path,
        len(samples),
        samples[GROUP].nunique(),
        samples.shape[1] - 3,
        ", ".join(f"{c}={n}" for c, n in counts.items()),
    )
    return samples, images
