"""Reading a user's table and cleaning its id, group and label columns.

Why a module of its own: the training table (:mod:`fusion_dag.prepare`) and a new table for
prediction (:mod:`fusion_dag.predict_table`) arrive with the same byte-order marks, decimal commas,
semicolon separators and stray spaces, and must be read and cleaned the same way, with every
problem stated once, naming the file, column and rows.
"""

import csv
import io
import logging
import re
from decimal import Decimal
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


def decoded_text(path: Path, what: str = "samples table") -> str:
    """The file's text, or an error naming the first byte (and line) that is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {error.start:,}, line {line}: "
            f"{raw[error.start : error.start + 1]!r}); re-save it as UTF-8"
        ) from None


def delimiter(path: Path, text: str) -> str:
    """The column separator: tab for .tsv; for .csv a comma, or a semicolon when the header is
    split by semicolons (spreadsheets in locales with decimal commas export those); for .txt,
    whichever of tab, semicolon and comma splits the header most."""
    header = text.split("\n", 1)[0]
    if path.suffix.lower() == ".tsv":
        return "\t"
    if path.suffix.lower() == ".txt":
        return max(["\t", ";", ","], key=header.count)
    return ";" if header.count(";") > header.count(",") else ","


def header_names(text: str, separator: str) -> list:
    """The header's column names as written (csv quoting rules), surrounding spaces removed."""
    first = next(csv.reader(io.StringIO(text), delimiter=separator), [])
    return [name.strip() for name in first]


def check_header(names: list, path: Path, separator: str, what: str = "samples table") -> None:
    """Refuse a header pandas would silently change: a repeated name (pandas renames the copy
    ``label.1``, and a repeated label column becomes a feature that is the label), or a file
    whose comma-separated header is really tab-separated."""
    if len(names) == 1 and "\t" in names[0] and separator != "\t":
        raise InputError(
            f"{what} {path}: the header is one column holding tab characters; the file "
            "looks tab-separated: name it .tsv (or export it comma-separated)"
        )
    filled = [name for name in names if name]
    repeated = sorted({name for name in filled if filled.count(name) > 1})
    if repeated:
        where = "; ".join(
            f"'{name}' in columns "
            + ", ".join(str(i + 1) for i, other in enumerate(names) if other == name)
            for name in repeated
        )
        raise InputError(
            f"{what} {path}: the header repeats column names ({where}); every column "
            "needs its own name: rename or remove the copies"
        )


def named_columns(
    table: pd.DataFrame, names: list, path: Path, what: str = "samples table"
) -> pd.DataFrame:
    """The table with the header's names, without what spreadsheet exports add: columns with no
    header and no data, and rows with no data at all (each counted in the log). A column with
    no header but with data is an error, since nothing could refer to it."""
    keep = []
    for position, name in enumerate(names[: table.shape[1]]):
        column = table.iloc[:, position]
        if name:
            keep.append(position)
        elif column.notna().any():
            raise InputError(
                f"{what} {path}: column {position + 1} has no header but holds data "
                f"(data rows {describe_rows(row_names(column.notna()))}); give it a name"
            )
    dropped = table.shape[1] - len(keep)
    if dropped:
        log.info("Table %s: dropped %d columns with no header and no data", path, dropped)
    table = table.iloc[:, keep].set_axis([names[p] for p in keep], axis=1)
    empty = table.isna().all(axis=1)
    if empty.any():
        log.info(
            "Table %s: dropped %d rows with no data (data rows %s)",
            path,
            int(empty.sum()),
            describe_rows(row_names(empty)),
        )
    # The index stays the data row position, so every later message names the file's rows.
    return table[~empty]


