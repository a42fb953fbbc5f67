"""Regions of tiled and striped TIFFs read straight from their segments (hrdv2.blocks.tiff_regions)
equal tifffile's own whole-image read, for any window, step and index, in every layout hrdv2
reads block-wise; layouts it does not handle keep tifffile's zarr store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hrdv2.blocks import open_array
from hrdv2.blocks.tiff_regions import TiffRegions
from hrdv2.errors import ImageReadError

RNG = np.random.default_rng(7)
LAYOUTS = {  # name: (array, tifffile.imwrite options)
    "tiled_uint8": (RNG.integers(0, 256, (150, 170), dtype=np.uint8), dict(tile=(64, 48))),
    "tiled_uint16_zlib_predictor": (RNG.integers(0, 60000, (97, 130), dtype=np.uint16),
                                    dict(tile=(32, 64), compression="zlib", predictor=True)),
    "striped_rgb": (RNG.integers(0, 256, (90, 70, 3), dtype=np.uint8), dict(rowsperstrip=13, photometric="rgb")),
    "tiled_stack": (RNG.integers(0, 256, (3, 80, 75), dtype=np.uint8), dict(tile=(32, 32), photometric="minisblack")),
    "bigtiff_float32": (RNG.random((70, 66)).astype(np.float32), dict(tile=(16, 32), bigtiff=True)),
    "tiled_rgba": (RNG.integers(0, 256, (60, 50, 4), dtype=np.uint8),
                   dict(tile=(16, 16), photometric="rgb", extrasamples=["unassalpha"])),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    folder = tmp_path_factory.mktemp("tiffs")
    out = {}
    for name, (array, options) in LAYOUTS.items():
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, array, **options)
        out[name] = (path, array[..., :3] if array.shape[-1] == 4 and array.ndim == 3 else array)
    return out


def _index(draw, n: int):
    if draw(st.booleans()) and n > 0:
        return draw(st.integers(0, n - 1))
    start, stop = sorted(draw(st.lists(st.integers(0, n), min_size=2, max_size=2)))
    return slice(start, stop, draw(st.sampled_from([1, 1, 2, 3, -1])))


@st.composite
def keys(draw, shape: tuple[int, ...]):
    return tuple(_index(draw, n) for n in shape)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_region_equals_the_whole_read(files, name: str, data) -> None:
    path, expected = files[name]
    with open_array(path) as arr:
        assert isinstance(arr._src, TiffRegions), "the direct reader must serve this layout"
        assert arr.shape == expected.shape and arr.dtype == expected.dtype
        spatial = arr.spatial_shape
        key = data.draw(keys(spatial))
        got = arr[key]
        np.testing.assert_array_equal(got, expected[key])


def test_windows_of_a_block_plan_and_other_layouts(tmp_path: Path, files) -> None:
    path, expected = files["tiled_uint8"]
    with open_array(path) as arr:  # plain windows, as the blocks of a plan read them
        for y0 in range(0, 150, 40):
            for x0 in range(0, 170, 55):
                window = (slice(y0, min(150, y0 + 61)), slice(x0, min(170, x0 + 70)))
                np.testing.assert_array_equal(arr[window], expected[window])
    # one strip per page, or samples in separate planes: tifffile's zarr store, same values
    one_strip = RNG.integers(0, 256, (40, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "one_strip.tif", one_strip)
    planar = RNG.integers(0, 256, (3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    for name, want in (("one_strip.tif", one_strip), ("planar.tif", np.moveaxis(planar, 0, -1))):
        with open_array(tmp_path / name) as arr:
            assert not isinstance(arr._src, TiffRegions), name
            np.testing.assert_array_equal(arr[3:17, 5:25], want[3:17, 5:25])


def test_a_truncated_tiled_file_fails_in_one_line_naming_it(tmp_path: Path, files) -> None:
    path, _ = files["tiled_uint16_zlib_predictor"]
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        with open_array(cut) as arr:
            arr[...]
    message = str(info.value)
    assert "cut.tif" in message and "\n" not in message


def test_pickles_as_its_path_for_dask_workers(files) -> None:
    import pickle

    path, expected = files["tiled_stack"]
    with open_array(path) as arr:
        copy = pickle.loads(pickle.dumps(arr))
        try:
            assert isinstance(copy._src, TiffRegions) and copy._src is copy._closer
            np.testing.assert_array_equal(copy[1, 10:60, 5:70], expected[1, 10:60, 5:70])
        finally:
            copy.close()
