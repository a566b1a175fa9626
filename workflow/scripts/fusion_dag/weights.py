"""Fusion weights: how much each member's probabilities count in a combination, and the
fusion of each row from the members it has.

A module of its own, free of Keras and h5py, because the light report jobs (weight sweep,
diagnostics, the headline's ``rows: all``) need the same weights and the same reweighting the
fusion jobs and ``predict`` use.
"""

import logging

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, prob_columns
from fusion_dag.tables import describe_rows

log = logging.getLogger(__name__)

METADATA = "metadata"


def member_weights(
    members: list,
    metadata_weight: float | None = None,
    weights: dict | None = None,
    learn: list | None = None,
) -> dict:
    """Weight of each member's fixed probabilities (``learn``, ``fusion.learn``, is not read
    here: the weights a fold learns are the fusion job's own, :mod:`fusion_dag.learn`).

    With ``weights`` (``fusion.weights``: one weight per member in use, summing to 1), a
    combination uses its members' weights rescaled to sum to 1, so every subset keeps the
    members' relative weights. Otherwise metadata takes ``metadata_weight`` when images are
    also present and the images share the rest equally; a single-kind combination weighs its
    members equally.
    """
    if weights:
        total = sum(weights[m] for m in members)
        if total <= 0:
            raise ValueError(f"fusion.weights gives combination {'+'.join(members)} weight 0")
        return {m: weights[m] / total for m in members}
    images = [m for m in members if m != METADATA]
    if METADATA in members and images:
        share = (1.0 - metadata_weight) / len(images)
        return {METADATA: metadata_weight, **{m: share for m in images}}
    return {m: 1.0 / len(members) for m in members}


def fuse_rows(samples: pd.DataFrame, member_probs: dict, members: list, spec: dict) -> pd.DataFrame:
    """The predictions table: each row fused from the members it has.

    Columns: ``id``, ``group``, ``label`` (empty without labels), ``members_used``
    (``+``-joined, empty when a row has none), ``predicted``, fused ``prob_{class}`` and each
    member's ``{member}_prob_{class}``. A row's weights are those its members have as a
    combination in training (``fusion.weights`` rescaled, or ``metadata_weight`` and equal image
    shares), so a visit with every image gets exactly the combination's fusion.
    """
    classes = spec["classes"]
    columns = prob_columns(classes)
    table = samples[[ID, GROUP, LABEL]].reset_index(drop=True)
    stacked = {}
    for member in members:
        aligned = table[[ID]].merge(member_probs[member], on=ID, how="left")[columns]
        stacked[member] = aligned.to_numpy(dtype=float)
        for column in columns:
            table[f"{member}_{column}"] = aligned[column].to_numpy()
    present = np.column_stack([~np.isnan(stacked[m]).any(axis=1) for m in members])
    fused = np.full((len(table), len(classes)), np.nan)
    used = np.full(len(table), "", dtype=object)
    for pattern in np.unique(present, axis=0):
        rows = (present == pattern).all(axis=1)
        chosen = [m for m, has in zip(members, pattern, strict=True) if has]
        if not chosen:
            continue
        weights = member_weights(chosen, **spec["fusion"])
        fused[rows] = sum(weights[m] * stacked[m][rows] for m in chosen)
        used[rows] = "+".join(chosen)
        log.info(
            "%d rows scored by %s (weights %s)",
            int(rows.sum()),
            "+".join(chosen),
            ", ".join(f"{m}={w:.3f}" for m, w in weights.items()),
        )
    unscored = used == ""
    if unscored.any():
        log.warning(
            "%d rows have none of the members %s and get no prediction: ids %s",
            int(unscored.sum()),
            "+".join(members),
            describe_rows(table.loc[unscored, ID].tolist()),
        )
    table.insert(3, "members_used", used)
    predicted = np.where(
        unscored, "", np.array(classes, dtype=object)[np.nan_to_num(fused).argmax(axis=1)]
    )
    table.insert(4, "predicted", predicted)
    for index, column in enumerate(columns):
        table.insert(5 + index, column, fused[:, index])
    return table


def shared_rows(tables: list) -> pd.DataFrame:
    """``id`` and ``split`` of the rows present in every table (an image may drop rows)."""
    keys = tables[0][[ID, "split"]]
    for table in tables[1:]:
        keys = keys.merge(table[[ID, "split"]], on=[ID, "split"], validate="one_to_one")
    return keys.reset_index(drop=True)


def aligned_probs(keys: pd.DataFrame, table: pd.DataFrame, columns: list) -> np.ndarray:
    """A probability table's columns in the row order of ``keys``."""
    return keys.merge(table, on=[ID, "split"], how="left")[columns].to_numpy(dtype="float32")


def weighted_sum(tables: dict, weights: dict, classes: list) -> pd.DataFrame:
    """``sum_m weights[m] * tables[m]`` on the rows every member's table has.

    The V3 fusion computed from probability tables, with no model: used for the members'
    in-sample probabilities, whose fused kappa is the combination's ``fit_kappa``.
    """
    columns = prob_columns(classes)
    keys = shared_rows(list(tables.values()))
    result = keys.copy()
    result[columns] = sum(weights[m] * aligned_probs(keys, t, columns) for m, t in tables.items())
    return result
