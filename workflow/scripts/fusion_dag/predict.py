"""Applying a model bundle to a validated new table: each member's probabilities, then fusion.

The new table is validated first (:mod:`fusion_dag.predict_table`), before any model is
loaded. A visit without one of the images is scored by the members it has, with the weights
that combination of members has in training (``members_used`` says which); no row is dropped.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, LABEL, prob_columns, probability_table
from fusion_dag.bundle import (
    FOREST,
    BundleError,
    checkpoint_files,
    combination_fusion,
    seen_in_training,
)
from fusion_dag.folds import FINAL_PLACEMENT
from fusion_dag.learn import temper_table
from fusion_dag.views import AGGREGATION, visit_means
from fusion_dag.weights import METADATA, fuse_rows

log = logging.getLogger(__name__)


def forest_probabilities(bundle: Path, spec: dict, samples: pd.DataFrame) -> pd.DataFrame:
    """``id`` and ``prob_{class}`` of every row from the bundle's forest.

    Text categories the forest never saw are encoded as no known category (as in training's
    ``handle_unknown="ignore"``); the log counts them per column.
    """
    from fusion_dag.metadata import feature_frame, load_pipeline

    pipeline = load_pipeline(Path(bundle) / FOREST)
    features = feature_frame(samples[[ID, GROUP, LABEL, *(f["name"] for f in spec["features"])]])
    encode = pipeline.named_steps["encode"]
    (text_columns,) = [cols for name, _, cols in encode.transformers_ if name == "text"]
    known_categories = encode.named_transformers_["text"][-1].categories_
    for name, known in zip(text_columns, known_categories, strict=True):
        unseen = features[name].notna() & ~features[name].isin(known)
        if unseen.any():
            log.info(
                "Feature %s: %d rows have categories the forest never saw (%s)",
                name,
                int(unseen.sum()),
                ", ".join(sorted(set(features.loc[unseen, name].astype(str)))[:5]),
            )
    probs = pipeline.predict_proba(features)
    return probability_table(samples[ID], None, probs, spec["classes"])


def bundle_branch(bundle: Path, spec: dict, modality: str, views: pd.DataFrame) -> tuple:
    """(the bundled branch of ``modality``, loaded and frozen, and the pixels of ``views``).

    The branch is built as in training, its checkpoint verified against its sidecar (layer
    names and shapes included), loaded by layer name and frozen, as in the fusion stage; views
    are cut and decoded exactly as the image cache decodes them.
    """
    from fusion_dag.artifacts import read_json
    from fusion_dag.branch import build_image_branch
    from fusion_dag.cache import decode_into
    from fusion_dag.checkpoint import load_frozen_branch

    settings = spec["modalities"][modality]
    if settings.get("aggregation", AGGREGATION) != AGGREGATION:
        raise BundleError(
            f"bundle {bundle}: modality {modality} aggregates views by "
            f"{settings['aggregation']!r}; this workflow averages them ({AGGREGATION!r})"
        )
    size, channels = settings["size"], settings["channels"]
    images = np.empty((len(views), size, size, channels), dtype=np.uint8)
    decode_into(images, views, size, channels, settings["value_range"])
    checkpoint, sidecar = (Path(bundle) / name for name in checkpoint_files(modality))
    classes = spec["classes"]
    model = build_image_branch(modality, images.shape[1:], len(classes), settings)
    repeat, fold = FINAL_PLACEMENT
    required = {
        "repeat": repeat,
        "fold": fold,
        "classes": classes,
        "backbone": settings["backbone"],
    }
    load_frozen_branch(model, modality, checkpoint, read_json(sidecar), required)
    return model, images


def image_probabilities(bundle: Path, spec: dict, modality: str, views: pd.DataFrame):
    """``id`` and ``prob_{class}`` of the visits with a view, from the bundled branch
    (:func:`bundle_branch`); a visit's probability is its views' mean, as in training."""
    classes = spec["classes"]
    model, images = bundle_branch(bundle, spec, modality, views)
    probs = model.predict(images, batch_size=32, verbose=0)
    view_probs = probability_table(views[ID], None, probs, classes)
    visits = visit_means(view_probs, prob_columns(classes))
    log.info("%s: %d views of %d visits scored", modality, len(views), len(visits))
    return visits


def score_table(
    bundle: Path,
    spec: dict,
    members: list,
    samples: pd.DataFrame,
    images: pd.DataFrame,
    threads: tuple,
) -> pd.DataFrame:
    """The predictions table of a validated new table (see :func:`fuse_rows`), with
    ``seen_in_training``: whether the visit's patient trained the bundle
    (:func:`~fusion_dag.bundle.seen_in_training`).

    ``threads`` is (TensorFlow intra-op threads, inter-op threads) for the image branches.
    """
    member_probs = {}
    if METADATA in members:
        member_probs[METADATA] = forest_probabilities(bundle, spec, samples)
    modalities = [m for m in members if m != METADATA]
    if modalities:
        from fusion_dag.branch import configure_tensorflow

        configure_tensorflow(*threads, seed=0)
        for modality in modalities:
            views = images[images["modality"] == modality].reset_index(drop=True)
            member_probs[modality] = image_probabilities(bundle, spec, modality, views)
    fusion, temperature = combination_fusion(spec, members)
    predictions = fuse_rows(samples, member_probs, members, {**spec, "fusion": fusion})
    if temperature:
        predictions = temper_table(predictions, temperature, spec["classes"])
    seen = seen_in_training(bundle, spec, predictions[GROUP])
    predictions.insert(predictions.columns.get_loc("members_used"), SEEN, seen)
    if seen.isna().all():
        log.warning(
            "Bundle %s records no training patients (built before it did): whether a visit's "
            "patient trained it is unknown, and its metrics may be in-sample",
            bundle,
        )
    elif seen.any():
        log.warning(
            "%d rows of %d patients were in the bundle's training: their predictions are "
            "in-sample; metrics leave them out",
            int(seen.sum()),
            predictions.loc[seen.to_numpy(dtype=bool), GROUP].nunique(),
        )
    return predictions


SEEN = "seen_in_training"


def with_prediction_sets(
    predictions: pd.DataFrame, calibration: pd.DataFrame, classes: list, coverage: float
) -> pd.DataFrame:
    """The predictions with ``prediction_set`` (after ``predicted``): each scored visit's
    conformal set at ``coverage`` from its fused probabilities (``I|P``; empty for a visit with
    no prediction), calibrated on the bundle's out-of-fold scores
    (:func:`~fusion_dag.conformal.prediction_sets`)."""
    from fusion_dag.conformal import prediction_sets, set_labels

    columns = prob_columns(classes)
    scored = predictions[columns].notna().all(axis=1).to_numpy()
    labels = np.full(len(predictions), "", dtype=object)
    if scored.any():
        sets = prediction_sets(
            predictions.loc[scored, columns].to_numpy(), calibration, classes, coverage
        )
        labels[scored] = set_labels(sets, classes)
    table = predictions.copy()
    table.insert(table.columns.get_loc("predicted") + 1, "prediction_set", labels)
    return table


def prediction_summary(
    predictions: pd.DataFrame, metrics: pd.DataFrame, members: list, bundle: Path
) -> str:
    """A short Markdown section for people: what was scored, by which members, how well.

    Visits whose patients trained the bundle are counted with a warning and left out of the
    metrics (:func:`~fusion_dag.report.external_metrics`); when every labelled visit was, no
    metric is shown, and the summary says why.
    """
    counts = predictions["members_used"].replace("", "(none: no prediction)").value_counts()
    lines = [
        "# Predictions on a new table",
        "",
        f"Bundle `{bundle}`, combination `{'+'.join(members)}`: {len(predictions)} rows, "
        f"{predictions[GROUP].nunique()} patients.",
        "",
        counts.rename_axis("members_used").reset_index(name="rows").to_markdown(index=False),
        "",
    ]
    seen = predictions[SEEN]
    labelled = predictions[LABEL].notna()
    if seen.isna().all():
        lines += [
            "WARNING: the bundle records no training patients (it was built before it did): "
            "whether these visits trained it is unknown, so the metrics below may be in-sample.",
            "",
        ]
    elif seen.any():
        in_training = seen.fillna(False).to_numpy(dtype=bool)
        lines += [
            f"WARNING: {int(in_training.sum())} rows of "
            f"{predictions.loc[in_training, GROUP].nunique()} patients were in the bundle's "
            "training: their predictions are in-sample, not a validation; they are left out "
            "of the metrics.",
            "",
        ]
        if not (labelled & ~seen.fillna(False)).any() and labelled.any():
            lines.append(
                "No metrics: every labelled visit's patient trained the bundle, so metrics on "
                "them would measure how well the models remember their training data, not how "
                "they perform on new patients. Predict patients the bundle never saw."
            )
            return "\n".join(lines) + "\n"
    if len(metrics) and "kappa" in metrics:
        shown = ["predictor", "n_rows", "n_groups"]
        for metric in ("kappa", "qwk", "balanced_accuracy", "macro_f1", "auc", "ece"):
            shown += [metric, f"{metric}_ci_low", f"{metric}_ci_high"]
        shown += [column for column in ("set_coverage", "set_size") if column in metrics]
        lines += [
            "Metrics on the labelled rows of patients the bundle never saw, with "
            "patient-bootstrap intervals:",
            "",
            metrics[shown].to_markdown(index=False, floatfmt=".3f"),
        ]
    else:
        lines.append("The table has no labels: no metrics.")
    return "\n".join(lines) + "\n"
