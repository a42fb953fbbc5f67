"""Image reading conventions and atomic writes."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from hrdv2.errors import ImageReadError, ShapeError
from hrdv2.io import atomic_path, read_image, read_labels, read_stack, to_float01, write_image


def test_reads_grey_rgb_rgba_16bit_and_stacks(tmp_path, rng):
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    Image.fromarray(np.dstack([rgb, np.full((9, 11), 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped
    grey3 = np.repeat(rgb[..., :1], 3, axis=2)
    Image.fromarray(grey3).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (9, 11)  # equal channels become grey
    g16 = rng.integers(0, 65535, (8, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    img16 = read_image(tmp_path / "g16.tif")
    assert img16.dtype == np.uint16
    f = to_float01(img16)
    assert f.min() == 0 and f.max() == 1
    stack = rng.integers(0, 256, (3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    rgb_planar = rng.integers(0, 256, (3, 10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", rgb_planar, photometric="rgb", planarconfig="separate")
    assert read_image(tmp_path / "p.tif").shape == (10, 12, 3)
    assert [p.shape for p in read_stack(tmp_path / "s.tif")] == [(10, 12)] * 3


def test_bad_files_name_themselves(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")
    Image.fromarray(np.zeros((30, 1), np.uint8)).save(tmp_path / "thin.png")
    with pytest.raises(ImageReadError, match="1x30 px; hrdv2 needs at least 4"):
        read_image(tmp_path / "thin.png")


def test_labels_must_match_their_image(tmp_path):
    Image.fromarray(np.ones((6, 7), np.uint8)).save(tmp_path / "l.png")
    assert read_labels(tmp_path / "l.png", (6, 7)).shape == (6, 7)
    with pytest.raises(ShapeError, match="label map is 7x6 .* image is 8x6"):
        read_labels(tmp_path / "l.png", (6, 8))
    Image.fromarray((np.zeros((6, 7, 3)) + [1, 2, 3]).astype(np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(ImageReadError, match="single-channel"):
        read_labels(tmp_path / "c.png")


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.png"
    write_image(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_folder_inputs_skip_label_maps(tmp_path):
    from hrdv2.io import expand_inputs

    for name in ("a.png", "a_gt.png", "b.tif", "b_scribble.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([tmp_path])] == ["a.png", "b.tif"]
    assert [p.name for p in expand_inputs([tmp_path / "a_gt.png"])] == ["a_gt.png"]  # named files are kept


def test_stack_with_pages_of_different_sizes_is_refused(tmp_path):
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        tif.write(np.zeros((10, 12), np.uint8))
        tif.write(np.zeros((8, 12), np.uint8))
    with pytest.raises(ShapeError, match=r"mixed.tif: page 1 is \(8, 12\) but page 0 is \(10, 12\)"):
        read_stack(tmp_path / "mixed.tif")
