"""Fusion weights: how much each member's probabilities count in a combination.

A module of its own, free of Keras and h5py, because the light report jobs (weight sweep,
diagnostics) need the same weights the fusion jobs use.
"""

METADATA = "metadata"


def member_weights(
    members: list, metadata_weight: float | None = None, weights: dict | None = None
) -> dict:
    """Weight of each member's probabilities.

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
