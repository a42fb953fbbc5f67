"""Deep features of volumes over the three orthogonal planes (hrdv2.engine.planes), with the
random-weight ViT (UNTRAINED: the tests check the mechanics, not feature quality), on a crop
of the real ISBI 2012 stack."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.blocks import as_lazy
from hrdv2.engine import FeatureEngine
from hrdv2.engine.blockwise import BlockFeatures
from hrdv2.engine.planes import check_planes_size, plane_features, resample_axis0
from hrdv2.errors import ConfigError, ResourceLimitError, ShapeError
from hrdv2.features.sets import FeatureConfig, normalise_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stack(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """A (4, 10, 12) crop of the ISBI 2012 stack (slices 0..3) and its ground truth."""
    from hrdv2.io import read_image, read_labels

    d = shared_data / "isbi2012"
    crop = (slice(100, 110), slice(200, 212))
    vol = np.stack([read_image(d / f"isbi_{i:02d}.png")[crop] for i in range(4)])
    gt = np.stack([read_labels(d / f"isbi_{i:02d}_gt.png")[crop] for i in range(4)])
    return vol, gt


@pytest.fixture(scope="module")
def xyz_engine(tiny_backbone) -> FeatureEngine:
    return FeatureEngine.for_backbone(tiny_backbone, shifts=(), volume=True, planes="xyz")


@pytest.fixture(scope="module")
def xyz_feats(stack, xyz_engine) -> np.ndarray:
    return xyz_engine.volume_features(stack[0])


def _normalised(vol: np.ndarray) -> np.ndarray:
    """The whole volume's percentile stretch, written as the 2-D rule applied to all voxels at once."""
    return normalise_image(vol.reshape(-1, vol.shape[-1])).reshape(vol.shape)


def test_xyz_is_the_mean_of_three_per_axis_runs(stack, xyz_engine, xyz_feats):
    vol, _ = stack
    feats = xyz_feats
    assert feats.shape == vol.shape + (384,) and feats.dtype == np.float32
    x = _normalised(vol)
    deep = xyz_engine.deep_features
    xy = np.stack([deep(x[z]) for z in range(x.shape[0])], axis=0)
    xz = np.stack([deep(x[:, y, :]) for y in range(x.shape[1])], axis=1)
    yz = np.stack([deep(x[:, :, k]) for k in range(x.shape[2])], axis=2)
    np.testing.assert_allclose(feats, (xy + xz + yz) / 3, rtol=1e-5, atol=1e-5)
    assert not np.allclose(feats, xy, atol=1e-3)  # the other planes really contribute


def test_xy_planes_are_the_per_slice_features_and_keep_old_keys(stack, tiny_backbone):
    vol, _ = stack
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=(), volume=True, planes="xy")
    x = _normalised(vol)
    expected = np.stack([engine.deep_features(x[z]) for z in range(len(x))])
    np.testing.assert_array_equal(engine.volume_features(vol), expected)
    # a config saved before `planes` existed has the same key as one at planes="xy"
    for cfg in (FeatureConfig(kind="deep", stride=7), FeatureConfig(kind="classical", volume=True)):
        old = {k: v for k, v in cfg.to_dict().items() if k != "planes"}
        assert FeatureConfig.from_dict(old).key() == cfg.key()
        assert cfg.replace(planes="xy").key() == cfg.key()
    deep_vol = FeatureConfig(kind="deep", volume=True)
    assert deep_vol.replace(planes="xyz").key() != deep_vol.key()


