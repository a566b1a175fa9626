"""Fusion weights and a temperature learned per outer fold, on outer-training visits only
(``fusion.learn``).

Why not on the validation folds: picking the weights the weight sweep shows best on the
validation visits tunes on them, and the kappa they give is optimistic. Here each fold's
choice sees only that fold's training visits, and only probabilities no model fitted on the
visit produced:

- the forest's: its inner out-of-fold probabilities, the ``train`` rows of the metadata
  stage's ``probs.tsv`` (each from a forest that never saw the visit's patient);
- an image branch's: the image stage's early-stopping visits (the inner patient-grouped
  split the branch never fit: :func:`~fusion_dag.folds.early_stopping_split`, recomputed here
  from the same fold table, visits, fraction and seed). Why these and not heads fitted on
  inner folds over the feature cache: they cost nothing (no training, and every branch has
  them, whether or not it has a feature cache), and the fitted branch itself is scored, not a
  stand-in. The price: early stopping chose the epoch on these visits, a mild selection (one
  number chosen on them, not the weights), so the image branch looks slightly better on them
  than on new patients, and its learned weight can be a little high.

A visit takes part when every member of the combination has such a probability for it: the
early-stopping visits with views (about ``image_model.validation_fraction`` of the training
visits, 50 to 100 visits at the study's size) for a combination with an image, every training
visit for metadata alone.
"""

import itertools
import logging

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.metrics import log_loss

from fusion_dag.artifacts import ID, LABEL, InputError, label_indices, prob_columns
from fusion_dag.folds import early_stopping_split
from fusion_dag.weights import METADATA

log = logging.getLogger(__name__)

LEARNABLE = ("weights", "temperature")
# The grid's step: weights are multiples of it, like the configured 0.70 / 0.30.
WEIGHT_STEP = 0.05
# The temperatures searched: from sharpening 20 times to flattening 20 times.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def choosing_visits(
    members: list,
    metadata_probs: pd.DataFrame | None,
    image_probs: dict,
    folds: pd.DataFrame,
    fold: int,
    image_split: dict,
    classes: list,
) -> tuple[dict, np.ndarray, list]:
    """(member -> probability array, class indices, ids) of the visits a fold's choice is made
    on: outer-training visits that every member scored out of sample (see the module's note).

    ``metadata_probs`` is the metadata stage's probability table (``id``, ``split``,
    ``prob_{class}``), ``image_probs`` each image member's, ``folds`` the repeat's fold table
    (``id``, ``group``, ``label``, ``fold``; ``fold`` 0 for the final models, where every row
    trains), ``image_split`` each image member's ``validation_fraction`` and ``seed``. Labels
    come from ``folds`` for training visits only; no validation row is read.
    """
    training = set(folds.loc[folds["fold"] != fold, ID])
    eligible = training
    tables = {}
    if METADATA in members:
        table = metadata_probs[metadata_probs["split"] == "train"]
        tables[METADATA] = table
        eligible = eligible & set(table[ID])
    for modality in (m for m in members if m != METADATA):
        split = image_split[modality]
        train, held_out = early_stopping_split(
            folds, image_probs[modality], fold, split["validation_fraction"], split["seed"]
        )
        table = image_probs[modality]
        tables[modality] = table[table["split"] == "train"]
        eligible = eligible & set(train.loc[held_out, ID])
    ids = [visit for visit in folds[ID] if visit in eligible]
    if not ids:
        raise InputError(
            f"fold {fold}: no training visit has an out-of-sample probability of every member "
            f"of {'+'.join(members)}, so fusion.learn has nothing to choose on"
        )
    columns = prob_columns(classes)
    keys = pd.DataFrame({ID: ids})
    probs = {
        member: keys.merge(table[[ID, *columns]], on=ID, how="left", validate="one_to_one")[
            columns
        ].to_numpy(dtype=float)
        for member, table in tables.items()
    }
    labels = keys.merge(folds[[ID, LABEL]], on=ID, how="left", validate="one_to_one")[LABEL]
    return probs, label_indices(labels, classes), ids


def simplex_grid(n_members: int, step: float = WEIGHT_STEP) -> np.ndarray:
    """Every weight vector of ``n_members`` non-negative multiples of ``step`` summing to 1
    (21 for two members at 0.05, 231 for three, 1,771 for four)."""
    units = round(1.0 / step)
    points = [
        (*cuts, units - sum(cuts))
        for cuts in itertools.product(range(units + 1), repeat=n_members - 1)
        if sum(cuts) <= units
    ]
    return np.array(points, dtype=float) / units


