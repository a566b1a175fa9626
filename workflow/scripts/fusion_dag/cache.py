"""The image cache: every image of a modality decoded once into a memory-mappable array.

Why a stage of its own: decoding and resizing thousands of images per fold would dominate the
image jobs, and holding them all in memory would not fit at scale. The cache is a ``uint8``
``.npy`` array at the modality's image size that every image job memory-maps; it depends on the
image size and value range only, so changing either never re-runs prepare or the forest.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fusion_dag.artifacts import ID, InputError, partial_path

CHANNELS = 3
# Pillow modes holding one value per pixel: scaled by a modality's value_range when it has one.
SINGLE_CHANNEL_MODES = {"L", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def scaled_grey(image: Image.Image, size: int, value_range) -> np.ndarray:
    """A single-channel image resized in its raw units, then mapped from ``value_range`` to
    0-255 (clipped) and repeated over three channels.

    One fixed range for every image of a modality keeps absolute differences between images
    (a hotter wound stays brighter), which per-image normalisation would erase.
    """
    low, high = value_range
    raw = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    resized = np.asarray(raw.resize((size, size), Image.Resampling.BILINEAR))
    scaled = np.clip((resized - low) / (high - low), 0.0, 1.0) * 255.0
    return np.repeat(np.round(scaled).astype(np.uint8)[..., None], CHANNELS, axis=2)


def build_cache(paths: pd.Series, size: int, cache_path: Path, value_range=None) -> None:
    """Decode and resize every image once into a uint8 array of shape (n, size, size, 3).

    The array is saved as ``.npy`` so image jobs can memory-map it instead of holding
    every image in memory. Grey-scale images are repeated over three channels; with a
    ``value_range``, single-channel images (8-bit, 16-bit or float) are scaled by it.
    Palette and alpha images are converted to RGB or grey-scale (alpha dropped).
    """
    partial = partial_path(cache_path)
    cache = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, CHANNELS)
    )
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            if value_range is not None and image.mode in SINGLE_CHANNEL_MODES:
                cache[row] = scaled_grey(image, size, value_range)
                continue
            resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        cache[row] = np.asarray(resized, dtype=np.uint8)
    cache.flush()
    del cache
    os.replace(partial, cache_path)


def load_cache(cache_path: Path, ids_path: Path) -> tuple[np.ndarray, pd.Series]:
    """Memory-map an image cache; return (images, position of each sample id)."""
    images = np.load(cache_path, mmap_mode="r")
    ids = pd.read_csv(ids_path, sep="\t", dtype={ID: str})[ID]
    if len(ids) != len(images):
        raise InputError(f"image cache {cache_path} has {len(images)} images for {len(ids)} ids")
    return images, pd.Series(np.arange(len(ids)), index=ids.to_numpy())