def read_table(
    path: Path, na_values=(), key: str = "samples", what: str = "samples table"
) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table with every cell as text (or missing).

    Text is kept as text so identifiers such as ``007`` survive; numeric columns are recognised
    later (:func:`feature_column`). A UTF-8 byte-order mark in the header is removed, and a
    semicolon-separated CSV (with decimal commas) is recognised from its header. Only empty
    cells, and the strings in ``na_values``, are missing: pandas' default list (``NA``,
    ``None``, ``null``, ``n/a``, ...) would turn a patient called ``NA`` or a text category
    ``None`` into a missing cell without a word (``na_values=None`` keeps pandas' list for a
    CSV: how a bundle made before the setting existed was trained). Header names lose
    surrounding spaces; a repeated name is an error (see :func:`check_header`); the index is
    each row's position in the file. ``key`` is the config key naming the table, for the
    message when it does not exist; ``what`` the kind of table every message names.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a table file")
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; set '{key}' in the config")
    suffix = path.suffix.lower()
    missing = ["", *(na_values or ())]
    if suffix == ".parquet":
        table = pd.read_parquet(path).reset_index(drop=True)
        names = [str(name).strip() for name in table.columns]
        check_header(names, path, "", what)
        listed = table.map(lambda v: isinstance(v, str) and v.strip() in missing)
        table = table.astype(object).where(table.notna() & ~listed, None).astype(object)
        return named_columns(table, names, path, what)
    if suffix not in (".csv", ".tsv", ".txt"):
        raise InputError(f"{what} {path}: unknown format '{suffix}'; use .csv, .tsv or .parquet")
    text = decoded_text(path, what)
    if not text.strip():
        raise InputError(f"{what} {path} is empty: it has no header and no rows")
    separator = delimiter(path, text)
    names = header_names(text, separator)
    check_header(names, path, separator, what)
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=separator,
            dtype=object,
            skipinitialspace=True,
            keep_default_na=na_values is None,
            na_values=missing,
            # A trailing separator on every row must not turn the first column into the index,
            # and blank lines count as (empty) rows, so row numbers stay the file's.
            index_col=False,
            skip_blank_lines=False,
        )
    except pd.errors.ParserError as error:
        where = re.search(r"line (\d+)", str(error))
        line = f"line {where.group(1)}" if where else "a line"
        raise InputError(
            f"{what} {path}: {line} has more fields than the header "
            f"({' '.join(str(error).split())}); "
            f"the separator is {separator!r}: check for an unquoted {separator!r} inside a cell "
            "(for example a decimal comma in a comma-separated file)"
        ) from None
    renamed = [name for name, column in zip(names, table.columns, strict=False) if name != column]
    if any(renamed):
        log.info(
            "Table %s: header names read without surrounding spaces: %s",
            path,
            [name for name in renamed if name],
        )
    return named_columns(table, names, path, what)


def parsed_numbers(column: pd.Series) -> pd.Series | None:
    """Each filled cell as a number (NaN where it is not one), or None for an empty column.

    Decimal commas (``3,5``) count as numbers when no cell of the column uses a decimal point,
    as spreadsheets in many locales export them.
    """
    present = column.dropna().astype(str).str.strip()
    if present.empty:
        return None
    # Decimal commas (a spreadsheet in a locale that writes 36,5) when no cell uses a point.
    commas = present.str.fullmatch(DECIMAL_COMMA.pattern)
    if commas.any() and not present.str.contains(".", regex=False).any():
        present = present.where(~commas, present.str.replace(",", ".", regex=False))
    return pd.to_numeric(present, errors="coerce")


# A numeric column may hold this share of cells that are not numbers (``#DIV/0!``, ``>90``)
# and still be read as numbers, those cells missing, with a warning; above it, it is text.
STRAY_TEXT_SHARE = 0.1


TRAINING_FIX = "fix them, list them in na_values, or list the column in columns.exclude"


def feature_column(
    column: pd.Series, name: str, source: Path, fix: str = TRAINING_FIX
) -> pd.Series:
    """A metadata feature as floats or text, never changed without a word.

    Numeric when every filled cell is a number; when a few are not (at most
    ``STRAY_TEXT_SHARE``: spreadsheet errors such as ``#DIV/0!``, censored values such as
    ``>90``), those cells are read as missing and a warning names them, instead of the whole
    column silently turning into text categories. Infinite values are an error: a forest
    cannot split on them and no imputation fits them.
    """
    numbers = parsed_numbers(column)
    if numbers is None:
        return pd.Series(np.nan, index=column.index, dtype=float)
    stray = numbers.isna()
    if stray.mean() > STRAY_TEXT_SHARE:
        return stripped(column).astype(object)
    if stray.any():
        cells = column.loc[stray[stray].index]
        values = ", ".join(repr(v) for v in sorted(set(cells.astype(str).str.strip()))[:5])
        rows = pd.Series(column.index.isin(cells.index), index=column.index)
        log.warning(
            "Samples table %s: feature column '%s' is numeric but for %d cells (%s in data rows "
            "%s); they are read as missing (imputed like empty cells): %s",
            source,
            name,
            int(stray.sum()),
            values,
            describe_rows(row_names(rows)),
            fix,
        )
    floats = numbers.reindex(column.index).astype(float)
    check_finite(floats, name, source)
    return floats


def check_finite(column: pd.Series, name: str, source: Path) -> None:
    """Infinite numbers (``inf``, ``-inf``, ``Infinity``) are an error naming the rows."""
    infinite = pd.Series(np.isinf(column.to_numpy(dtype=float)), index=column.index)
    if infinite.any():
        raise InputError(
            f"samples table {source}: feature column '{name}' holds infinite values in data "
            f"rows {describe_rows(row_names(infinite))}; replace them with numbers or empty the "
            "cells"
        )


