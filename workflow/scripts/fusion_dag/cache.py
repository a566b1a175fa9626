"""The image cache: every view of a modality decoded once into a memory-mappable array.

Why a stage of its own: decoding and resizing thousands of images per fold would dominate the
image jobs, and holding them all in memory would not fit at scale. The cache is a ``uint8``
``.npy`` array at the modality's image size and channel count that every image job
memory-maps; it depends on the size, channels, value range and box margin only, so changing
any of them never re-runs prepare or the forest. A view with a wound box is its crop
(:func:`fusion_dag.views.crop_window`), resized to the branch's size.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from fusion_dag.artifacts import ArtifactError, InputError, mapped_array, partial_path, read_tsv
from fusion_dag.image_files import COLOURLESS_MODES, SINGLE_CHANNEL_MODES
from fusion_dag.views import CROP


def scaled_grey(image: Image.Image, size: int, value_range) -> np.ndarray:
    """A single-channel image resized in its raw units, then mapped from ``value_range`` to
    0-255 (clipped); shape (size, size).

    One fixed range for every image of a modality keeps absolute differences between images
    (a hotter wound stays brighter), which per-image normalisation would erase.
    """
    low, high = value_range
    raw = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    resized = np.asarray(raw.resize((size, size), Image.Resampling.BILINEAR))
    scaled = np.clip((resized - low) / (high - low), 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def decoded(image: Image.Image, size: int, channels: int, value_range) -> np.ndarray:
    """One image as uint8 (size, size, channels).

    With ``channels: 1`` colour images become grey-scale (Pillow's ITU-R 601 luminance); with
    ``channels: 3`` grey-scale images are repeated over three channels. Single-channel images
    (8-bit, 16-bit or float) are scaled by ``value_range`` when there is one.
    """
    if value_range is not None and image.mode in SINGLE_CHANNEL_MODES:
        grey = scaled_grey(image, size, value_range)
        return np.repeat(grey[..., None], channels, axis=2)
    mode = "L" if channels == 1 else "RGB"
    resized = np.asarray(
        image.convert(mode).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
    )
    return resized.reshape(size, size, channels)


def decode_into(target: np.ndarray, views: pd.DataFrame, size: int, channels: int, value_range):
    """Decode each view of ``views`` (``path``, and a crop :data:`~fusion_dag.views.CROP` where
    it has a wound box) into the matching row of ``target``; return how many views came from
    colour images. The one decoding both the image cache and prediction on new images use.

    Each frame is decoded once however many views it holds (a frame with the boxes of two
    ulcers), turned upright by its EXIF orientation as a viewer shows it (the frame the boxes
    are drawn in), then each view is cut from it and resized; a view without a crop is the
    whole frame.
    """
    colour = 0
    crops = views.reindex(columns=list(CROP)).to_numpy(dtype=float)
    frames = views.reindex(columns=["width", "height"]).to_numpy(dtype=float)
    rows = pd.Series(np.arange(len(views)))
    for path, group in rows.groupby(views["path"].to_numpy(), sort=False):
        positions = group.to_numpy()
        try:
            # prepare already logged any image over Pillow's pixel limit, naming it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    is_colour = image.mode not in COLOURLESS_MODES
                    upright = ImageOps.exif_transpose(image)
                    upright.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(
                f"image file {path} cannot be decoded: {error}; replace the file"
            ) from None
        expected = frames[positions[0]]
        if not np.isnan(crops[positions]).all() and tuple(expected) != upright.size:
            raise InputError(
                f"image file {path} is {upright.size[0]} x {upright.size[1]} px, but was "
                f"{int(expected[0])} x {int(expected[1])} when prepare checked its wound boxes: "
                "the file changed since; re-run prepare (delete results/prepared)"
            )
        for row in positions:
            crop = crops[row]
            view = upright if np.isnan(crop).any() else upright.crop(tuple(int(v) for v in crop))
            target[row] = decoded(view, size, channels, value_range)
            colour += is_colour
    return colour


def build_cache(
    views: pd.DataFrame, size: int, cache_path: Path, channels: int = 3, value_range=None
) -> dict:
    """Decode, crop and resize every view once into a uint8 array (n, size, size, channels).

    ``views`` holds each view's ``path`` and, for a boxed view, its crop. The array is saved
    as ``.npy`` so image jobs can memory-map it instead of holding every image in memory.
    Palette and alpha images are converted to RGB or grey-scale (alpha dropped). Returns how
    many views were converted between colour and grey-scale, for the log: {"to_grey": n} with
    one channel, {"grey_repeated": n} with three.
    """
    partial = partial_path(cache_path)
    cache = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(views), size, size, channels)
    )
    try:
        colour = decode_into(cache, views, size, channels, value_range)
    except InputError:
        del cache
        partial.unlink()
        raise
    cache.flush()
    del cache
    os.replace(partial, cache_path)
    if channels == 1:
        return {"to_grey": colour}
    return {"grey_repeated": len(views) - colour}


def load_cache(cache_path: Path, views_path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Memory-map an image cache; return (images, its views table: row i is image i).

    A cache cut short (a full disk, a copy interrupted) or with another shape than its views
    table is refused naming the file to delete, not read as whatever bytes are there.
    """
    rebuild = f"delete {cache_path} and run again to rebuild it (rule image_cache)"
    images = mapped_array(cache_path, "image cache", rebuild)
    views = read_tsv(views_path)
    if images.ndim != 4 or images.dtype != np.uint8 or len(views) != len(images):
        raise ArtifactError(
            f"image cache {cache_path} holds {images.dtype} images of shape {images.shape}, "
            f"its views table {views_path} {len(views)} uint8 views; {rebuild}"
        )
    return images, views.reset_index(drop=True)
