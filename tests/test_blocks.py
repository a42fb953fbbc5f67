"""Block machinery (plan, lazy readers, OME-Zarr / BigTIFF writers, resumable map_blocks) and
block-wise classical features equal to whole-image ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
import zarr

from hrdv2.blocks import (
    ArrayWriter, BigTiffWriter, MIN_BLOCK_SIZE, OmeZarrWriter, as_lazy, check_format_holds, downsample2, map_blocks,
    open_array, plan_blocks,
)
from hrdv2.errors import ConfigError
from hrdv2.features.blockwise import (
    blockwise_classical_features, classical_block, image_normalisation, image_percentiles, normalise_block,
)
from hrdv2.features.classical import classical_alignment, classical_halo
from hrdv2.engine import compute_features
from hrdv2.features.sets import PERCENTILES, FeatureConfig, normalise_image
from hrdv2.io import read_image


@pytest.fixture(scope="module")
def alloy(shared_data: Path) -> np.ndarray:
    """A real micrograph crop whose sides are not multiples of any block size used below."""
    return read_image(shared_data / "superalloy" / "isb_0.png")[:150, :197]


def _identity(data: np.ndarray, block) -> np.ndarray:
    return data


# --------------------------------------------------------------------------- plan

@pytest.mark.parametrize("shape,block,halo,align", [
    ((100, 130), 32, 20, 16), ((37, 50), 16, 40, 8), ((9, 40, 33), (2, 16, 16), (0, 5, 7), (1, 4, 4)),
    ((20, 20), 1024, 3, 1),
])
def test_plan_tiles_image_and_windows_are_aligned(shape, block, halo, align) -> None:
    plan = plan_blocks(shape, block, halo=halo, alignment=align)
    halo = plan.halo
    cover = np.zeros(shape, np.int32)
    image = np.arange(np.prod(shape)).reshape(shape)
    for b in plan:
        cover[b.write] += 1
        assert np.array_equal(image[b.read][b.crop], image[b.write])
        for w, r, n, h, a in zip(b.write, b.read, shape, halo, plan.alignment):
            assert r.start == 0 or (r.start % a == 0 and r.start <= w.start - h)
            assert r.stop == n or (r.stop % a == 0 and r.stop >= w.stop + h)
            assert w.start % a == 0  # block origins aligned
    assert (cover == 1).all()
    assert [b.index for b in plan] == list(range(len(plan)))


def test_block_size_below_minimum_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match=r"block size 8 px .* minimum of 16") as err:
        plan_blocks((100, 100), 8, halo=4)
    assert "\n" not in str(err.value)
    # a page axis without halo may be one slice thick (a stack processed page by page)
    assert len(plan_blocks((3, 64, 64), (1, MIN_BLOCK_SIZE, MIN_BLOCK_SIZE), halo=(0, 4, 4))) == 3 * 4 * 4


# --------------------------------------------------------------------------- block-wise classical features

@pytest.mark.parametrize("block,filters", [(16, "default"), (40, "all"), (64, "default,structure"), (1024, "default")])
def test_blockwise_classical_equals_whole_image(alloy: np.ndarray, block: int, filters: str) -> None:
    cfg = FeatureConfig(kind="classical", filters=filters)
    if block < 32:
        alloy = alloy[:70, :101]  # many tiny blocks: keep the test short
    whole = compute_features(alloy, cfg)
    assert block < classical_halo(cfg.sigmas, cfg.filters) or block > max(alloy.shape)  # small and whole blocks
    out = blockwise_classical_features(alloy, block, cfg.sigmas, cfg.filters)
    np.testing.assert_allclose(out, whole, atol=1e-5, rtol=0)


def test_blockwise_classical_colour_and_16_bit(shared_data: Path) -> None:
    cfg = FeatureConfig(kind="classical")
    colour = read_image(shared_data / "horse" / "horse014.png")[:70, :90]
    np.testing.assert_allclose(
        blockwise_classical_features(colour, 32, cfg.sigmas, cfg.filters), compute_features(colour, cfg), atol=1e-5, rtol=0
    )
    lab = FeatureConfig(kind="classical", normalise="lab")  # a per-pixel colour conversion: block = whole
    for image in (colour, colour.astype(np.uint16) * 200 + 7):
        np.testing.assert_allclose(blockwise_classical_features(image, 32, lab.sigmas, lab.filters, normalise="lab"),
                                   compute_features(image, lab), atol=1e-5, rtol=0)
    grey16 = (read_image(shared_data / "superalloy" / "isb_0.png")[:80, :70].astype(np.uint16) * 200 + 7)
    for mode in ("none", "percentile"):
        cfg = FeatureConfig(kind="classical", normalise=mode)
        np.testing.assert_allclose(
            blockwise_classical_features(grey16, 32, cfg.sigmas, cfg.filters, normalise=mode),
            compute_features(grey16, cfg), atol=1e-5, rtol=0,
        )


def test_unaligned_or_haloless_blocks_differ(alloy: np.ndarray) -> None:
    """The equality above needs both the halo and the alignment (so it could fail)."""
    cfg = FeatureConfig(kind="classical")
    whole = compute_features(alloy, cfg)
    norm = image_normalisation(alloy)
    halo, align = classical_halo(cfg.sigmas, cfg.filters), classical_alignment(cfg.sigmas)

    def func(data, b):
        return classical_block(data, b, norm, cfg.sigmas, cfg.filters)

    for h, a in ((halo, 1), (0, align)):
        plan = plan_blocks(alloy.shape, 40, halo=h, alignment=a)
        out = map_blocks(alloy, plan, func, ArrayWriter(np.float32, whole.shape[-1]))
        assert np.abs(out - whole).max() > 1e-3


def test_image_percentiles_match_normalise_image(shared_data: Path, tmp_path: Path) -> None:
    image = read_image(shared_data / "tcell" / "sofc.png")  # 896 x 1008: strided subsample, step 3
    path = tmp_path / "sofc_tiled.tif"
    tifffile.imwrite(path, image, tile=(128, 128))
    with open_array(path) as lazy:
        flat = image.astype(np.float32).reshape(-1, 1)
        expect = np.percentile(flat[:: flat.shape[0] // 262144], PERCENTILES, axis=0)
        assert flat.shape[0] // 262144 > 1
        np.testing.assert_array_equal(image_percentiles(lazy), expect)
        norm = image_normalisation(lazy)
        region = (slice(100, 300), slice(517, 1008))
        np.testing.assert_array_equal(normalise_block(lazy[region], norm), normalise_image(image)[region])
        # sofc's bright tail lies beyond the upper fence: the robust stretch ('auto' on grey) and the
        # plain one differ here, and block-wise reproduces each
        plain = normalise_image(image, "percentile")
        assert np.abs(plain - normalise_image(image)).max() > 0.01
        np.testing.assert_array_equal(normalise_block(lazy[region], image_normalisation(lazy, "percentile")),
                                      plain[region])


# --------------------------------------------------------------------------- readers

def test_open_array_reads_regions_of_every_format(tmp_path: Path, alloy: np.ndarray, shared_data: Path) -> None:
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 255, (3, 70, 90), dtype=np.uint8)
    rgb = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, tile=(32, 32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "striped.tif", alloy, rowsperstrip=16)
    tifffile.imwrite(tmp_path / "big.tif", alloy, tile=(64, 64), bigtiff=True)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.save(tmp_path / "vol.npy", stack)
    zarr.create_array(str(tmp_path / "vol.zarr"), data=stack, chunks=(1, 32, 32))
    cases = {
        "stack.tif": stack, "striped.tif": alloy, "big.tif": alloy, "planar.tif": rgb, "vol.npy": stack,
        "vol.zarr": stack,
    }
    for name, expect in cases.items():
        with open_array(tmp_path / name) as arr:
            assert arr.shape == expect.shape and arr.dtype == expect.dtype, name
            region = (slice(1, 3), slice(5, 61), slice(17, 80)) if expect.ndim == 3 and not arr.has_channels else (
                slice(5, 61), slice(17, 80))
            assert np.array_equal(arr[region], expect[region]), name
    png = open_array(shared_data / "horse" / "horse014.png")
    assert png.channels == 3 and png.spatial_shape == (176, 218)
    assert np.array_equal(png[10:20, 30:45], read_image(shared_data / "horse" / "horse014.png")[10:20, 30:45])


# --------------------------------------------------------------------------- writers

@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ome_zarr_labels_read_back_by_ome_zarr(tmp_path: Path, ngff: str) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    rng = np.random.default_rng(2)
    small = rng.integers(0, 300, (60, 75)).astype(np.uint16)
    labels = np.kron(small, np.ones((2, 2), np.uint16))  # 120 x 150: level 1 must be `small` exactly
    target = tmp_path / "labels.ome.zarr"
    plan = plan_blocks(labels.shape, 32)
    assert map_blocks(labels, plan, _identity, OmeZarrWriter(target, np.uint16, kind="labels", ngff=ngff)) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr"]  # the stage is gone
    group = zarr.open_group(str(target), mode="r")
    assert group["0"].chunks == (32, 32) and group["0"].dtype == np.uint16
    nodes = list(Reader(parse_url(str(target)))())
    data = nodes[0].data
    assert [tuple(d.shape) for d in data] == [(120, 150), (60, 75), (30, 38), (15, 19)]  # until one chunk holds it
    assert np.array_equal(np.asarray(data[0]), labels) and np.array_equal(np.asarray(data[1]), small)
    assert [a["name"] for a in nodes[0].metadata["axes"]] == ["y", "x"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in group.attrs.asdict().get("ome", group.attrs.asdict())
              ["multiscales"][0]["datasets"]]
    assert scales == [[1.0, 1.0], [2.0, 2.0], [4.0, 4.0], [8.0, 8.0]]


def test_ome_zarr_features_channels_first_and_mean_pyramid(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    feats = rng.random((64, 96, 6)).astype(np.float32)
    target = tmp_path / "f.ome.zarr"
    map_blocks(feats, plan_blocks((64, 96), 32), _identity, OmeZarrWriter(target, np.float32, 6, n_levels=2))
    group = zarr.open_group(str(target), mode="r")
    level0, level1 = group["0"], group["1"]
    assert level0.shape == (6, 64, 96) and level0.chunks == (1, 32, 32)
    assert np.array_equal(np.moveaxis(level0[:], 0, -1), feats)
    mean = feats.reshape(32, 2, 48, 2, 6).mean(axis=(1, 3))
    np.testing.assert_allclose(np.moveaxis(level1[:], 0, -1), mean, rtol=1e-6)
    assert [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert open_array(target).shape == (64, 96, 6)


def test_bigtiff_tiles_and_subifd_pyramid(tmp_path: Path, alloy: np.ndarray) -> None:
    target = tmp_path / "out.tif"
    map_blocks(alloy, plan_blocks(alloy.shape, 64), _identity, BigTiffWriter(target, np.uint8, kind="labels"))
    with tifffile.TiffFile(target) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.tile == (64, 64) and page.dtype == np.uint8
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(150, 197), (75, 99), (38, 50)]
        assert np.array_equal(levels[0].asarray(), alloy)


def test_volume_blockwise_filter_through_zarr_and_bigtiff(tmp_path: Path) -> None:
    """3D machinery: a 3D Gaussian (reflect edges) over bricks smaller than its halo, read from a
    zarr volume, written to OME-Zarr and BigTIFF, equals the whole-volume filter."""
    rng = np.random.default_rng(4)
    vol = ndi.zoom(rng.random((6, 9, 11)), 4, order=1).astype(np.float32)  # (24, 36, 44)
    zarr.create_array(str(tmp_path / "vol.zarr"), data=vol, chunks=(8, 16, 16))
    sigma, truncate = 3.0, 3.0
    whole = ndi.gaussian_filter(vol, sigma, mode="reflect", truncate=truncate)
    halo = int(truncate * sigma + 0.5)
    plan = plan_blocks(vol.shape, (16, 32, 32), halo=halo)
    assert plan.block_shape[0] < 2 * halo and plan.grid_shape == (2, 2, 2)

    def blur(data, block):
        return ndi.gaussian_filter(data, sigma, mode="reflect", truncate=truncate)

    reader = open_array(tmp_path / "vol.zarr")
    zt, tt = tmp_path / "blur.ome.zarr", tmp_path / "blur.tif"
    map_blocks(reader, plan, blur, OmeZarrWriter(zt, np.float32))
    map_blocks(reader, plan, blur, BigTiffWriter(tt, np.float32))
    np.testing.assert_allclose(zarr.open_group(str(zt), mode="r")["0"][:], whole, atol=1e-6)
    with tifffile.TiffFile(tt) as tif:
        assert len(tif.pages) == vol.shape[0] and tif.pages[0].tile == (32, 32)
        np.testing.assert_allclose(tif.series[0].asarray(), whole, atol=1e-6)
        assert tif.series[0].levels[1].shape == (24, 18, 22)


# --------------------------------------------------------------------------- interrupted runs, bad output

@pytest.mark.parametrize("writer_cls", [OmeZarrWriter, BigTiffWriter])
def test_interrupted_run_leaves_no_target_and_resumes(tmp_path: Path, alloy: np.ndarray, writer_cls) -> None:
    target = tmp_path / ("out.ome.zarr" if writer_cls is OmeZarrWriter else "out.tif")
    plan = plan_blocks(alloy.shape, 32)
    calls: list[int] = []

    def flaky(data, block):
        if len(calls) == 7:
            raise RuntimeError("power cut")
        calls.append(block.index)
        return data

    with pytest.raises(RuntimeError, match="power cut"):
        map_blocks(alloy, plan, flaky, writer_cls(target, np.uint8, key="model-a"))
    assert not target.exists() and target.with_name(target.name + ".partial").exists()
    calls.clear()
    seen: list[tuple[int, int]] = []
    map_blocks(alloy, plan, lambda d, b: calls.append(b.index) or d, writer_cls(target, np.uint8, key="model-a"),
               progress=lambda done, total: seen.append((done, total)))
    assert len(calls) == len(plan) - 7 and not set(calls) & set(range(7))
    assert seen[0] == (7, len(plan)) and seen[-1] == (len(plan), len(plan))
    back = open_array(target)
    assert np.array_equal(back[:, :], alloy)
    assert not target.with_name(target.name + ".partial").exists()
    # a stage made for another key (model, config) is discarded, never mixed in
    calls.clear()
    with pytest.raises(RuntimeError):
        map_blocks(alloy, plan, flaky, writer_cls(target, np.uint8, key="model-a"))
    calls.clear()
    map_blocks(alloy, plan, lambda d, b: calls.append(b.index) or d, writer_cls(target, np.uint8, key="model-b"))
    assert len(calls) == len(plan)


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_blocks_equal_serial_run_written_in_plan_order_with_bounded_memory(alloy: np.ndarray,
                                                                                     workers: int) -> None:
    import threading
    import time

    plan = plan_blocks(alloy.shape, 32, halo=5)
    lock = threading.Lock()
    running, most_running, read, written = [0], [0], [], []

    def slow_filter(data, block):
        with lock:
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
        time.sleep(0.002 * (block.index % 3))  # blocks finish out of order
        with lock:
            running[0] -= 1
        return ndi.uniform_filter(data.astype(np.float32), 3)

    class Recorder(ArrayWriter):
        def write(self, block, data):
            assert len(read) - len(written) <= workers + 1  # never more blocks in memory than promised
            written.append(block.index)
            super().write(block, data)

    class Reader:
        def __getitem__(self, key):
            read.append(key)
            return alloy[key]

    serial = map_blocks(alloy, plan, slow_filter, ArrayWriter(np.float32))
    parallel = map_blocks(Reader(), plan, slow_filter, Recorder(np.float32), workers=workers)
    np.testing.assert_array_equal(parallel, serial)
    assert written == [b.index for b in plan]
    assert 1 < most_running[0] <= workers


def test_parallel_run_stops_at_a_failing_block_and_resumes(tmp_path: Path, alloy: np.ndarray) -> None:
    """An error in one worker stops the run; every block before it in plan order is kept (written
    and marked), none after it, and a re-run computes only the rest."""
    target = tmp_path / "out.ome.zarr"
    plan = plan_blocks(alloy.shape, 32)

    def flaky(data, block):
        if block.index == 6:
            raise RuntimeError("disk full")
        return data

    with pytest.raises(RuntimeError, match="disk full"):
        map_blocks(alloy, plan, flaky, OmeZarrWriter(target, np.uint8, key="k"), workers=2)
    marked = sorted(int(p.name) for p in (target.with_name(target.name + ".partial") / "done").iterdir())
    assert marked == list(range(6))
    calls: list[int] = []
    map_blocks(alloy, plan, lambda d, b: calls.append(b.index) or d, OmeZarrWriter(target, np.uint8, key="k"),
               workers=2)
    assert sorted(calls) == list(range(6, len(plan)))
    np.testing.assert_array_equal(open_array(target)[:, :], alloy)
    with pytest.raises(ValueError, match="workers"):
        map_blocks(alloy, plan, _identity, ArrayWriter(np.uint8), workers=0)


def test_tqdm_progress_counts_blocks(alloy: np.ndarray) -> None:
    import io

    from tqdm import tqdm

    plan = plan_blocks(alloy.shape, 64)
    with tqdm(file=io.StringIO()) as bar:
        map_blocks(alloy, plan, _identity, ArrayWriter(np.uint8), progress=bar)
        assert bar.n == len(plan) == bar.total


def test_output_that_cannot_hold_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PNG cannot hold float32"):
        check_format_holds("png", np.float32)
    with pytest.raises(ConfigError, match=r"300 does not fit in uint8 .* uint16"):
        check_format_holds("ome-zarr", np.uint8, max_value=300)
    check_format_holds("png", np.uint16, max_value=300)
    labels = np.full((40, 40), 300, np.uint16)
    target = tmp_path / "l.ome.zarr"
    with pytest.raises(ConfigError, match=r"value 300 does not fit in uint8") as err:
        map_blocks(labels, plan_blocks(labels.shape, 16), _identity, OmeZarrWriter(target, np.uint8, kind="labels"))
    assert "\n" not in str(err.value) and not target.exists()
    with pytest.raises(ConfigError, match="float data cannot be written"):
        map_blocks(labels.astype(np.float32), plan_blocks(labels.shape, 16), _identity, ArrayWriter(np.uint8))


def test_label_pyramid_keeps_the_majority_class() -> None:
    labels = np.array([[1, 2, 5], [2, 3, 5]], np.uint8)  # odd width: the last column is replicated
    assert downsample2(labels, (0, 1), "labels").tolist() == [[2, 5]]
    assert downsample2(labels.astype(np.float32), (0, 1), "intensity").tolist() == [[2.0, 5.0]]


@pytest.mark.parametrize("n_classes", [2, 3, 5, 200])
def test_label_pyramid_mode_is_the_first_most_frequent_value_of_each_2x2(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    labels = rng.integers(0, n_classes, (3, 41, 57)).astype(np.uint8)  # a stack, odd sides
    got = downsample2(labels, (1, 2), "labels")
    padded = np.pad(labels, ((0, 0), (0, 1), (0, 1)), mode="edge")
    expected = np.empty(got.shape, np.uint8)
    for z, y, x in np.ndindex(*got.shape):
        quad = [int(v) for v in padded[z, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].ravel()]  # C order: a, b, c, d
        expected[z, y, x] = max(quad, key=quad.count)  # max() keeps the first of equal counts
    np.testing.assert_array_equal(got, expected)


def test_as_lazy_colour_convention() -> None:
    assert as_lazy(np.zeros((5, 6, 3))).channels == 3 and as_lazy(np.zeros((4, 5, 6))).channels is None
