"""Grad-CAM heatmaps of the image branches: where in the (cropped) view a branch looks.

Grad-CAM (Selvaraju et al. 2017; keras.io's "Grad-CAM class activation visualization") weighs
each channel of a convolutional feature map by the mean gradient of the class's score (the
logit, before the softmax) with respect to it, sums the weighted channels and keeps the
positive part: the regions whose features raise that class. The feature map is the last one
with a spatial layout: the small CNN's last convolution, or a ``keras.applications``
backbone's output (the nested model ``{modality}_backbone``). Each fold's checkpoint is loaded
by layer name, as the fusion stage loads it, and must reproduce the image stage's per-view
probabilities before any heatmap is drawn.

How a heatmap is drawn, so a person can read it: the view in grey (a colour-mapped thermal
view's own colours would compete with the heat's), the heat in one colour map
(:data:`~fusion_dag.figures.HEAT_MAP`) with a colour bar, and a panel whose branch predicts one
class for every visit (or learned nothing, by the image stage's verdict) says so in its title:
its heat explains no decision.
"""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fusion_dag.artifacts import (
    ID,
    LABEL,
    label_indices,
    prob_columns,
    read_json,
    read_tsv,
    write_tsv,
)
from fusion_dag.backbones import SMALL_CNN
from fusion_dag.branch import FILTERS, build_image_branch, layers
from fusion_dag.checkpoint import load_frozen_branch
from fusion_dag.figures import HEAT_MAP, panel_note, panel_title, plot_heatmap, save_figure
from fusion_dag.fusion import reproduction_check

log = logging.getLogger(__name__)

# Pixels of a saved heatmap's side: the branch's images (24 to 64 px) are too small to read.
SHOWN_SIZE = 160
# Share of the overlay the heatmap's colours take where the heat is 1 (in proportion below, so
# regions without heat show the view itself).
HEAT_ALPHA = 0.6


def feature_map_layer(modality: str, settings: dict) -> str:
    """The layer whose output Grad-CAM weighs: the small CNN's last convolution, or the nested
    backbone (its output is the backbone's last feature map)."""
    if settings.get("backbone", SMALL_CNN) == SMALL_CNN:
        return f"{modality}_conv{len(FILTERS)}"
    return f"{modality}_backbone"