def test_anisotropic_spacing_resamples_xz_and_yz_slices():
    seen: list[tuple[int, int]] = []

    def fake(img: np.ndarray) -> np.ndarray:  # a pointwise "featurizer": records what it is given
        seen.append(img.shape)
        return np.stack([img, img**2], axis=-1).astype(np.float32)

    rng = np.random.default_rng(0)
    plane = rng.random((6, 7)).astype(np.float32)
    vol = np.repeat(plane[None], 4, axis=0)  # constant along z
    out = plane_features(vol, fake, "xyz", spacing=(2.5, 1.0, 2.0))
    assert out.shape == (4, 6, 7, 2)
    assert seen[:4] == [(6, 7)] * 4  # xy slices as they are
    assert seen[4:10] == [(5, 7)] * 6  # xz: 4 slices of 2.5 -> round(4 * 2.5 / 2.0) = 5 rows of 2.0
    assert seen[10:] == [(10, 6)] * 7  # yz: round(4 * 2.5 / 1.0) = 10 rows of 1.0
    # constant along z: resampling changes nothing, every plane sees the same values
    np.testing.assert_allclose(out, np.repeat(fake(plane)[None], 4, axis=0), rtol=1e-6)
    # linear resampling keeps linear profiles (pixel centres aligned), and n == m is the identity
    ramp = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    up = resample_axis0(ramp, 16)
    np.testing.assert_allclose(up[1:-1, 0], (np.arange(1, 15) + 0.5) / 2 - 0.5, atol=1e-6)
    np.testing.assert_allclose(resample_axis0(up, 8)[1:-1], ramp[1:-1], atol=1e-6)  # ends: edge rows repeated
    assert resample_axis0(ramp, 8) is ramp


def test_segmenter_trains_and_predicts_a_stack_in_volume_mode(stack, xyz_engine, xyz_feats):
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import segment_blockwise

    vol, gt = stack
    seg = Segmenter(xyz_engine.config, classifier="logistic", backbones=xyz_engine.backbones)
    bf = BlockFeatures(seg.engine, as_lazy(vol), 8)
    labelled = (2, 3)
    seg.fit([vol[z] for z in labelled], [gt[z] for z in labelled], [bf.slice_features(z) for z in labelled])
    labels = segment_blockwise(seg, vol, block_size=8)  # several bricks
    assert labels.shape == vol.shape and labels.dtype == np.uint8
    whole = xyz_feats
    probs = seg.predict_proba_features(whole.reshape(-1, whole.shape[-1]))
    np.testing.assert_array_equal(labels, seg.classes_[probs.argmax(1)].reshape(vol.shape))
    assert set(np.unique(labels)) <= set(seg.classes_.tolist())


def test_bad_plane_configs_and_sizes_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="volume=True"):
        FeatureConfig(kind="deep", planes="xyz")
    with pytest.raises(ConfigError, match="volume=True"):
        FeatureConfig(kind="classical", volume=True, planes="xyz")
    with pytest.raises(ConfigError, match="not hybrid"):
        FeatureConfig(kind="hybrid", volume=True)
    with pytest.raises(ConfigError, match="unknown planes"):
        FeatureConfig(kind="deep", volume=True, planes="xz")
    with pytest.raises(ShapeError, match="2048x2048x512 volume.*limit") as info:
        check_planes_size((2048, 2048, 512), 384, "big.tif")
    assert "\n" not in str(info.value) and "big.tif" in str(info.value)
    with pytest.raises(ShapeError, match="too small"):
        plane_features(np.zeros((1, 8, 8), np.float32), lambda im: im[..., None], "xyz")


def test_cli_trains_on_two_slices_and_applies_to_ome_zarr(stack, tmp_path):
    import tifffile
    import zarr
    from click.testing import CliRunner

    from hrdv2.cli.main import cli

    vol, gt = stack
    labels = np.zeros_like(gt)
    labels[2:4] = gt[2:4]  # two labelled slices
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    model = tmp_path / "m.skops"
    r = CliRunner().invoke(cli, ["train", "--image", str(tmp_path / "vol.tif"), "--scribble", str(tmp_path / "lab.tif"),
                                 "--volume", "--features", "deep", "--planes", "xyz", "--weights", "random",
                                 "--shifts", "", "--classifier", "logistic", "--out", str(model)])
    assert r.exit_code == 0, r.output
    assert "planes xyz" in r.output and "2 slice(s)" in r.output
    r = CliRunner().invoke(cli, ["apply", str(model), str(tmp_path / "vol.tif"), "--out", str(tmp_path / "out"),
                                 "--format", "ome-zarr"])
    assert r.exit_code == 0, r.output
    out = np.asarray(zarr.open_group(str(tmp_path / "out" / "vol_labels.ome.zarr"), mode="r")["0"])
    assert out.shape == vol.shape and set(np.unique(out)) <= {1, 2}
    r = CliRunner().invoke(cli, ["features", str(tmp_path / "vol.tif"), "--planes", "xyz", "--weights", "random",
                                 "--out", str(tmp_path / "f")])
    assert r.exit_code == 2 and "--format ome-zarr" in r.output and len(r.output.strip().splitlines()) == 1


