"""The image cache: images decoded into it (grey to three channels, a file that does not
decode named), and read back (a damaged cache refused by the job that reads it, naming the file
to delete)."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.artifacts import ArtifactError, InputError, write_tsv
from fusion_dag.cache import build_cache, load_cache


def written_cache(folder, views: int = 4):
    """A 4-view cache at 8 px and its views table."""
    np.save(folder / "thermal_map.npy", np.zeros((views, 8, 8, 3), dtype=np.uint8))
    write_tsv(pd.DataFrame({"view": range(1, 5), "id": list("abcd")}), folder / "views.tsv")
    return folder / "thermal_map.npy", folder / "views.tsv"


def test_a_cache_cut_short_names_the_file_to_delete(tmp_path):
    cache, views = written_cache(tmp_path)
    images, _ = load_cache(cache, views)
    assert images.shape == (4, 8, 8, 3)
    with open(cache, "r+b") as handle:
        handle.truncate(cache.stat().st_size // 2)
    with pytest.raises(
        ArtifactError,
        match=rf"image cache {cache} cannot be read \(mmap length is greater than file size\); "
        rf"delete {cache} and run again to rebuild it \(rule image_cache\)",
    ):
        load_cache(cache, views)


def test_a_cache_of_another_shape_than_its_views_is_refused(tmp_path):
    cache, views = written_cache(tmp_path, views=3)
    with pytest.raises(ArtifactError, match=r"shape \(3, 8, 8, 3\), its views table .* 4 uint8"):
        load_cache(cache, views)


def test_grayscale_images_get_three_channels(tmp_path):
    Image.fromarray(np.full((10, 12), 200, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    build_cache(pd.DataFrame({"path": [tmp_path / "g.png"]}), 8, tmp_path / "c.npy")
    cache = np.load(tmp_path / "c.npy")
    assert cache.shape == (1, 8, 8, 3) and (cache == 200).all()


def test_an_image_that_verifies_but_does_not_decode_stops_the_cache(tmp_path):
    """prepare verifies each file's structure without decoding it; the cache decodes each image
    once and names the file that fails there (valid chunk checksums around bad pixel data)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    start = png.index(b"IDAT") - 4
    length = struct.unpack(">I", png[start : start + 4])[0]
    data = b"\0" * length
    checksum = struct.pack(">I", zlib.crc32(b"IDAT" + data))
    broken = tmp_path / "broken.png"
    broken.write_bytes(png[: start + 8] + data + checksum + png[start + 12 + length :])
    with Image.open(broken) as image:
        image.verify()  # what prepare checks passes
    with pytest.raises(InputError, match=r"broken.png cannot be decoded"):
        build_cache(pd.DataFrame({"path": [str(broken)]}), 16, tmp_path / "cache.npy")
    assert list(tmp_path.iterdir()) == [broken]
