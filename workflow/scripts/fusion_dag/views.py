"""Views: a visit's images as a study's image table lists them, with their wound boxes and crops.

Why a module of its own: real study data is not one image path per visit. Each camera takes
several images per visit (before and after debridement, from several angles), listed in an
image table of its own with a wound bounding box per row, in frames where the wound is a small
part (a median box of 63 px in a 1,080 x 1,440 frame: shrunk whole to 64 px the wound is 4 px
wide). This module joins such a table to the visits, checks its boxes, computes each view's
crop, and holds the two rules that keep a visit the unit of the analysis however many views it
has: each visit weighs the same in training, and a visit's probability is its views' mean.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_dag.artifacts import GROUP, ID, InputError
from fusion_dag.image_files import CONVERTED_MODES, checked_files
from fusion_dag.tables import (
    as_number,
    blank,
    describe_rows,
    parsed_numbers,
    read_table,
    require_columns,
    row_names,
    stripped,
)

log = logging.getLogger(__name__)

# A view's wound box, in pixels of the upright frame, and its crop (integer pixel edges).
BOX = ("x_min", "y_min", "x_max", "y_max")
CROP = ("crop_x0", "crop_y0", "crop_x1", "crop_y1")
# One row per view, in the order of the image cache: prepare's ``images.tsv`` (all modalities,
# with a ``modality`` column) and the cache's ``{modality}_views.tsv`` (plus the crop).
VIEW_COLUMNS = ("view", ID, GROUP, "path", "image_row", *BOX, "width", "height", "box_clipped")
# Per modality, how its images met the visits (prepare's ``view_counts.tsv``, in the report).
VIEW_COUNT_COLUMNS = (
    "modality",
    "views",
    "visits",
    "views_min",
    "views_median",
    "views_max",
    "visits_without_views",
    "rows_without_visit",
    "boxes_clipped",
    "boxes_cut",
    "views_upscaled",
    "files_shared",
    "views_repeated",
    "views_converted",
)
# The smallest image size a branch can have (config schema: ``size`` minimum): a view with
# fewer pixels on a side than this is upscaled whatever the modality's size.
SMALLEST_SIZE = 8
# How a visit's probability is made from its views' (recorded in the bundle).
AGGREGATION = "mean"


def key_text(column: pd.Series) -> pd.Series:
    """Key cells as comparable text: surrounding spaces dropped, and a number written plainly
    (``7``, ``007``, ``7.0``) as one canonical number, so a patient typed as a number in one
    table and as zero-padded text in another is one patient. Missing cells stay missing."""

    def canonical(value):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        text = str(value).strip()
        number = as_number(text)
        return text if number is None else format(number.normalize(), "f")

    return column.map(canonical)


def visit_keys(
    table: pd.DataFrame, keys: list, source: Path, what: str, config_key: str
) -> pd.Series:
    """Each row's visit key (a tuple of its key cells as :func:`key_text`); an absent key
    column or an empty key cell is an error naming the column and rows."""
    require_columns(
        table,
        [(config_key, key) for key in keys],
        source,
        hint=f"set {config_key} to columns that both the samples and the image table have",
        what=what,
    )
    texts = pd.DataFrame({key: key_text(table[key]) for key in keys}, index=table.index)
    for key in keys:
        empty = blank(texts[key])
        if empty.any():
            raise InputError(
                f"{what} {source}: key column '{key}' ({config_key}) is empty in data rows "
                f"{describe_rows(row_names(empty))}; every row needs its visit's keys"
            )
    return pd.Series(list(zip(*(texts[key] for key in keys), strict=True)), index=table.index)


def shown_key(key: tuple) -> str:
    """A visit key for a message: ``P001/3``."""
    return "/".join(key)


def visit_of_key(samples_keys: pd.Series, ids: pd.Series, keys: list, source: Path, modality):
    """Visit key -> sample id; keys naming more than one samples row are an error naming
    them, since an image cannot be assigned to two visits."""
    repeated = samples_keys.duplicated(keep=False)
    if repeated.any():
        raise InputError(
            f"samples table {source}: the keys {keys} (modalities.{modality}.keys) name more "
            f"than one row: {describe_rows(sorted(set(map(shown_key, samples_keys[repeated]))))} "
            f"in data rows {describe_rows(row_names(repeated))}; an image cannot be assigned "
            "to two visits: remove the repeated rows or add the column that tells them apart "
            "(an ulcer number, say) to keys"
        )
    return pd.Series(ids.to_numpy(), index=pd.Index(samples_keys.to_numpy(), tupleize_cols=False))


def parsed_boxes(table: pd.DataFrame, columns: list, source: Path, modality: str) -> pd.DataFrame:
    """The box columns as numbers (decimal commas read as in the samples table); an empty or
    non-numeric cell is an error naming the column and rows."""
    boxes = pd.DataFrame(index=table.index)
    for name, column in zip(BOX, columns, strict=True):
        numbers = parsed_numbers(table[column])
        values = (
            numbers.reindex(table.index)
            if numbers is not None
            else pd.Series(np.nan, index=table.index)
        )
        bad = values.isna() | ~np.isfinite(values.astype(float))
        if bad.any():
            raise InputError(
                f"image table {source}: box column '{column}' ({name}, modalities.{modality}.box) "
                f"is empty or not a number in data rows {describe_rows(row_names(bad))}; every "
                "view needs its wound box in pixels"
            )
        boxes[name] = values.astype(float)
    return boxes


def fitted_boxes(boxes: pd.DataFrame, frames: pd.DataFrame, source: Path, modality: str):
    """Boxes checked against their frames (``width``, ``height``): (boxes clipped to the frame,
    which rows were clipped). A box with no area, or wholly outside its frame, is an error
    naming the rows, and so are boxes that are all fractions of the frame (0 to 1: a common
    export, whose 1 px crops would pass as upscaled views); a box partly outside is clipped
    (and counted by the caller)."""
    x_min, y_min, x_max, y_max = (boxes[name] for name in BOX)
    width, height = frames["width"], frames["height"]
    if boxes.abs().le(1).all(axis=None) and (np.minimum(width, height) > 1).any():
        raise InputError(
            f"image table {source}: every wound box (modalities.{modality}.box) lies within 0 "
            f"to 1, as fractions of the frame would (data row 1: "
            f"{[float(boxes[n].iloc[0]) for n in BOX]} in a {int(width.iloc[0])} x "
            f"{int(height.iloc[0])} frame); boxes are pixels of the upright image: multiply x "
            "by the frame's width and y by its height"
        )
    empty = (x_max <= x_min) | (y_max <= y_min)
    if empty.any():
        raise InputError(
            f"image table {source}: wound boxes with no area (x_max <= x_min or y_max <= y_min; "
            f"modalities.{modality}.box) in data rows {describe_rows(row_names(empty))}; fix "
            "the boxes or check the order of the box columns"
        )
    outside = (x_max <= 0) | (y_max <= 0) | (x_min >= width) | (y_min >= height)
    if outside.any():
        first = outside[outside].index[0]
        raise InputError(
            f"image table {source}: wound boxes wholly outside their frame in data rows "
            f"{describe_rows(row_names(outside))} (data row {int(first) + 1}: box "
            f"{[float(boxes.at[first, n]) for n in BOX]} in a {int(width[first])} x "
            f"{int(height[first])} frame); boxes are pixels of the upright image"
        )
    clipped = (x_min < 0) | (y_min < 0) | (x_max > width) | (y_max > height)
    fitted = pd.DataFrame(
        {
            "x_min": x_min.clip(lower=0),
            "y_min": y_min.clip(lower=0),
            "x_max": np.minimum(x_max, width),
            "y_max": np.minimum(y_max, height),
        }
    )
    return fitted, clipped


def crop_window(box: tuple, width: int, height: int, margin: float) -> tuple:
    """The crop of a wound box: (x0, y0, x1, y1), integer pixel edges within the frame.

    The box is grown by ``margin`` of its width and height on each side and made square (the
    larger side) around its centre, so the branch sees the wound and its periwound skin
    undistorted. A square that would cross the frame's edge is moved inside the frame rather
    than cut, keeping it square and the wound whole; a square larger than the frame's shorter
    side shrinks to that side (still square, resized without distortion).
    """
    x_min, y_min, x_max, y_max = box
    grown = max(x_max - x_min, y_max - y_min) * (1.0 + 2.0 * margin)
    side = int(min(max(1, round(grown)), width, height))

    def edges(centre: float, extent: int) -> tuple:
        low = int(min(max(round(centre - side / 2.0), 0), extent - side))
        return low, low + side

    x0, x1 = edges((x_min + x_max) / 2.0, int(width))
    y0, y1 = edges((y_min + y_max) / 2.0, int(height))
    return x0, y0, x1, y1


def with_crops(views: pd.DataFrame, margin: float) -> pd.DataFrame:
    """``views`` with each view's crop (:data:`CROP`); empty for a view without a box, which
    the cache reads as its whole frame."""
    views = views.copy()
    boxed = views[list(BOX)].notna().all(axis=1)
    crops = pd.DataFrame(np.nan, index=views.index, columns=list(CROP))
    for index in views.index[boxed.to_numpy()]:
        row = views.loc[index]
        crops.loc[index] = crop_window(tuple(row[list(BOX)]), row["width"], row["height"], margin)
    for column in CROP:
        views[column] = crops[column].astype("Int64")
    return views


def table_views(
    samples_table: pd.DataFrame,
    ids: pd.Series,
    groups: pd.Series,
    modality: str,
    layout: dict,
    missing_images: str,
    samples_source: Path,
    na_values=(),
    scaled: bool = False,
    images_key: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """One modality's views from its image table; return (views, counts for the log and report).

    ``images_key`` is the config key that names the table, for messages (default
    ``modalities.{modality}.images``; ``predict.images.{modality}`` for a new table's).

    ``samples_table`` is the samples table as read (its key columns), ``ids`` and ``groups``
    its cleaned ids and patients (same index); ``layout`` the modality's ``images``, ``path``,
    ``keys``, ``box`` and ``image_dir``. The image table is read with the samples table's
    reader and checks. Image rows of visits the samples table lacks are counted, not an error;
    visits without views follow ``missing_images``; every named file is checked once.
    """
    source = Path(layout["images"])
    config = f"modalities.{modality}"
    images_key = images_key or f"{config}.images"
    table = read_table(source, na_values, key=images_key, what="image table")
    wanted = [(f"{config}.path", layout["path"])]
    wanted += [(f"{config}.box", column) for column in layout["box"] or []]
    require_columns(table, wanted, source, what="image table")
    if table.empty:
        raise InputError(
            f"image table {source} ({images_key}) has a header but no data rows; add a row per "
            f"view, or use a combination without {modality}"
        )
    keys = layout["keys"]
    image_keys = visit_keys(table, keys, source, "image table", f"{config}.keys")
    samples_keys = visit_keys(
        samples_table, keys, samples_source, "samples table", f"{config}.keys"
    )
    visit = visit_of_key(samples_keys, ids, keys, samples_source, modality)
    matched = image_keys.map(lambda key: visit.get(key))
    orphans = matched.isna()
    if orphans.all():
        raise InputError(
            f"image table {source}: none of its {len(table)} rows names a visit of samples table "
            f"{samples_source} by the keys {keys} ({config}.keys; image table: "
            f"{describe_rows(list(dict.fromkeys(map(shown_key, image_keys))))}; samples table: "
            f"{describe_rows(list(map(shown_key, samples_keys)))}); check that both tables "
            "hold the same patients and visits, in the same key columns"
        )
    if orphans.any():
        log.warning(
            "Modality %s: %d image rows name visits the samples table lacks (keys %s: %s; "
            "image table %s, data rows %s); left out",
            modality,
            int(orphans.sum()),
            keys,
            describe_rows(list(dict.fromkeys(map(shown_key, image_keys[orphans])))),
            source,
            describe_rows(row_names(orphans)),
        )
    cells = stripped(table[layout["path"]])
    empty = blank(cells) & ~orphans
    if empty.any() and missing_images == "error":
        raise InputError(
            f"image table {source}: path column '{layout['path']}' is empty in data rows "
            f"{describe_rows(row_names(empty))}; fill them or set missing_images: drop"
        )
    used = ~orphans & ~empty
    if not used.any():
        raise InputError(
            f"image table {source}: path column '{layout['path']}' is empty in every row of a "
            f"visit (data rows {describe_rows(row_names(empty))}); fill it, or use a "
            f"combination without {modality}"
        )
    if empty.any():
        log.warning(
            "Modality %s: dropped %d image rows of %s with no path (data rows %s)",
            modality,
            int(empty.sum()),
            source,
            describe_rows(row_names(empty)),
        )
    owners = pd.Series(
        [f"data row {int(i) + 1}" for i in table.index[used]], index=table.index[used]
    )
    files = checked_files(
        cells[used],
        owners,
        modality,
        layout["image_dir"],
        f"image table {source}: path column '{layout['path']}'",
        scaled,
    )
    views = pd.DataFrame(
        {
            ID: matched[used].astype(str),
            "path": files["path"],
            "image_row": table.index[used] + 1,
            "width": files["width"],
            "height": files["height"],
            "mode": files["mode"],
        },
        index=table.index[used],
    )
    views[GROUP] = views[ID].map(pd.Series(groups.to_numpy(), index=ids.to_numpy()))
    views["box_clipped"] = False
    for name in BOX:
        views[name] = np.nan
    if layout["box"]:
        boxes = parsed_boxes(table.loc[used], layout["box"], source, modality)
        fitted, clipped = fitted_boxes(boxes, views, source, modality)
        views[list(BOX)] = fitted
        views["box_clipped"] = clipped
    counts = view_counts(
        views, ids, orphans, modality, missing_images, samples_source, f"image table {source}"
    )
    views = order_views(views, ids)
    return views, counts


def view_rows(views: pd.DataFrame, mask: pd.Series) -> str:
    """The rows of ``views`` that ``mask`` marks, for a message: the image table's data rows,
    or the samples table's ids for a modality given by a samples column."""
    chosen = views[mask.to_numpy(dtype=bool)]
    if chosen["image_row"].notna().all():
        return f"data rows {describe_rows([int(r) for r in chosen['image_row']])}"
    return f"ids {describe_rows(chosen[ID].tolist())}"


def changed_views(views: pd.DataFrame, modality: str, where: str) -> dict:
    """Count, and log as a WARNING naming ``where`` (the table) and its rows, every view whose
    pixels are not what the table gave: a box partly outside its frame (clipped to it), a box
    wider or taller than its frame's shorter side (its square crop cannot hold it: cut), a
    view under :data:`SMALLEST_SIZE` px on a side (upscaled whatever the size: a 1 x 1 px
    image becomes a flat square), one file listed for visits of different patients (its
    pixels can reach both sides of a patient-grouped split; a frame with two ulcers of one
    patient is fine) and a row repeating an earlier one (visit, file and box); also the views
    of images the cache converts (alpha dropped, palette or 1-bit expanded; warned of when the
    files are checked). ``files_shared`` counts files, the others views."""
    width, height = views["width"].astype(float), views["height"].astype(float)
    box_width = views["x_max"] - views["x_min"]
    box_height = views["y_max"] - views["y_min"]
    boxed = views[list(BOX)].notna().all(axis=1)
    box_side = np.maximum(box_width, box_height)
    frame_side = np.minimum(width, height)
    patients = views.groupby("path")[GROUP].transform("nunique")
    changes = {
        "boxes_clipped": (
            views["box_clipped"].astype(bool),
            "wound boxes partly outside their frame, clipped to it",
        ),
        "boxes_cut": (
            boxed & (box_side > frame_side),
            "wound boxes wider or taller than their frame's shorter side, cut by their square "
            "crop (the frame's shorter side)",
        ),
        "views_upscaled": (
            pd.Series(np.where(boxed, box_side, frame_side) < SMALLEST_SIZE, index=views.index),
            f"views under {SMALLEST_SIZE} px on a side (the image, or its wound box), upscaled "
            "to the branch's size",
        ),
        "files_shared": (
            patients > 1,
            "rows name an image file that a visit of another patient uses too: its pixels can "
            "reach both sides of a patient-grouped split; check the keys or paths of those rows",
        ),
        # Warned of per image, with its mode, when the files are checked (image_files).
        "views_converted": (views["mode"].isin(list(CONVERTED_MODES)), None),
        "views_repeated": (
            views.duplicated([ID, "path", *BOX]),
            "rows repeat an earlier row's visit, file and box: the view counts twice in its "
            "visit's mean; remove the copies if they are not meant",
        ),
    }
    counts = {}
    for name, (mask, what) in changes.items():
        counts[name] = int(mask.sum())
        if counts[name] and what:
            log.warning(
                "Modality %s: %s: %d %s (%s)",
                modality,
                where,
                counts[name],
                what,
                view_rows(views, mask),
            )
    counts["files_shared"] = int(views.loc[patients > 1, "path"].nunique())
    return counts


def order_views(views: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Views in the samples table's visit order, then the image table's; numbered from 1."""
    visit_order = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    views = views.assign(_visit=views[ID].map(visit_order)).sort_values(
        ["_visit", "image_row"], kind="stable"
    )
    views = views.drop(columns="_visit").reset_index(drop=True)
    views.insert(0, "view", np.arange(1, len(views) + 1))
    return views[list(VIEW_COLUMNS)]


def view_counts(
    views: pd.DataFrame,
    ids: pd.Series,
    orphans: pd.Series,
    modality,
    missing_images,
    source,
    where: str,
) -> dict:
    """Views per visit (min, median, max), visits without views (an error with
    ``missing_images: error``, else a warning naming them), image rows without a visit and
    the views :func:`changed_views` warns of (``where`` names the table), logged."""
    per_visit = views.groupby(ID).size()
    without = ids[~ids.isin(per_visit.index)]
    if len(without) and missing_images == "error":
        raise InputError(
            f"samples table {source}: visits without {modality} views: ids "
            f"{describe_rows(without.tolist())}; add their images or set missing_images: drop"
        )
    counts = {
        "modality": modality,
        "views": len(views),
        "visits": int(per_visit.size),
        "views_min": int(per_visit.min()) if len(per_visit) else 0,
        "views_median": float(per_visit.median()) if len(per_visit) else 0.0,
        "views_max": int(per_visit.max()) if len(per_visit) else 0,
        "visits_without_views": len(without),
        "rows_without_visit": int(orphans.sum()),
        **changed_views(views, modality, where),
    }
    if len(without):
        log.warning(
            "Modality %s: %d visits of %s have no views (ids %s); left out of this modality",
            modality,
            len(without),
            source,
            describe_rows(without.tolist()),
        )
    log.info(
        "Modality %s: %d image rows matched %d visits (views per visit: min %d, median %g, "
        "max %d); %d visits without views%s; %d image rows without a visit; %d boxes clipped "
        "to their frame, %d cut by their crop; %d views upscaled; %d files shared by patients; "
        "%d views repeated",
        modality,
        counts["views"],
        counts["visits"],
        counts["views_min"],
        counts["views_median"],
        counts["views_max"],
        counts["visits_without_views"],
        " (left out of this modality)" if len(without) else "",
        counts["rows_without_visit"],
        counts["boxes_clipped"],
        counts["boxes_cut"],
        counts["views_upscaled"],
        counts["files_shared"],
        counts["views_repeated"],
    )
    return counts


def column_views(files: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """The views of a modality given by a samples column: one per visit with an image, its
    whole frame (no box), in the samples table's order; ``files`` is
    :func:`~fusion_dag.image_files.resolve_images`'s, indexed by id. Each view's Pillow
    ``mode`` is kept for :func:`changed_views` (not a column of ``images.tsv``)."""
    views = pd.DataFrame(
        {
            ID: files.index.astype(str),
            "path": files["path"].to_numpy(),
            "width": files["width"].to_numpy(dtype=float),
            "height": files["height"].to_numpy(dtype=float),
            "mode": files["mode"].to_numpy(),
        }
    )
    views[GROUP] = views[ID].map(groups)
    views["image_row"] = pd.NA
    for name in BOX:
        views[name] = np.nan
    views["box_clipped"] = False
    views.insert(0, "view", np.arange(1, len(views) + 1))
    return views[[*VIEW_COLUMNS, "mode"]]


def view_weights(visit_ids: pd.Series, class_weights: np.ndarray) -> np.ndarray:
    """Each view's weight in the loss: its class weight divided by its visit's number of views,
    so every visit weighs the same (its class's weight) whatever its number of views; with one
    view per visit these are the class weights."""
    views_of_visit = visit_ids.map(visit_ids.value_counts()).to_numpy(dtype=float)
    return np.asarray(class_weights, dtype=float) / views_of_visit


def visit_means(view_probs: pd.DataFrame, columns: list) -> pd.DataFrame:
    """A visit's probabilities: the mean of its views' (``id``, ``split`` kept, visits in the
    order of their first view)."""
    keys = [c for c in (ID, "split") if c in view_probs.columns]
    return view_probs.groupby(keys, sort=False)[columns].mean().reset_index()