def test_deep_xy_volumes_run_page_by_page_in_bounded_memory(shared_data, tiny_backbone):
    """planes xy: blended tiles per slice (a TileStore, no whole-volume array), the volume's
    statistics, the same values at any block size; a single-tile slice equals the whole slice."""
    from hrdv2.io import read_image
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import segment_blockwise

    vol = np.stack([read_image(shared_data / "isbi2012" / f"isbi_{i:02d}.png")[:70, :84] for i in range(3)])
    vol[1] //= 2  # a darker slice: the volume's statistics, not the slice's, must be used
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=(), volume=True, planes="xy")
    small = BlockFeatures(engine, as_lazy(vol), 28, tile=56, overlap=14)
    assert small.stacked and small.store is not None and small.plan.block_shape == (1, 28, 28)
    feats = np.stack([small.slice_features(z) for z in range(3)])
    assert small.tiles_computed == 3 * 4  # 2x2 tiles per slice, each computed once
    one = BlockFeatures(engine, as_lazy(vol), 1024, tile=56, overlap=14)
    np.testing.assert_allclose(np.stack([one.slice_features(z) for z in range(3)]), feats, rtol=1e-5, atol=1e-5)
    # with one tile per slice the tiles are the whole slices: equal to the whole-volume features
    whole = engine.volume_features(vol)
    single = BlockFeatures(engine, as_lazy(vol), 28, tile=112, overlap=14)
    np.testing.assert_allclose(np.stack([single.slice_features(z) for z in range(3)]), whole, rtol=1e-4, atol=1e-4)
    assert not np.allclose(feats, whole, atol=1e-3)  # 56-px tiles really are tiles
    # the segmenter's bricks are pages too: labels equal the argmax of the slice features
    seg = Segmenter(engine.config, classifier="logistic", backbones=engine.backbones)
    gt = (vol > np.median(vol)).astype(np.uint8) + 1
    seg.fit([vol[0], vol[2]], [gt[0], gt[2]], [feats[0], feats[2]])
    labels = segment_blockwise(seg, vol, block_size=28, tile=56, overlap=14)
    probs = seg.predict_proba_features(feats.reshape(-1, feats.shape[-1]))
    np.testing.assert_array_equal(labels, seg.classes_[probs.argmax(1)].reshape(vol.shape))
    # nothing is held whole: a volume far beyond the xyz limit plans without refusal
    huge = as_lazy(np.broadcast_to(np.zeros((), np.uint8), (512, 2048, 2048)))
    assert len(BlockFeatures(engine, huge, 392).plan) == 512 * 36
    with pytest.raises(ResourceLimitError, match=r"need [0-9.]+ GB of scratch disk in .*TMPDIR"):
        BlockFeatures(FeatureEngine.for_backbone(tiny_backbone, shifts=(), volume=True, planes="xyz"), huge, 128)


def _directional(img: np.ndarray) -> np.ndarray:
    """A deterministic three-channel "featurizer" with a derivative along the slice's rows, so
    the xy, xz and yz slices through a voxel give it different values."""
    return np.stack([img, np.gradient(img, axis=0), np.sin(3 * img)], axis=-1).astype(np.float32)


