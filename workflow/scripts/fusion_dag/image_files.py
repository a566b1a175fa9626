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
from typing import NamedTuple

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
) -> pd.DataFrame:
    """Validate one modality's image paths in a samples column; return the files' ``path``,
    ``width`` and ``height`` (upright), indexed by id.

    Empty cells are an error or, with ``missing_images: drop``, rows left out of this modality
    with a warning naming them; a column empty in every row is an error either way. Every
    named file is checked by :func:`checked_files`.
    """
    cells = stripped(table[column])
    empty = blank(cells)
    if empty.all():
        raise InputError(
            f"samples table {source}: image column '{column}' (modality {modality}) is empty "
            f"in every row; fill it, or use a combination without {modality}"
        )
    if empty.any() and missing_images == "error":
        raise InputError(
            f"samples table {source}: image column '{column}' (modality {modality}) is empty for "
            f"ids {describe_rows(ids[empty].tolist())}; fill them or set missing_images: drop"
        )
    if empty.any():
        log.warning(
            "Modality %s: dropped %d rows of %s with no image in column '%s' (ids %s)",
            modality,
            int(empty.sum()),
            source,
            column,
            describe_rows(ids[empty].tolist()),
        )
    owners = pd.Series([f"id {i}" for i in ids[~empty]], index=ids[~empty].to_numpy())
    return checked_files(
        cells[~empty].set_axis(owners.index),
        owners,
        modality,
        image_dir,
        f"samples table {source}: image column '{column}'",
        scaled,
    )


def checked_files(
    cells: pd.Series, owners: pd.Series, modality: str, image_dir: Path, where: str, scaled: bool
) -> pd.DataFrame:
    """Check the image files ``cells`` name (filled, stripped; one per row); return their
    ``path`` and upright ``width`` and ``height``, on the index of ``cells``.

    Paths are relative to ``image_dir`` and may not leave it (a table is not allowed to make
    the workflow read arbitrary files). Every file is opened and verified once, however many
    rows name it (a frame with several wound boxes), so a truncated or unreadable file stops
    the run before training. High-bit-depth grey-scale images need the modality's
    ``value_range`` (``scaled``). ``owners`` names each row for messages (``id P001_V1``,
    ``data row 12``); ``where`` names the table and column. Each row's Pillow ``mode`` is
    returned too, so the caller counts the views of converted images.
    """
    root = Path(image_dir).absolute()
    outside = outside_paths(cells.astype(str))
    if outside.any():
        raise InputError(
            f"{where} points outside image_dir {root} for "
            f"{describe_rows(owners[outside.to_numpy()].tolist())}; paths must be relative to "
            "image_dir without '..' (symlinks inside image_dir are followed)"
        )
    paths = cells.map(lambda v: root / str(v))
    unique = pd.Series(paths.unique())
    folders = unique[unique.map(lambda p: p.is_dir())]
    if len(folders):
        named = owners[paths.isin(folders).to_numpy()]
        raise InputError(
            f"image path {folders.iloc[0]} is a folder, not an image file (modality "
            f"{modality}; {describe_rows(named.tolist())}); give each cell the path of one "
            "image file"
        )
    absent = unique[unique.map(lambda p: not p.is_file())]
    if len(absent):
        rows = paths.isin(absent).to_numpy()
        backslash = (
            "; the paths use '\\': write them with '/'"
            if cells[rows].str.contains("\\", regex=False).any()
            else ""
        )
        raise InputError(
            f"image file {absent.iloc[0]} does not exist (modality {modality}; "
            f"{describe_rows(owners[rows].tolist())} have missing files){backslash}; fix "
            "the paths or image_dir, or empty those cells and set missing_images: drop"
        )
    first_owner = owners.groupby(paths.to_numpy()).first()
    checked = {p: check_image(p, modality, first_owner[p]) for p in unique}
    modes = pd.Series({p: c.mode for p, c in checked.items()})
    rotated = sum(c.turned for c in checked.values())
    if rotated:
        log.info(
            "Modality %s: %d images carry an EXIF orientation; the cache turns them upright "
            "(ImageOps.exif_transpose) as a viewer shows them",
            modality,
            rotated,
        )
    check_modes(modes, first_owner, modality, scaled)
    return pd.DataFrame(
        {
            "path": paths.map(str),
            "width": paths.map(lambda p: checked[p].size[0]),
            "height": paths.map(lambda p: checked[p].size[1]),
            "mode": paths.map(lambda p: checked[p].mode),
        },
        index=cells.index,
    )


