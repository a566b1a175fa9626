"""Read and validate the user's samples table and images once, before any model is trained.

Why a separate stage: real tables arrive with byte-order marks, mixed text/number columns,
decimal commas, stray spaces in labels and missing images. Every later stage reads the clean
table written here, so each problem is reported once, with the file, column and rows named,
and no training job ever starts on a broken input.
"""

import io
import logging
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fusion_dag.artifacts import GROUP, ID, LABEL, InputError
from fusion_dag.weights import METADATA

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
    that is numeric in every filled cell becomes a float.
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
        clean[feature] = coerce_numeric(table[feature])
    return clean


# Image modes, by what the image cache does with them (Pillow's mode names).
GREY_MODES = {"L"}
COLOUR_MODES = {"RGB"}
HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
CONVERTED_MODES = {
    "RGBA": "RGB (alpha dropped)",
    "P": "RGB (palette)",
    "PA": "RGB (palette, alpha dropped)",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LA": "grey-scale (alpha dropped)",
    "1": "grey-scale (1-bit)",
}


def outside_paths(cells: pd.Series) -> pd.Series:
    """Table paths that are absolute or climb out with ``..``: refused, whatever is on disk.

    The check is on the text, not on resolved files, so an ``image_dir`` that is a symlink (a
    mounted share) works, and a symlinked file inside the folder is followed.
    """
    return cells.map(lambda v: PurePath(v).is_absolute() or ".." in PurePath(v).parts)


def resolve_images(
    table: pd.DataFrame,
    ids: pd.Series,
    modality: str,
    column: str,
    image_dir: Path,
    missing_images: str,
    source: Path,
    scaled: bool = False,
) -> pd.Series:
    """Validate one modality's image paths and return them, indexed by sample id.

    Paths are relative to ``image_dir`` and may not leave it (a table is not allowed to make
    the workflow read arbitrary files). Empty cells are an error or, with
    ``missing_images: drop``, rows left out of this modality and counted in the log. Every image
    is opened and verified here so a truncated or unreadable file stops the run before training.
    High-bit-depth grey-scale images need the modality's ``value_range`` (``scaled``).
    """
    root = Path(image_dir).absolute()
    cells = stripped(table[column])
    empty = blank(cells)
    if empty.any() and missing_images == "error":
        raise InputError(
            f"samples table {source}: image column '{column}' (modality {modality}) is empty for "
            f"ids {describe_rows(ids[empty].tolist())}; fill them or set missing_images: drop"
        )
    if empty.any():
        log.info("Modality %s: dropped %d rows with no image", modality, int(empty.sum()))
    outside = outside_paths(cells[~empty].astype(str))
    if outside.any():
        raise InputError(
            f"samples table {source}: image column '{column}' points outside image_dir {root} "
            f"for ids {describe_rows(ids[~empty][outside].tolist())}; paths must be relative to "
            "image_dir without '..' (symlinks inside image_dir are followed)"
        )
    paths = cells[~empty].map(lambda v: root / str(v))
    absent = paths.map(lambda p: not p.is_file())
    if absent.any():
        first = paths[absent].iloc[0]
        raise InputError(
            f"image file {first} does not exist (modality {modality}; ids "
            f"{describe_rows(ids[~empty][absent].tolist())} have missing files); fix the paths "
            "or image_dir, or empty those cells and set missing_images: drop"
        )
    modes = pd.Series(
        [check_image(p, modality, i) for i, p in zip(ids[~empty], paths, strict=True)],
        index=ids[~empty].to_numpy(),
    )
    check_modes(modes, paths.set_axis(modes.index), modality, scaled)
    return pd.Series(paths.map(str).to_numpy(), index=ids[~empty].to_numpy(), name=modality)


def check_modes(modes: pd.Series, paths: pd.Series, modality: str, scaled: bool) -> None:
    """Refuse high-bit-depth images without a value range; log every conversion the cache makes.

    A 16-bit or float thermal image carries absolute values (temperatures); scaling each image
    by its own minimum and maximum would erase the differences between images, and Pillow's
    ``convert('L')`` clips it white. So such images are scaled by one fixed range per modality
    (``modalities.{name}.value_range``), which the user sets in the images' raw units.
    """
    high_depth = modes.isin(HIGH_DEPTH_MODES)
    if high_depth.any() and not scaled:
        first = modes.index[high_depth.to_numpy()][0]
        raise InputError(
            f"image file {paths[first]} (modality {modality}, id {first}) is high-bit-depth "
            f"grey-scale (mode {modes[first]}; {int(high_depth.sum())} images of this modality "
            f"are); set modalities.{modality}.value_range: [low, high] in the images' raw units "
            "so every image is scaled by the same fixed range"
        )
    for mode, target in CONVERTED_MODES.items():
        count = int((modes == mode).sum())
        if count:
            log.info("Modality %s: %s images converted to %s: %d", modality, mode, target, count)
    colour = modes.isin(COLOUR_MODES | {m for m, t in CONVERTED_MODES.items() if "RGB" in t})
    if colour.any() and not colour.all():
        log.warning(
            "Modality %s mixes %d colour and %d grey-scale images (colour: ids %s); the image "
            "cache converts them all to the modality's channels (1: luminance, 3: grey repeated)",
            modality,
            int(colour.sum()),
            int((~colour).sum()),
            describe_rows(modes.index[colour.to_numpy()].tolist()),
        )