# What to do when a configured column is absent, for the keys whose defaults name the demo's
# columns: a user who never wrote them needs to hear how to change them.
COLUMN_HINTS = {
    "columns.id": "set columns.id to your id column, or columns: {id: null} to number the rows",
    "columns.group": "set columns.group to the column naming each row's patient",
    "columns.label": "set columns.label to the column holding the class",
}


def require_columns(
    table: pd.DataFrame, wanted: list, source: Path, hint: str = "", what: str = "samples table"
) -> None:
    """Fail with the list of available columns when a configured column is absent.

    ``wanted`` holds ``(config key, column name)`` pairs so the message names both, and says how
    to change the key; ``hint`` replaces that advice where the key cannot change (a new table
    for a bundle, whose columns were fixed in training).
    """
    missing = [(key, name) for key, name in wanted if name not in table.columns]
    if missing:
        names = ", ".join(f"'{name}' (config {key})" for key, name in missing)
        hints = [hint] if hint else [COLUMN_HINTS.get(key, f"set {key}") for key, _ in missing]
        available = ", ".join(repr(c) for c in table.columns)
        raise InputError(
            f"{what} {source}: no column {names}; columns are {available}; "
            + "; ".join(dict.fromkeys(hints))
        )


def stripped(column: pd.Series) -> pd.Series:
    """Text cells without surrounding spaces; other cells unchanged."""
    return column.map(lambda v: v.strip() if isinstance(v, str) else v)


def blank(column: pd.Series) -> pd.Series:
    """Missing or empty cells of a stripped column."""
    return column.isna() | (column == "")


def row_names(mask: pd.Series) -> list:
    """Human row names: 1-based data row numbers (the header is not counted), from the index,
    which :func:`read_table` keeps as each row's position in the file."""
    return [int(i) + 1 for i in mask.index[mask.to_numpy(dtype=bool)]]


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
    by_number = {number: c for c in classes if (number := as_number(c)) is not None}
    mapped = text.map(
        lambda v: by_folded.get(str(v).casefold()) or by_number.get(as_number(str(v)))
    )
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
        log.info(
            "Normalised %d labels (surrounding spaces, letter case, or a number written "
            "another way such as 1.0 for class 1)",
            changed,
        )
    return mapped


PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def as_number(text: str) -> Decimal | None:
    """``text`` as an exact number when it is written plainly (digits, an optional point), or
    None: how labels ``1.0`` and class ``1``, or patients ``7`` and ``007``, are compared.

    Exact (``Decimal``), so two long patient numbers never meet by rounding; plain, so
    ``1e3``, ``1_000`` or ``infinity`` are text, never numbers.
    """
    text = str(text).strip()
    return Decimal(text) if PLAIN_NUMBER.fullmatch(text) else None


def clean_ids(table: pd.DataFrame, id_column: str | None, source: Path) -> pd.Series:
    """The rows' ids as text: the id column (unique, never empty) or the data row numbers (from
    1, as every message names rows)."""
    if not id_column:
        return pd.Series([str(i + 1) for i in table.index], index=table.index)
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
    return merged_number_spellings(groups.astype(str), group_column, source)


def merged_number_spellings(groups: pd.Series, column: str, source: Path) -> pd.Series:
    """Patient numbers written two ways (``2`` and ``2.0``, ``7`` and ``007``) name one patient.

    A spreadsheet that typed some cells as numbers splits a patient in two groups otherwise,
    and patient-grouped folds could then put the same patient on both sides. Only numbers
    written more than one way are changed (to their first spelling), with a warning.
    """
    numbers = groups.map(as_number)
    if numbers.isna().any():
        return groups
    first = groups.groupby(numbers.to_numpy()).transform("first")
    changed = first != groups
    if changed.any():
        log.warning(
            "Samples table %s: group column '%s' writes %d patient numbers more than one way "
            "(%s); each number is one patient",
            source,
            column,
            int(first[changed].nunique()),
            ", ".join(
                f"{a!r} as {b!r}"
                for a, b in sorted(set(zip(groups[changed], first[changed], strict=True)))[:5]
            ),
        )
    return first


def log_missing_cells(features: pd.DataFrame, source: Path) -> None:
    """Count the missing cells of each feature column in the log (the forest imputes them)."""
    missing = features.isna().sum()
    missing = missing[missing > 0]
    if len(missing):
        log.info(
            "Samples table %s: missing cells per feature column (imputed): %s",
            source,
            ", ".join(f"{name}={count}" for name, count in missing.items()),
        )
    else:
        log.info("Samples table %s: no missing cells in the feature columns", source)
