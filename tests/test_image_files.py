"""Image files as a table names them: paths kept inside image_dir, files checked before any
is decoded, and the modes the cache reads."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fusion_dag.artifacts import InputError
from fusion_dag.image_files import (
    ORIENTATION_TAG,
    check_image,
    check_modes,
    checked_files,
    outside_paths,
    resolve_images,
)


def png(path, size=(8, 6), mode="RGB"):
    Image.new(mode, size).save(path)
    return path


def test_outside_paths_refuse_absolute_and_climbing_paths_by_their_text():
    cells = pd.Series(["a.png", "sub/b.png", "/etc/passwd", "../up.png", "sub/../c.png"])
    assert outside_paths(cells).tolist() == [False, False, True, True, True]


def test_checked_files_give_each_rows_path_and_upright_size_checking_each_file_once(tmp_path):
    png(tmp_path / "a.png", (8, 6))
    (tmp_path / "sub").mkdir()
    png(tmp_path / "sub" / "b.png", (5, 7))
    cells = pd.Series(["a.png", "sub/b.png", "a.png"], index=["v1", "v2", "v3"])
    owners = pd.Series(["id v1", "id v2", "id v3"], index=cells.index)
    files = checked_files(cells, owners, "thermal_map", tmp_path, "samples", scaled=False)
    assert files.index.tolist() == ["v1", "v2", "v3"]
    assert files["path"].tolist() == [str(tmp_path / p) for p in cells]
    assert files[["width", "height"]].to_numpy().tolist() == [[8, 6], [5, 7], [8, 6]]


def test_a_missing_file_names_its_rows_and_suggests_forward_slashes(tmp_path):
    cells = pd.Series(["sub\\gone.png"], index=["v1"])
    with pytest.raises(InputError, match=r"does not exist .*id v1.*write them with '/'"):
        checked_files(cells, pd.Series(["id v1"], index=["v1"]), "m", tmp_path, "t", False)


def test_a_folder_or_an_outside_path_is_refused(tmp_path):
    (tmp_path / "folder").mkdir()
    owners = pd.Series(["id v1"], index=["v1"])
    with pytest.raises(InputError, match="is a folder, not an image file"):
        checked_files(pd.Series(["folder"], index=["v1"]), owners, "m", tmp_path, "t", False)
    with pytest.raises(InputError, match="points outside image_dir"):
        checked_files(pd.Series(["../x.png"], index=["v1"]), owners, "m", tmp_path, "t", False)


def test_a_truncated_png_and_an_animated_gif_are_refused(tmp_path):
    whole = png(tmp_path / "whole.png", (32, 32)).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cannot be read"):
        check_image(tmp_path / "cut.png", "m", "id v1")
    frames = [Image.new("L", (4, 4), value) for value in (0, 255)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="holds 2 frames"):
        check_image(tmp_path / "moving.gif", "m", "id v1")


def test_a_quarter_turn_exif_orientation_swaps_width_and_height(tmp_path):
    image = Image.fromarray(np.zeros((6, 10, 3), dtype=np.uint8))  # 10 wide, 6 high
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # rotate 90 degrees to view
    image.save(tmp_path / "turned.jpg", exif=exif)
    checked = check_image(tmp_path / "turned.jpg", "m", "id v1")
    assert (checked.mode, checked.turned, checked.size) == ("RGB", True, (6, 10))
    plain = check_image(png(tmp_path / "plain.png", (10, 6)), "m", "id v2")
    assert (plain.turned, plain.size) == (False, (10, 6))


def test_high_bit_depth_images_need_a_value_range():
    modes = pd.Series({"a.png": "I;16", "b.png": "L"})
    owners = pd.Series({"a.png": "id v1", "b.png": "id v2"})
    with pytest.raises(InputError, match=r"a.png .*high-bit-depth.*value_range"):
        check_modes(modes, owners, "thermal_map", scaled=False)
    check_modes(modes, owners, "thermal_map", scaled=True)  # a range given: accepted


def test_resolve_images_drops_empty_cells_only_when_told(tmp_path, caplog):
    import logging

    png(tmp_path / "a.png")
    table = pd.DataFrame({"thermal": [" a.png ", "", None]})
    ids = pd.Series(["v1", "v2", "v3"])
    with pytest.raises(InputError, match="empty for ids v2, v3"):
        resolve_images(table, ids, "thermal_map", "thermal", tmp_path, "error", "s.tsv")
    with caplog.at_level(logging.INFO):
        files = resolve_images(table, ids, "thermal_map", "thermal", tmp_path, "drop", "s.tsv")
    assert files["path"].to_dict() == {"v1": str(tmp_path / "a.png")}
    assert "dropped 2 rows of s.tsv with no image in column 'thermal' (ids v2, v3)" in caplog.text