def fused_log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean log loss of ``probs`` (rows summing to 1) for class indices ``y``."""
    return float(log_loss(y, probs, labels=list(range(probs.shape[1]))))


def grid_weights(member_probs: dict, y: np.ndarray, step: float = WEIGHT_STEP) -> dict:
    """The members' weights with the smallest log loss of their weighted sum on (``y``).

    Why log loss: on the 50 to 100 visits a fold chooses on, kappa is a step function of the
    weights (a weight moves it only when some visit's argmax flips) and picks among many ties
    by noise; log loss is smooth, rewards the probabilities and not only their argmax, and is
    the criterion the temperature is fitted by too. Why a simplex grid: the log loss of a
    weighted sum of probabilities is convex in the weights, so the grid's best point is within
    a step of the optimum; with two to four members it has 21 to 1,771 points (milliseconds),
    needs no solver tolerance, and gives weights that read like the configured ones (0.65 /
    0.35). Ties go to the first point in grid order.
    """
    members = list(member_probs)
    stacked = np.stack([member_probs[m] for m in members])  # members x visits x classes
    grid = simplex_grid(len(members), step)
    losses = [fused_log_loss(np.tensordot(point, stacked, axes=1), y) for point in grid]
    best = grid[int(np.argmin(losses))]
    return {member: float(weight) for member, weight in zip(members, best, strict=True)}


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` tempered: ``p ** (1 / T)`` renormalised per row, which is softmax(logit / T)
    for probabilities that are a softmax; T > 1 flattens, T < 1 sharpens, argmax unchanged."""
    clipped = np.clip(probs, 1e-15, 1.0)
    tempered = clipped ** (1.0 / temperature)
    return tempered / tempered.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in :data:`TEMPERATURE_BOUNDS` with the smallest log loss of the tempered
    ``probs`` for ``y`` (temperature scaling, Guo et al. 2017; bounded scalar minimisation)."""
    result = minimize_scalar(
        lambda t: fused_log_loss(apply_temperature(probs, t), y),
        bounds=TEMPERATURE_BOUNDS,
        method="bounded",
    )
    return float(result.x)


def learn_fusion(
    learn: list, member_probs: dict, y: np.ndarray, fixed_weights: dict
) -> tuple[dict, float | None]:
    """(weights, temperature) learned as ``learn`` asks: weights by :func:`grid_weights` when
    ``weights`` is in it and the combination has several members (else ``fixed_weights``), a
    temperature by :func:`fit_temperature` on the fused probabilities when ``temperature`` is
    (else None)."""
    weights = dict(fixed_weights)
    if "weights" in learn and len(member_probs) > 1:
        weights = grid_weights(member_probs, y)
    temperature = None
    if "temperature" in learn:
        fused = sum(weights[m] * member_probs[m] for m in member_probs)
        temperature = fit_temperature(fused, y)
    return weights, temperature


def learned_fusion(
    learn: list, members: list, inputs: dict, fold: int, fixed_weights: dict, classes: list
) -> dict:
    """What a fusion job learns from its inputs: ``weights`` (the fixed ones unless learned),
    ``temperature`` (None unless learned) and ``visits`` (how many it chose on), logged.

    ``inputs`` holds ``metadata_probs``, ``image_probs`` (member -> table), ``folds`` and
    ``image_split`` (see :func:`choosing_visits`); ``fold`` is the outer fold (0 for the final
    models). Only the fold's training visits are read (the leak test in tests/test_learn.py).
    """
    member_probs, y, ids = choosing_visits(
        members,
        inputs.get("metadata_probs"),
        inputs.get("image_probs", {}),
        inputs["folds"],
        fold,
        inputs.get("image_split", {}),
        classes,
    )
    weights, temperature = learn_fusion(learn, member_probs, y, fixed_weights)
    log.info(
        "Learned on %d outer-training visits scored out of sample by every member: weights %s%s",
        len(ids),
        ", ".join(f"{m}={w:.2f}" for m, w in weights.items()),
        "" if temperature is None else f", temperature {temperature:.3f}",
    )
    return {
        "weights": weights,
        "weights_learned": "weights" in learn and len(members) > 1,
        "temperature": temperature,
        "visits": len(ids),
    }


def temper_table(probs: pd.DataFrame, temperature: float, classes: list) -> pd.DataFrame:
    """A probability table with its ``prob_{class}`` columns tempered
    (:func:`apply_temperature`)."""
    columns = prob_columns(classes)
    tempered = probs.copy()
    tempered[columns] = apply_temperature(probs[columns].to_numpy(dtype=float), temperature)
    return tempered


def calibration_metrics(probs: pd.DataFrame, labels: pd.DataFrame, classes: list) -> dict:
    """Brier score and ECE of a probability table's validation rows (as the headline computes
    them, :func:`~fusion_dag.evaluate.weighted_metrics`)."""
    from fusion_dag.evaluate import weighted_metrics

    table = probs[probs["split"] == "val"].merge(labels[[ID, LABEL]], on=ID, validate="1:1")
    truth = label_indices(table[LABEL], classes)
    values = weighted_metrics(
        np.ones((1, len(table))), truth, table[prob_columns(classes)].to_numpy(dtype=float)
    )
    return {"brier": float(values["brier"][0]), "ece": float(values["ece"][0])}


def learned_metrics(
    learned: dict,
    untempered: pd.DataFrame,
    tempered: pd.DataFrame,
    labels: pd.DataFrame,
    classes: list,
) -> dict:
    """A fold's metrics record of what it learned: ``weights_learned``, ``temperature``,
    ``learned_visits`` and, with a temperature, the validation visits' Brier score and ECE
    before (``brier_untempered``, ``ece_untempered``) and after (``brier_tempered``,
    ``ece_tempered``) it."""
    record = {
        "weights_learned": learned["weights_learned"],
        "temperature": learned["temperature"],
        "learned_visits": learned["visits"],
    }
    if learned["temperature"] is not None:
        for name, table in (("untempered", untempered), ("tempered", tempered)):
            for metric, value in calibration_metrics(table, labels, classes).items():
                record[f"{metric}_{name}"] = value
    return record


def learned_table(records: list, members: list) -> pd.DataFrame:
    """``results/fusion/{combination}/learned.tsv`` from the combination's fold metrics
    records: ``repeat``, ``fold``, ``weight_{member}`` (the weights used), ``weights_learned``,
    ``temperature`` (empty unless learned) and ``visits`` (the visits chosen on)."""
    rows = []
    for record in records:
        row = {"repeat": record["repeat"], "fold": record["fold"]}
        row.update({f"weight_{m}": record["weights"][m] for m in members})
        row["weights_learned"] = record["weights_learned"]
        row["temperature"] = record["temperature"]
        row["visits"] = record["learned_visits"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["repeat", "fold"], kind="stable")
