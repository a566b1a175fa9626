"""Fusion of branch probabilities with fixed weights (the V3 contract).

Why fixed weights: a fusion layer that learns its weights, or an image branch trained inside
the fusion model, overfits the training rows (train kappa 0.96, validation 0.02 in the original
study). V3 fuses ``w * rf + (1 - w) * image`` with ``w`` from the config and no gradient step;
several image modalities share ``1 - w`` equally.
"""

import numpy as np
import pandas as pd

from fusion_dag.artifacts import ID

METADATA = "metadata"


def combination_name(members: list) -> str:
    """Members joined with ``+`` (``metadata+thermal_map``)."""
    return "+".join(members)


def member_weights(members: list, metadata_weight: float) -> dict:
    """Weight of each member's probabilities.

    Metadata takes ``metadata_weight`` when images are also present; images share the rest
    equally. A single-kind combination weighs its members equally.
    """
    images = [m for m in members if m != METADATA]
    if METADATA in members and images:
        share = (1.0 - metadata_weight) / len(images)
        return {METADATA: metadata_weight, **{m: share for m in images}}
    return {m: 1.0 / len(members) for m in members}


def fuse_probabilities(tables: dict, weights: dict, classes: list) -> pd.DataFrame:
    """Weighted sum of members' probability tables, aligned on ``id`` and ``split``.

    Only rows present in every member are fused (an image modality may drop rows).
    """
    columns = [f"prob_{c}" for c in classes]
    members = list(weights)
    keys = tables[members[0]][[ID, "split"]]
    for member in members[1:]:
        keys = keys.merge(tables[member][[ID, "split"]], on=[ID, "split"], validate="one_to_one")
    fused = np.zeros((len(keys), len(classes)))
    for member in members:
        aligned = keys.merge(tables[member], on=[ID, "split"], how="left", validate="one_to_one")
        fused += weights[member] * aligned[columns].to_numpy()
    result = keys.reset_index(drop=True).copy()
    result[columns] = fused
    return result
