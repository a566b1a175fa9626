"""The image cache: every image of a modality decoded once into a memory-mappable array.

Why a stage of its own: decoding and resizing thousands of images per fold would dominate the
image jobs, and holding them all in memory would not fit at scale. The cache is a ``uint8``
``.npy`` array at the modality's image size and channel count that every image job
memory-maps; it depends on the size, channels and value range only, so changing any of them
never re-runs prepare or the forest.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from fusion_dag.artifacts import ID, InputError, partial_path, read_tsv
from fusion_dag.image_files import COLOURLESS_MODES, SINGLE_CHANNEL_MODES


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


def decode_into(target: np.ndarray, paths, size: int, channels: int, value_range) -> int:
    """Decode each image of ``paths`` into the matching row of ``target``, turned upright by its
    EXIF orientation as a viewer shows it; return how many were colour images. The one decoding
    both the image cache and prediction on new images use."""
    colour = 0
    for row, path in enumerate(paths):
        try:
            # prepare already logged any image over Pillow's pixel limit, naming it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    colour += image.mode not in COLOURLESS_MODES
                    upright = ImageOps.exif_transpose(image)
                    target[row] = decoded(upright, size, channels, value_range)
        except (OSError, SyntaxError, ValueError) as error:
            raise InputError(
                f"image file {path} cannot be decoded: {error}; replace the file"
            ) from None
    return colour


def build_cache(
    paths: pd.Series, size: int, cache_path: Path, channels: int = 3, value_range=None
) -> dict:
    """Decode and resize every image once into a uint8 array of shape (n, size, size, channels).

    The array is saved as ``.npy`` so image jobs can memory-map it instead of holding every
    image in memory. Palette and alpha images are converted to RGB or grey-scale (alpha
    dropped). Returns how many images were converted between colour and grey-scale, for the
    log: {"to_grey": n} with one channel, {"grey_repeated": n} with three.
    """
    partial = partial_path(cache_path)
    cache = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, channels)
    )
    try:
        colour = decode_into(cache, paths, size, channels, value_range)
    except InputError:
        del cache
        partial.unlink()
        raise
    cache.flush()
    del cache
    os.replace(partial, cache_path)
    if channels == 1:
        return {"to_grey": colour}
    return {"grey_repeated": len(paths) - colour}


def load_cache(cache_path: Path, ids_path: Path) -> tuple[np.ndarray, pd.Series]:
    """Memory-map an image cache; return (images, position of each sample id)."""
    images = np.load(cache_path, mmap_mode="r")
    ids = read_tsv(ids_path)[ID]
    if len(ids) != len(images):
        raise InputError(f"image cache {cache_path} has {len(images)} images for {len(ids)} ids")
    return images, pd.Series(np.arange(len(ids)), index=ids.to_numpy())