def test_disk_planes_equal_the_held_mean_bit_for_bit_and_leave_no_files(tmp_path):
    from hrdv2.engine.planes import DiskPlanes, disk_planes_bytes

    rng = np.random.default_rng(1)
    vol = rng.random((5, 6, 7)).astype(np.float32)
    for planes, spacing in (("xyz", (2.5, 1.0, 2.0)), ("xyz", (1.0, 1.0, 1.0)), ("xy", (1.0, 1.0, 1.0))):
        held = plane_features(vol, _directional, planes, spacing)
        store = DiskPlanes(vol.shape, 3, planes, tmp_path, "v.tif").fill(vol, _directional, spacing)
        (folder,) = tmp_path.iterdir()
        assert sum(f.stat().st_size for f in folder.iterdir()) == disk_planes_bytes(vol.shape, 3, planes)
        np.testing.assert_array_equal(store.read((slice(0, 5), slice(0, 6), slice(0, 7))), held)
        for window in ((slice(1, 4), slice(2, 6), slice(0, 3)), (slice(4, 5), slice(5, 6), slice(6, 7))):
            np.testing.assert_array_equal(store.read(window), held[window])
        store.close()
        assert not any(tmp_path.iterdir())
    # the xz and yz planes really are in the sum
    assert not np.allclose(plane_features(vol, _directional, "xyz"), plane_features(vol, _directional, "xy"))
    # never memory-mapped: a mapping's page-cache folios around every strided xz run would count
    # as this process's memory (0.4-0.8 GB per slice measured), where pread/pwrite buffers do not
    import mmap

    def refuse(*args, **kwargs):
        raise AssertionError("DiskPlanes memory-mapped a file")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np, "memmap", refuse)
        mp.setattr(mmap, "mmap", refuse)
        store = DiskPlanes(vol.shape, 3, "xyz", tmp_path).fill(vol, _directional)
        np.testing.assert_array_equal(store.read((slice(0, 5), slice(0, 6), slice(0, 7))),
                                      plane_features(vol, _directional, "xyz"))
        store.close()
    store = DiskPlanes(vol.shape, 2, "xyz", tmp_path)
    with pytest.raises(ShapeError, match="3 channels, the store was made for 2"):
        store.fill(vol, _directional)
    del store  # collected: its folder goes with it
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="does not exist.*TMPDIR"):
        DiskPlanes(vol.shape, 3, "xyz", tmp_path / "missing")


def test_blockwise_xyz_planes_beyond_memory_go_to_scratch_disk_with_the_same_results(
        stack, xyz_engine, xyz_feats, tmp_path, monkeypatch):
    """Above the in-memory limit the xyz features live in scratch files (TMPDIR): the same features
    per slice and per brick, the same labels, and the files are gone afterwards."""
    import tempfile

    import hrdv2.engine.planes as planes_module
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import segment_blockwise

    vol, gt = stack
    bf = BlockFeatures(xyz_engine, as_lazy(vol), 8, scratch=tmp_path, max_held_bytes=0)
    assert bf.planes_on_disk and bf.plan.block_shape == (8, 8, 8) and len(bf.plan) == 4
    for z in range(len(vol)):
        np.testing.assert_array_equal(bf.slice_features(z), xyz_feats[z])
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("hrdv2-planes-")
    for block in bf.plan:
        np.testing.assert_array_equal(bf.features(vol[block.read], block), xyz_feats[block.write])
    bf.close()
    assert not any(tmp_path.iterdir())
    # a run that fails (or is interrupted) while the slices are being featurised leaves no files
    failing = FeatureEngine.for_backbone(xyz_engine.backbone, shifts=(), volume=True, planes="xyz")
    calls: list[int] = []

    def fail_on_the_xz_slices(img: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) > len(vol):
            raise KeyboardInterrupt
        return xyz_engine.deep_features(img)

    failing.deep_features = fail_on_the_xz_slices
    broken = BlockFeatures(failing, as_lazy(vol), 8, scratch=tmp_path, max_held_bytes=0)
    with pytest.raises(KeyboardInterrupt):
        broken.slice_features(0)
    assert len(calls) == len(vol) + 1 and not any(tmp_path.iterdir())
    # the whole pipeline: over the (patched) limit, apply's bricks read the scratch files under TMPDIR
    seg = Segmenter(xyz_engine.config, classifier="logistic", backbones=xyz_engine.backbones)
    seg.fit([vol[2], vol[3]], [gt[2], gt[3]], [xyz_feats[2], xyz_feats[3]])
    held = segment_blockwise(seg, vol, block_size=8)
    monkeypatch.setattr(planes_module, "MAX_PLANES_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[bool] = []
    real_read = planes_module.DiskPlanes.read
    monkeypatch.setattr(planes_module.DiskPlanes, "read", lambda self, w: seen.append(True) or real_read(self, w))
    np.testing.assert_array_equal(segment_blockwise(seg, vol, block_size=8), held)
    assert len(seen) == 4 and not any(tmp_path.iterdir())  # one read per brick, files deleted
    # thin bricks keep each brick's features bounded: 512 px sides of 384 channels are 1 slice deep
    wide = as_lazy(np.zeros((4, 600, 600), np.uint8))
    monkeypatch.undo()
    assert BlockFeatures(xyz_engine, wide, 512).plan.block_shape == (1, 512, 512)
