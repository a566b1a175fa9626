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
from fusion_dag.image_files import checked_files
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
)
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
    naming the rows; a box partly outside is clipped (and counted by the caller)."""
    x_min, y_min, x_max, y_max = (boxes[name] for name in BOX)
    width, height = frames["width"], frames["height"]
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
) -> tuple[pd.DataFrame, dict]:
    """One modality's views from its image table; return (views, counts for the log and report).

    ``samples_table`` is the samples table as read (its key columns), ``ids`` and ``groups``
    its cleaned ids and patients (same index); ``layout`` the modality's ``images``, ``path``,
    ``keys``, ``box`` and ``image_dir``. The image table is read with the samples table's
    reader and checks. Image rows of visits the samples table lacks are counted, not an error;
    visits without views follow ``missing_images``; every named file is checked once.
    """
    source = Path(layout["images"])
    config = f"modalities.{modality}"
    table = read_table(source, na_values, key=f"{config}.images", what="image table")
    wanted = [(f"{config}.path", layout["path"])]
    wanted += [(f"{config}.box", column) for column in layout["box"] or []]
    require_columns(table, wanted, source, what="image table")
    keys = layout["keys"]
    image_keys = visit_keys(table, keys, source, "image table", f"{config}.keys")
    samples_keys = visit_keys(
        samples_table, keys, samples_source, "samples table", f"{config}.keys"
    )
    visit = visit_of_key(samples_keys, ids, keys, samples_source, modality)
    matched = image_keys.map(lambda key: visit.get(key))
    orphans = matched.isna()
    if orphans.any():
        log.info(
            "Modality %s: %d image rows name visits the samples table lacks (keys %s: %s); "
            "left out",
            modality,
            int(orphans.sum()),
            keys,
            describe_rows(list(dict.fromkeys(map(shown_key, image_keys[orphans])))),
        )
    cells = stripped(table[layout["path"]])
    empty = blank(cells) & ~orphans
    if empty.any() and missing_images == "error":
        raise InputError(
            f"image table {source}: path column '{layout['path']}' is empty in data rows "
            f"{describe_rows(row_names(empty))}; fill them or set missing_images: drop"
        )
    if empty.any():
        log.info("Modality %s: dropped %d image rows with no path", modality, int(empty.sum()))
    used = ~orphans & ~empty
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
    check_shared_frames(files["path"], matched[used], groups, ids, modality, source)
    views = pd.DataFrame(
        {
            ID: matched[used].astype(str),
            "path": files["path"],
            "image_row": table.index[used] + 1,
            "width": files["width"],
            "height": files["height"],
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
    counts = view_counts(views, ids, orphans, modality, missing_images, samples_source)
    views = order_views(views, ids)
    return views, counts


def check_shared_frames(paths, visits, groups, ids, modality, source) -> None:
    """Warn when one image file is listed for visits of different patients: its pixels would
    then sit on both sides of a patient-grouped split (a frame with two ulcers of one patient
    is fine)."""
    patient = pd.Series(groups.to_numpy(), index=ids.to_numpy())
    owners = pd.DataFrame({"path": paths.to_numpy(), "group": visits.map(patient).to_numpy()})
    shared = owners.groupby("path")["group"].nunique()
    shared = shared[shared > 1]
    if len(shared):
        log.warning(
            "Modality %s: %d image files of %s are listed for more than one patient (%s); "
            "their pixels can reach both sides of a split: check the keys of those rows",
            modality,
            len(shared),
            source,
            describe_rows(shared.index.tolist()),
        )


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
    views: pd.DataFrame, ids: pd.Series, orphans: pd.Series, modality, missing_images, source
) -> dict:
    """Views per visit (min, median, max), visits without views (an error with
    ``missing_images: error``), image rows without a visit and boxes clipped, logged."""
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
        "boxes_clipped": int(views["box_clipped"].sum()),
    }
    log.info(
        "Modality %s: %d image rows matched %d visits (views per visit: min %d, median %g, "
        "max %d); %d visits without views%s; %d image rows without a visit; %d boxes clipped "
        "to their frame",
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
    )
    return counts


def column_views(paths: pd.Series, groups: pd.Series) -> pd.DataFrame:
    """The views of a modality given by a samples column: one per visit with an image, its
    whole frame (no box), in the samples table's order."""
    views = pd.DataFrame({ID: paths.index.astype(str), "path": paths.to_numpy()})
    views[GROUP] = views[ID].map(groups)
    views["image_row"] = pd.NA
    for name in (*BOX, "width", "height"):
        views[name] = np.nan
    views["box_clipped"] = False
    views.insert(0, "view", np.arange(1, len(views) + 1))
    return views[list(VIEW_COLUMNS)]


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
