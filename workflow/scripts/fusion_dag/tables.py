"""Reading a user's table and cleaning its id, group and label columns.

Why a module of its own: the training table (:mod:`fusion_dag.prepare`) and a new table for
prediction (:mod:`fusion_dag.predict`) arrive with the same byte-order marks, decimal commas,
semicolon separators and stray spaces, and must be read and cleaned the same way, with every
problem stated once, naming the file, column and rows.
"""

import io
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import InputError

log = logging.getLogger(__name__)

SHOWN_ROWS = 5


DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


def describe_rows(row_labels) -> str:
    """Name the first few offending rows and how many there are in all."""
    row_labels = [str(r) for r in row_labels]
    shown = ", ".join(row_labels[:SHOWN_ROWS])
    more = len(row_labels) - SHOWN_ROWS
    return f"{shown} (and {more} more; {len(row_labels)} in all)" if more > 0 else shown


def decoded_text(path: Path) -> str:
    """The file's text, or an error naming the first byte (and line) that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(
            f"samples table {path} is not UTF-8 text (byte {error.start:,}, line {line}: "
            f"{raw[error.start : error.start + 1]!r}); re-save it as UTF-8"
        ) from None


def delimiter(path: Path, text: str) -> str:
    """The column separator: tab for .tsv/.txt; for .csv a comma, or a semicolon when the header
    is split by semicolons (spreadsheets in locales with decimal commas export those)."""
    if path.suffix.lower() in (".tsv", ".txt"):
        return "\t"
    header = text.split("\n", 1)[0]
    return ";" if header.count(";") > header.count(",") else ","


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table with every cell as text (or missing).

    Text is kept as text so identifiers such as ``007`` survive; numeric columns are recognised
    later by :func:`coerce_numeric`. A UTF-8 byte-order mark in the header is removed, and a
    semicolon-separated CSV (with decimal commas) is recognised from its header.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"samples table {path} does not exist; set 'samples' in the config")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pd.read_parquet(path)
        return table.astype(object).where(table.notna(), None).astype(object)
    if suffix not in (".csv", ".tsv", ".txt"):
        raise InputError(
            f"samples table {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet"
        )
    text = decoded_text(path)
    separator = delimiter(path, text)
    try:
        return pd.read_csv(io.StringIO(text), sep=separator, dtype=object, skipinitialspace=True)
    except pd.errors.ParserError as error:
        where = re.search(r"line (\d+)", str(error))
        line = f"line {where.group(1)}" if where else "a line"
        raise InputError(
            f"samples table {path}: {line} has more fields than the header "
            f"({' '.join(str(error).split())}); "
            f"the separator is {separator!r}: check for an unquoted {separator!r} inside a cell "
            "(for example a decimal comma in a comma-separated file)"
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


# What to do when a configured column is absent, for the keys whose defaults name the demo's
# columns: a user who never wrote them needs to hear how to change them.
COLUMN_HINTS = {
    "columns.id": "set columns.id to your id column, or columns: {id: null} to number the rows",
    "columns.group": "set columns.group to the column naming each row's patient",
    "columns.label": "set columns.label to the column holding the class",
}


def require_columns(table: pd.DataFrame, wanted: list, source: Path) -> None:
    """Fail with the list of available columns when a configured column is absent.

    ``wanted`` holds ``(config key, column name)`` pairs so the message names both, and says how
    to change the key.
    """
    missing = [(key, name) for key, name in wanted if name not in table.columns]
    if missing:
        names = ", ".join(f"'{name}' (config {key})" for key, name in missing)
        hints = [COLUMN_HINTS.get(key, f"set {key}") for key, _ in missing]
        available = ", ".join(repr(c) for c in table.columns)
        raise InputError(
            f"samples table {source}: no column {names}; columns are {available}; "
            + "; ".join(dict.fromkeys(hints))
        )


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


def clean_ids(table: pd.DataFrame, id_column: str | None, source: Path) -> pd.Series:
    """The rows' ids as text: the id column (unique, never empty) or row numbers from 1."""
    if not id_column:
        return pd.Series([str(i + 1) for i in range(len(table))], index=table.index)
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
    return ids.astype(str)


def clean_groups(table: pd.DataFrame, group_column: str, source: Path) -> pd.Series:
    """The rows' groups (patients) as text; an empty cell is an error naming the rows."""
    groups = stripped(table[group_column])
    if blank(groups).any():
        raise InputError(
            f"samples table {source}: group column '{group_column}' is empty in data rows "
            f"{describe_rows(row_names(blank(groups)))}; every row needs its patient"
        )
    return groups.astype(str)