def check_image(path: Path, modality: str, sample_id: str) -> str:
    """Check an image's header and integrity and return its mode; refuse unreadable files,
    truncated or corrupted ones, and empty sizes.

    Pillow's ``verify`` reads the whole file and checks its structure (for PNG, every chunk's
    CRC and the end marker) without decoding pixels: the image cache decodes each image once,
    and refuses, naming the file, any image that still fails to decode there.
    """
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            image.verify()
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
    known = GREY_MODES | COLOUR_MODES | HIGH_DEPTH_MODES | set(CONVERTED_MODES)
    if mode not in known:
        raise InputError(
            f"image file {path} (modality {modality}, id {sample_id}) has mode {mode}, which "
            f"fusion-dag does not read (modes: {', '.join(sorted(known))}); convert it"
        )
    return mode


def prepare_inputs(
    samples_path: Path,
    image_dir: Path,
    columns: dict,
    classes: list,
    modalities: dict,
    missing_images: str,
    *,
    ignored_columns=(),
    scaled=(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the table and the images of the modalities in use; return (samples, images).

    ``modalities`` maps each modality in use to its path column; ``ignored_columns`` are path
    columns of configured modalities not in use (never features); ``scaled`` names the
    modalities with a ``value_range``. ``images`` has one row per sample and one column per
    modality holding the image path (empty where the row was dropped from that modality).
    """
    table = read_table(samples_path)
    samples = clean_samples(table, columns, classes, modalities, samples_path, ignored_columns)
    images = pd.DataFrame({ID: samples[ID]})
    for modality, column in modalities.items():
        resolved = resolve_images(
            table,
            samples[ID],
            modality,
            column,
            image_dir,
            missing_images,
            samples_path,
            scaled=modality in scaled,
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


# A new table for prediction: the same validation as the training table, against the bundle's
# model spec. A new clinic's table has the same byte-order marks, decimal commas and stray
# spaces, plus its own surprises (a renamed column, a class spelled differently, an image
# outside the image folder); each is one error naming the file, column and rows.


def new_samples(
    path: Path, image_dir: Path, spec: dict, members: list
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate a new table against the bundle's spec; return (samples, image paths).

    Needed: the group column, the id column when training had one, the forest's feature
    columns (when ``members`` include metadata) and each image member's path column. The label
    column is optional; other columns are ignored. A feature that was numeric in training must
    be numeric here; empty cells are imputed as in training, and text categories the forest has
    not seen are ignored by its encoder. Empty image cells mean the visit has no such image.
    """
    table = read_table(path)
    columns = spec["columns"]
    features = spec["features"] if METADATA in members else []
    modalities = {m: spec["modalities"][m]["column"] for m in members if m != METADATA}
    wanted = [("columns.group", columns["group"])]
    if columns["id"]:
        wanted.append(("columns.id", columns["id"]))
    wanted += [(f"modalities.{name}", column) for name, column in modalities.items()]
    require_columns(table, wanted, path)
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
    samples = pd.DataFrame({ID: ids, GROUP: clean_groups(table, columns["group"], path)})
    if columns["label"] in table.columns:
        samples[LABEL] = normalise_labels(
            table[columns["label"]], spec["classes"], columns["label"], path
        )
    else:
        samples[LABEL] = np.nan
        log.info("No label column '%s': predictions only, no metrics", columns["label"])
    for feature in features:
        samples[feature["name"]] = typed_column(table, feature, path)
    images = pd.DataFrame({ID: ids})
    for modality, column in modalities.items():
        resolved = resolve_images(
            table,
            ids,
            modality,
            column,
            image_dir,
            "drop",
            path,
            scaled=spec["modalities"][modality]["value_range"] is not None,
        )
        images[modality] = ids.map(resolved)
    return samples, images


def typed_column(table: pd.DataFrame, feature: dict, path: Path) -> pd.Series:
    """A feature column read as the type it had in training (numeric or text)."""
    name = feature["name"]
    if feature["type"] == "text":
        return stripped(table[name]).astype(object)
    column = coerce_numeric(table[name])
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
    return pd.read_csv(path, sep="\t", dtype={ID: str, GROUP: str, LABEL: str, **text})