def grad_cam(model, images: np.ndarray, class_indices: np.ndarray, layer: str) -> np.ndarray:
    """Grad-CAM heatmaps (n, h, w) of ``images`` for the class of each, scaled to a maximum of
    1 per image (all zeros when no region raises the class), at the feature map's resolution.

    The branch is a chain of layers, so it is run layer by layer in inference mode while a
    gradient tape records the output of ``layer``; the class score is the logit of the branch's
    last (softmax) layer, as keras.io's example removes the softmax.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(images), dtype="float32")
    last = model.layers[-1]
    with tf.GradientTape() as tape:
        feature_map = None
        for current in model.layers[1:-1]:
            if isinstance(current, layers.Concatenate):
                x = current([x] * len(current.input))
            else:
                x = current(x, training=False)
            if current.name == layer:
                feature_map = x
        logits = tf.matmul(tf.cast(x, "float32"), last.kernel) + last.bias
        scores = tf.gather(logits, np.asarray(class_indices), batch_dims=1)
    if feature_map is None:
        raise ValueError(f"branch {model.name} has no layer {layer}")
    gradients = tape.gradient(scores, feature_map)
    channel_weights = tf.reduce_mean(tf.cast(gradients, "float32"), axis=(1, 2))
    heat = tf.einsum("nhwc,nc->nhw", tf.cast(feature_map, "float32"), channel_weights)
    heat = tf.nn.relu(heat).numpy()
    peak = heat.max(axis=(1, 2), keepdims=True)
    return np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)


def chosen_visits(
    probs: pd.DataFrame, labels: pd.DataFrame, classes: list, count: int, seed: int
) -> pd.DataFrame:
    """Up to ``count`` validation visits of one fold, spread over (class, correct or wrong):
    taken in turn from each of those cells (in class order, correct first), each cell's visits
    in a seeded random order. Columns: ``id``, ``label``, ``predicted``, ``correct``,
    ``prob_predicted``."""
    columns = prob_columns(classes)
    visits = probs[probs["split"] == "val"].merge(labels[[ID, LABEL]], on=ID)
    scores = visits[columns].to_numpy()
    predicted = scores.argmax(axis=1)
    visits = visits.assign(
        predicted=np.asarray(classes)[predicted],
        prob_predicted=scores[np.arange(len(visits)), predicted],
    )
    visits["correct"] = visits["predicted"] == visits[LABEL]
    generator = np.random.default_rng(seed)
    cells = []
    for label in classes:
        for correct in (True, False):
            cell = visits[(visits[LABEL] == label) & (visits["correct"] == correct)]
            cells.append(list(cell.index[generator.permutation(len(cell))]))
    order = []
    while len(order) < count and any(cells):
        for cell in cells:
            if cell and len(order) < count:
                order.append(cell.pop(0))
    return visits.loc[order, [ID, LABEL, "predicted", "correct", "prob_predicted"]]


def grey_view(image: np.ndarray) -> np.ndarray:
    """The view (h, w, channels) as one grey uint8 channel: a single channel as it is, colour
    (a colour-mapped thermal view, a photograph) by its luminance (PIL's ITU-R 601-2)."""
    if image.shape[-1] == 1:
        return np.asarray(image[..., 0], dtype=np.uint8)
    return np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L"))


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of ``image`` (h, w, channels) in grey with ``heat`` (any
    resolution, 0-1) in :data:`~fusion_dag.figures.HEAT_MAP` over it, opaque in proportion to
    the heat, both enlarged to :data:`SHOWN_SIZE` px."""
    from matplotlib import colormaps

    picture = Image.fromarray(grey_view(image)).resize((SHOWN_SIZE, SHOWN_SIZE), Image.BILINEAR)
    picture = np.repeat(np.asarray(picture, dtype=float)[..., None], 3, axis=-1)
    heat_image = Image.fromarray(np.uint8(255 * heat)).resize(
        (SHOWN_SIZE, SHOWN_SIZE), Image.BILINEAR
    )
    heat = np.asarray(heat_image) / 255.0
    colours = colormaps[HEAT_MAP](heat)[..., :3] * 255
    share = HEAT_ALPHA * heat[..., None]
    return np.uint8((1 - share) * picture + share * colours)


def one_class(probs: pd.DataFrame, classes: list) -> bool:
    """Whether a branch's validation visits (``probs``, ``split`` val) all get one class."""
    val = probs[probs["split"] == "val"]
    return len(val) > 0 and len(np.unique(val[prob_columns(classes)].to_numpy().argmax(1))) == 1


def safe_name(visit) -> str:
    """A visit id as a file name: characters other than letters, digits, ``_``, ``.`` and
    ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(visit))


def heatmap_name(fold: int, row) -> str:
    """A heatmap's file name: fold, label, correct or wrong, and the visit id (made safe)."""
    outcome = "correct" if row["correct"] else "wrong"
    return f"fold{fold}_{row[LABEL]}_{outcome}_{safe_name(row[ID])}.png"


def fold_heatmaps(
    model,
    modality: str,
    settings: dict,
    chosen: pd.DataFrame,
    views,
    images,
    view_probs: pd.DataFrame,
    classes: list,
) -> tuple[pd.DataFrame, list]:
    """Heatmaps of the first view of each ``chosen`` visit for its predicted class, by the
    fold's loaded branch ``model``. The branch must first reproduce the image stage's
    probabilities of those views (``view_probs``). Returns (the chosen rows with their
    ``view``, one overlay picture per row)."""
    first = views.assign(position=np.arange(len(views))).drop_duplicates(ID)
    rows = chosen.merge(first[[ID, "view", "position"]], on=ID, how="left", validate="1:1")
    pixels = np.asarray(images[rows["position"].to_numpy()])
    expected = rows[["view"]].merge(view_probs, on="view", how="left")[prob_columns(classes)]
    reproduction_check(
        model.predict(pixels, verbose=0), expected.to_numpy(), modality, "heatmap views"
    )
    classes_shown = label_indices(rows["predicted"], classes)
    heat = grad_cam(model, pixels, classes_shown, feature_map_layer(modality, settings))
    pictures = [overlay(image, h) for image, h in zip(pixels, heat, strict=True)]
    return rows.drop(columns="position"), pictures


def fold_branch(modality: str, settings: dict, image_shape: tuple, record: dict, classes: list):
    """Fold ``record["fold"]`` of repeat 1's branch, rebuilt as the image stage built it, its
    checkpoint verified against its sidecar, loaded by layer name and frozen (as fusion loads
    it)."""
    model = build_image_branch(modality, image_shape, len(classes), settings)
    required = {
        "repeat": 1,
        "fold": record["fold"],
        "classes": classes,
        "backbone": settings.get("backbone", SMALL_CNN),
    }
    load_frozen_branch(
        model, modality, record["checkpoint"], read_json(record["sidecar"]), required
    )
    return model


def modality_heatmaps(
    images, views: pd.DataFrame, folds: pd.DataFrame, fold_files: list, job: dict
) -> tuple[pd.DataFrame, list]:
    """Heatmaps of ``job["visits"]`` validation visits per fold of repeat 1 (each fold's
    checkpoint on the visits it did not train on). ``fold_files`` are records with ``fold``,
    ``checkpoint``, ``sidecar``, ``probs``, ``view_probs`` and ``metrics`` (the image stage's
    ``metrics.json``); ``job`` holds ``modality``, ``settings``, ``classes``, ``visits`` and
    ``seed``. Returns (one row per heatmap: ``fold``, ``id``, ``view``, ``label``,
    ``predicted``, ``correct``, ``prob_predicted``, ``file``, ``learned`` (the fold's image
    stage verdict), ``one_class`` (the fold's branch predicts one class for every validation
    visit); the overlay pictures)."""
    modality, settings, classes = job["modality"], job["settings"], job["classes"]
    labels = folds[folds["repeat"] == 1]
    tables, pictures = [], []
    for record in fold_files:
        model = fold_branch(modality, settings, images.shape[1:], record, classes)
        chosen = chosen_visits(
            read_tsv(record["probs"]), labels, classes, job["visits"], job["seed"] + record["fold"]
        )
        rows, shown = fold_heatmaps(
            model,
            modality,
            settings,
            chosen,
            views,
            images,
            read_tsv(record["view_probs"]),
            classes,
        )
        rows.insert(0, "fold", record["fold"])
        rows["file"] = [heatmap_name(record["fold"], row) for _, row in rows.iterrows()]
        rows["learned"] = bool(read_json(record["metrics"]).get("learned", True))
        rows["one_class"] = one_class(read_tsv(record["probs"]), classes)
        if rows["one_class"].any() or not rows["learned"].all():
            log.warning(
                "Fold %d: the %s branch %s; its heatmaps are marked so",
                record["fold"],
                modality,
                panel_note(rows.iloc[0]) if len(rows) else "learned nothing",
            )
        log.info(
            "Fold %d: %d heatmaps (%d correct, %d wrong)",
            record["fold"],
            len(rows),
            int(rows["correct"].sum()),
            int((~rows["correct"]).sum()),
        )
        tables.append(rows)
        pictures += shown
    return pd.concat(tables, ignore_index=True), pictures


def write_heatmaps(rows: pd.DataFrame, pictures: list, folder) -> None:
    """Each overlay as ``folder/{file}`` (titled by :func:`panel_title`, with a colour bar)
    and the rows as ``folder/heatmaps.tsv``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for (_, row), picture in zip(rows.iterrows(), pictures, strict=True):
        save_figure(plot_heatmap(picture, panel_title(row)), folder / row["file"])
    write_tsv(rows, folder / "heatmaps.tsv")


def new_visit_heatmaps(
    bundle, spec: dict, members: list, predictions: pd.DataFrame, images: pd.DataFrame, folder
) -> pd.DataFrame:
    """Grad-CAM of the first view of every predicted new visit, per image member of the
    bundle's combination, for the visit's predicted (fused) class, by the bundled final branch;
    written to ``folder/{modality}/``. Returns the rows of every heatmap (``modality``, ``id``,
    ``predicted``, ``file``, ``one_class``: the bundle's ``final_checks`` record that branch
    predicting one class for every training visit)."""
    from fusion_dag.predict import bundle_branch

    classes = spec["classes"]
    scored = predictions[predictions["predicted"] != ""]
    tables = []
    for modality in [m for m in members if m in spec["modalities"]]:
        views = images[images["modality"] == modality].drop_duplicates(ID).reset_index(drop=True)
        views = views[views[ID].isin(scored[ID])].reset_index(drop=True)
        rows = views[[ID]].merge(scored[[ID, "predicted"]], on=ID, how="left")
        rows["file"] = [safe_name(visit) + ".png" for visit in rows[ID]]
        # A bundled final branch that predicts one class for every training visit (bundled
        # with final.allow_collapsed) is marked on each of its heatmaps.
        rows["one_class"] = modality in spec.get("final_checks", {}).get("collapsed_branches", {})
        if len(views):
            model, pixels = bundle_branch(bundle, spec, modality, views)
            settings = spec["modalities"][modality]
            heat = grad_cam(
                model,
                pixels,
                label_indices(rows["predicted"], classes),
                feature_map_layer(modality, settings),
            )
            pictures = [overlay(image, h) for image, h in zip(pixels, heat, strict=True)]
        else:
            pictures = []
        write_heatmaps(rows, pictures, Path(folder) / modality)
        log.info("%s: heatmaps of %d new visits", modality, len(rows))
        tables.append(rows.assign(modality=modality))
    Path(folder).mkdir(parents=True, exist_ok=True)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
