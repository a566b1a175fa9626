"""Reading and writing the workflow's artifacts without ever exposing a partial file.

Why: Snakemake treats an existing output as done. A table or checkpoint written in place and
interrupted half-way would look complete to a later run, so every artifact is written under a
temporary name in the same folder and renamed, which is atomic on POSIX file systems.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

ID, GROUP, LABEL = "id", "group", "label"


class InputError(ValueError):
    """A problem with the user's data or settings, stated in one line that says what to change.

    Every stage raises it for bad input; the job log (:mod:`fusion_dag.joblog`) prints it as a
    single line, after ``fusion-dag {heading}:``, instead of a traceback.
    """

    heading = "input error"


class ArtifactError(InputError):
    """A file of the results folder that a job cannot use: truncated, edited, or not the one
    its record (sidecar, manifest, views table) describes, such as a checkpoint swapped with
    another fold's. One line naming the file and how to make it again (the file to delete, so
    the next run rewrites it, or the rule to ``--forcerun``), as for bad input."""

    heading = "results error"


def partial_path(path: Path) -> Path:
    """The temporary name an artifact is written under before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(path.name + ".partial")


def write_tsv(frame: pd.DataFrame, path: Path) -> None:
    """Write a tab-separated table atomically."""
    partial = partial_path(path)
    frame.to_csv(partial, sep="\t", index=False)
    partial.replace(path)


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    partial = partial_path(path)
    partial.write_text(text)
    partial.replace(path)


def write_json(record: dict, path: Path) -> None:
    """Write a JSON document atomically."""
    write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", path)


def prob_columns(classes: list) -> list:
    """The probability columns of a table, ``prob_{class}``, in class order."""
    return [f"prob_{name}" for name in classes]


def label_indices(labels: pd.Series, classes: list) -> np.ndarray:
    """Each label's position in ``classes``: the integer targets Keras and scikit-learn fit."""
    return labels.map(classes.index).to_numpy()


def probability_table(ids, splits, probs, classes: list) -> pd.DataFrame:
    """The contract's probability table: ``id``, ``split``, ``prob_{class}`` (no ``split``
    column when ``splits`` is None: rows of a new table belong to no split)."""
    table = pd.DataFrame({ID: list(ids)})
    if splits is not None:
        table["split"] = list(splits)
    for index, column in enumerate(prob_columns(classes)):
        table[column] = probs[:, index]
    return table


def unreadable(path: Path, error: Exception) -> ArtifactError:
    """The error for a file of the workflow's own that cannot be parsed: written atomically, it
    was cut short or edited since; the job that writes it runs again once it is gone."""
    return ArtifactError(
        f"{path} cannot be read ({error}): it changed after the job that wrote it; delete it "
        "and run again to rewrite it"
    )


def read_json(path: Path) -> dict:
    """Read a JSON document written by :func:`write_json`."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise unreadable(path, error) from None


def mapped_array(path: Path, name: str, rebuild: str, error=ArtifactError) -> np.ndarray:
    """Memory-map a ``.npy`` cache; one ``error`` line naming the file (``name`` says what it
    is) and ``rebuild`` (how to make it again) when it cannot be mapped, as when it was cut
    short by a full disk or an interrupted copy."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as problem:
        raise error(f"{name} {path} cannot be read ({problem}); {rebuild}") from None


# How this workflow's own tables are read back: only an empty cell is missing (what pandas
# writes for one), never pandas' missing words, so an id, patient or category ``NA`` survives.
MISSING_CELL = {"keep_default_na": False, "na_values": [""]}


def read_tsv(path: Path, dtype: dict | None = None) -> pd.DataFrame:
    """Read a table written by this workflow, keeping ids, groups and labels (and ``dtype``'s
    columns) as text."""
    types = {ID: str, GROUP: str, LABEL: str, **(dtype or {})}
    try:
        return pd.read_csv(path, sep="\t", dtype=types, **MISSING_CELL)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise unreadable(path, error) from None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks so large files do not fill memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
