"""Image files as a table names them: where they may be, which Pillow modes fusion-dag reads,
and the checks made before anything is decoded.

Why a module of its own: prepare checks the training table's images and predict a new
table's, with the same rules; the image cache (:mod:`fusion_dag.cache`) decodes by the same
mode sets, defined once here.
"""

import logging
import re
import warnings
from pathlib import Path, PurePath

import pandas as pd
from PIL import Image, UnidentifiedImageError

from fusion_dag.artifacts import InputError
from fusion_dag.tables import blank, describe_rows, stripped

log = logging.getLogger(__name__)

# Image modes, by what the image cache does with them (Pillow's mode names).
GREY_MODES = {"L"}
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
# One value per pixel: scaled by a modality's value_range when it has one.
SINGLE_CHANNEL_MODES = GREY_MODES | HIGH_DEPTH_MODES
# Without colour (with alpha, or 1-bit): what colour conversions do not count.
COLOURLESS_MODES = SINGLE_CHANNEL_MODES | {"LA", "1"}
KNOWN_MODES = SINGLE_CHANNEL_MODES | {"RGB"} | set(CONVERTED_MODES)
COLOUR_MODES = KNOWN_MODES - COLOURLESS_MODES


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
    folders = paths.map(lambda p: p.is_dir())
    if folders.any():
        raise InputError(
            f"image path {paths[folders].iloc[0]} is a folder, not an image file (modality "
            f"{modality}; ids {describe_rows(ids[~empty][folders].tolist())}); give each cell "
            "the path of one image file"
        )
    absent = paths.map(lambda p: not p.is_file())
    if absent.any():
        first = paths[absent].iloc[0]
        backslash = (
            "; the paths use '\\': write them with '/'"
            if cells[~empty][absent].str.contains("\\", regex=False).any()
            else ""
        )
        raise InputError(
            f"image file {first} does not exist (modality {modality}; ids "
            f"{describe_rows(ids[~empty][absent].tolist())} have missing files){backslash}; fix "
            "the paths or image_dir, or empty those cells and set missing_images: drop"
        )
    checked = [check_image(p, modality, i) for i, p in zip(ids[~empty], paths, strict=True)]
    modes = pd.Series([mode for mode, _ in checked], index=ids[~empty].to_numpy())
    rotated = sum(turned for _, turned in checked)
    if rotated:
        log.info(
            "Modality %s: %d images carry an EXIF orientation; the cache turns them upright "
            "(ImageOps.exif_transpose) as a viewer shows them",
            modality,
            rotated,
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
            log.info(
                "Modality %s: %d images of mode %s converted to %s", modality, count, mode, target
            )
    colour = modes.isin(COLOUR_MODES)
    if colour.any() and not colour.all():
        log.warning(
            "Modality %s mixes %d colour and %d grey-scale images (colour: ids %s); the image "
            "cache converts them all to the modality's channels (1: luminance, 3: grey repeated)",
            modality,
            int(colour.sum()),
            int((~colour).sum()),
            describe_rows(modes.index[colour.to_numpy()].tolist()),
        )


# Pillow's EXIF tag for the camera's orientation; 1 is upright.
ORIENTATION_TAG = 0x0112


def check_image(path: Path, modality: str, sample_id: str) -> tuple[str, bool]:
    """Check an image's header and integrity; return (its mode, whether its EXIF orientation
    turns it). Refuse unreadable, truncated or corrupted files, empty sizes, files of several
    frames, and images over Pillow's decompression-bomb limit.

    Pillow's ``verify`` reads the whole file and checks its structure (for PNG, every chunk's
    CRC and the end marker) without decoding pixels: the image cache decodes each image once,
    and refuses, naming the file, any image that still fails to decode there. An animated GIF
    or a multi-page TIFF is refused rather than read at its first frame: which frame shows the
    wound is not knowable here, and the other frames would be dropped without a word.
    """
    where = f"image file {path} (modality {modality}, id {sample_id})"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                mode, size = image.mode, image.size
                # A phone's JPEG with a gain map opens as MPO with 2 frames: frame 0 is the
                # photograph, the one the cache reads; only true animations or stacks count.
                frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
                turned = image.getexif().get(ORIENTATION_TAG, 1) in range(2, 9)
            # verify() must start from a freshly opened file, and leaves it unusable.
            with Image.open(path) as image:
                image.verify()
    except Image.DecompressionBombError as error:
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise InputError(
            f"{where} has {count}, over twice Pillow's decompression-bomb limit of "
            f"{Image.MAX_IMAGE_PIXELS:,}; a wound image this large is unusual: downscale it or "
            "check the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(f"{where} cannot be read: {error}; replace the file") from None
    bomb = [issubclass(w.category, Image.DecompressionBombWarning) for w in caught]
    for other in (w for w, is_bomb in zip(caught, bomb, strict=True) if not is_bomb):
        log.warning("%s: Pillow warns: %s", where, other.message)
    if any(bomb):
        log.warning(
            "%s has %s pixels, over Pillow's decompression-bomb limit of %s: read anyway; "
            "downscale it if that is not what the camera writes",
            where,
            f"{size[0] * size[1]:,}",
            f"{Image.MAX_IMAGE_PIXELS:,}",
        )
    if min(size) == 0:
        raise InputError(f"{where} has size {size}; replace the file")
    if frames > 1:
        raise InputError(
            f"{where} holds {frames} frames (an animated or multi-page file); fusion-dag reads "
            "one image per file: export the frame that shows the wound as its own file"
        )
    if mode not in KNOWN_MODES:
        raise InputError(
            f"{where} has mode {mode}, which fusion-dag does not read (modes: "
            f"{', '.join(sorted(KNOWN_MODES))}); convert it"
        )
    return mode, turned
