"""The image cache read back: a damaged cache is refused by the job that reads it, naming the
file to delete."""

import numpy as np
import pandas as pd
import pytest

from fusion_dag.artifacts import ArtifactError, write_tsv
from fusion_dag.cache import load_cache


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