def check_modes(modes: pd.Series, owners: pd.Series, modality: str, scaled: bool) -> None:
    """Refuse high-bit-depth images without a value range; warn of every conversion the cache
    makes (alpha dropped, palette or 1-bit expanded), naming a row of each file.

    A 16-bit or float thermal image carries absolute values (temperatures); scaling each image
    by its own minimum and maximum would erase the differences between images, and Pillow's
    ``convert('L')`` clips it white. So such images are scaled by one fixed range per modality
    (``modalities.{name}.value_range``), which the user sets in the images' raw units.
    ``modes`` is indexed by file; ``owners`` names a row of each file for messages.
    """
    high_depth = modes.isin(HIGH_DEPTH_MODES)
    if high_depth.any() and not scaled:
        first = modes.index[high_depth.to_numpy()][0]
        raise InputError(
            f"image file {first} (modality {modality}, {owners[first]}) is high-bit-depth "
            f"grey-scale (mode {modes[first]}; {int(high_depth.sum())} images of this modality "
            f"are); set modalities.{modality}.value_range: [low, high] in the images' raw units "
            "so every image is scaled by the same fixed range"
        )
    for mode, target in CONVERTED_MODES.items():
        files = modes.index[(modes == mode).to_numpy()]
        if len(files):
            log.warning(
                "Modality %s: %d images of mode %s converted to %s (%s)",
                modality,
                len(files),
                mode,
                target,
                describe_rows(owners[files].tolist()),
            )
    colour = modes.isin(COLOUR_MODES)
    if colour.any() and not colour.all():
        log.warning(
            "Modality %s mixes %d colour and %d grey-scale images (colour: %s); the image "
            "cache converts them all to the modality's channels (1: luminance, 3: grey repeated)",
            modality,
            int(colour.sum()),
            int((~colour).sum()),
            describe_rows(owners[modes.index[colour.to_numpy()]].tolist()),
        )


# Formats whose Pillow verify() reads and checks the whole file without decoding it (PNG:
# every chunk's CRC and the end marker); any other format is decoded once to be checked.
THOROUGH_VERIFY = {"PNG"}
# Pillow's EXIF tag for the camera's orientation; 1 is upright.
ORIENTATION_TAG = 0x0112


class CheckedImage(NamedTuple):
    """What :func:`check_image` learns of a file: its Pillow mode, whether its EXIF orientation
    turns it, and its (width, height) as a viewer shows it (upright), the frame wound boxes
    are drawn in."""

    mode: str
    turned: bool
    size: tuple


def check_image(path: Path, modality: str, owner: str) -> CheckedImage:
    """Check an image's header and integrity; return its :class:`CheckedImage`. ``owner``
    names the table row for messages (``id P001_V1``, ``data row 12``). Refuse unreadable,
    truncated or corrupted files, empty sizes, files of several frames, and images over
    Pillow's decompression-bomb limit.

    Pillow's ``verify`` reads the whole file and checks its structure (for PNG, every chunk's
    CRC and the end marker) without decoding pixels; a JPEG or TIFF, whose ``verify`` checks
    little (a JPEG cut in half passes it), is decoded once here, so a truncated camera export
    stops the run before training too. An animated GIF
    or a multi-page TIFF is refused rather than read at its first frame: which frame shows the
    wound is not knowable here, and the other frames would be dropped without a word.
    """
    where = f"image file {path} (modality {modality}, {owner})"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                mode, size = image.mode, image.size
                # A phone's JPEG with a gain map opens as MPO with 2 frames: frame 0 is the
                # photograph, the one the cache reads; only true animations or stacks count.
                frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
                orientation = image.getexif().get(ORIENTATION_TAG, 1)
                turned = orientation in range(2, 9)
            # verify() must start from a freshly opened file, and leaves it unusable.
            with Image.open(path) as image:
                image.verify()
            if image.format not in THOROUGH_VERIFY:
                # Other formats' verify() checks little (a JPEG cut in half passes it): decode.
                with Image.open(path) as image:
                    image.load()
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
    # EXIF orientations 5 to 8 turn the frame by a quarter: its width and height swap.
    upright = size[::-1] if orientation in range(5, 9) else size
    return CheckedImage(mode, turned, tuple(upright))
