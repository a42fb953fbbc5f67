"""Block-wise featurisation and apply through the feature engine: equal to whole-image runs
(classical: identical labels; deep: identical to a whole-image *tiled* run, with its cosine to
untiled features reported by benchmarks/blockwise.py), stacks page by page, OME-Zarr / BigTIFF
outputs readable by independent readers, resumable, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from hrdv2.blocks import ArrayWriter, as_lazy, map_blocks
from hrdv2.cli.main import cli
from hrdv2.engine import FeatureEngine
from hrdv2.engine.blockwise import BlockFeatures, tiled_features
from hrdv2.engine.tiling import TileGrid, tile_starts
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.sets import FeatureConfig
from hrdv2.io import read_image, read_labels
from hrdv2.segmentation import Segmenter
from hrdv2.segmentation.blockwise import segment_blockwise


@pytest.fixture(scope="module")
def alloy(shared_data):
    sa = shared_data / "superalloy"
    return read_image(sa / "isb_0.png"), read_labels(sa / "isb_0_scribble.png")


@pytest.fixture(scope="module")
def classical_model(alloy):
    image, scribble = alloy
    return Segmenter("classical").fit([image], [scribble])


@pytest.mark.parametrize("block", [16, 100, 333])
def test_classical_blockwise_labels_equal_whole_image(alloy, classical_model, block):
    image = alloy[0][:260, :301]  # not a multiple of any block size; 16 < halo (96)
    whole = classical_model.predict(image)
    np.testing.assert_array_equal(segment_blockwise(classical_model, image, block_size=block), whole)


def test_blocks_computed_side_by_side_give_the_serial_labels(alloy, classical_model, monkeypatch):
    """Two (or three) blocks at once, each single-threaded, equal one block at a time; deep
    features always run one block at a time (their tiles are shared between blocks)."""
    from hrdv2.engine.blockwise import block_parallelism

    image = alloy[0][:300, :333]
    serial = segment_blockwise(classical_model, image, block_size=64, workers=1)
    np.testing.assert_array_equal(segment_blockwise(classical_model, image, block_size=64, workers=3), serial)
    np.testing.assert_array_equal(serial, classical_model.predict(image))
    stack = np.stack([image, 255 - image])  # every page's statistics are ready before workers start
    np.testing.assert_array_equal(segment_blockwise(classical_model, stack, block_size=100, workers=2),
                                  np.stack([serial, classical_model.predict(255 - image)]))
    big = np.tile(image, (4, 4))[:1030, :1031]  # a megapixel: numba kernels loaded beside the statistics pass
    np.testing.assert_array_equal(segment_blockwise(classical_model, big, block_size=512, workers=2),
                                  classical_model.predict(big))
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert block_parallelism(None) == (2, 8) and block_parallelism(4) == (4, 4)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert block_parallelism(None) == (1, 1)
    with pytest.raises(ConfigError, match="workers"):
        block_parallelism(0)


def test_probabilities_written_beside_the_labels_by_parallel_blocks(alloy, classical_model, tmp_path):
    """With two blocks at once the probabilities are written from the workers (one writer call at
    a time) and equal the whole-image ones; the labels are their argmax."""
    from hrdv2.segmentation.blockwise import label_writer

    image = alloy[0][:200, :230]
    proba = label_writer("ome-zarr", tmp_path / "p.ome.zarr", "k", len(classical_model.classes_), proba=True)
    labels = segment_blockwise(classical_model, image, block_size=64, workers=2, proba_writer=proba)
    back = np.moveaxis(np.asarray(zarr.open_group(str(tmp_path / "p.ome.zarr"), mode="r")["0"]), 0, -1)
    np.testing.assert_allclose(back, classical_model.predict_proba(image), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, classical_model.classes_[np.argmax(back, axis=-1)])


@pytest.mark.parametrize("band", [1 << 16, 1000, 7])
def test_strided_block_features_are_classified_in_bands_with_the_same_result(alloy, classical_model, monkeypatch, band):
    """A block's features are a crop of its read window's: classified band by band (bands of any
    size, the last one short), the probabilities equal those of the flattened copy."""
    import hrdv2.segmentation.blockwise as blockwise

    feats = classical_model.featurise(alloy[0][:130, :150])[11:120, 5:144]  # strided, 109 x 139
    assert not feats.flags.c_contiguous
    monkeypatch.setattr(blockwise, "BAND_PIXELS", band)
    expected = classical_model.predict_proba_features(np.ascontiguousarray(feats).reshape(-1, feats.shape[-1]))
    np.testing.assert_array_equal(blockwise.classify_block(classical_model, feats), expected)


def test_stack_is_segmented_page_by_page(alloy, classical_model):
    image = alloy[0][:150, :170]
    stack = np.stack([image, image[::-1], 255 - image])
    out = segment_blockwise(classical_model, stack, block_size=64)
    assert out.shape == stack.shape and out.dtype == np.uint8
    for page, lab in zip(stack, out):  # each page normalised and featurised on its own, as apply does
        np.testing.assert_array_equal(lab, classical_model.predict(page))


def test_tile_grid_covers_every_pixel_with_positive_weights():
    grid = TileGrid((300, 130), tile=112, overlap=14)
    w = np.zeros((300, 130))
    for rows, cols, weight in grid.tiles_touching((slice(0, 300), slice(0, 130))):
        assert weight.shape == (rows.stop - rows.start, cols.stop - cols.start) and weight.min() > 0
        w[rows, cols] += weight
    assert w.min() > 0
    assert tile_starts(300, 112, 14) == [0, 98, 196] and tile_starts(50, 112, 14) == [0]
    assert tile_starts(230, 112, 14) == [0, 98, 196]  # remainder 34 >= 2 * overlap: the last tile is cut
    assert tile_starts(220, 112, 14) == [0, 98, 108]  # remainder 24 < 2 * overlap: the last tile ends flush
    with pytest.raises(ConfigError, match="overlap"):
        TileGrid((100, 100), tile=20, overlap=14)


def test_deep_blockwise_equals_whole_image_tiled_run(tiny_backbone):
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=())  # the session's random-weight ViT
    assert engine.backbone is tiny_backbone
    rng = np.random.default_rng(0)
    image = (rng.random((90, 118)) * 255).astype(np.uint8)
    tiled = tiled_features(engine, image, tile=56, overlap=14)
    bf = BlockFeatures(engine, as_lazy(image), block_size=32, tile=56, overlap=14)
    blocks = map_blocks(as_lazy(image), bf.plan, bf.features, ArrayWriter(np.float32, bf.n_features))
    assert blocks.shape == (90, 118, 384)
    np.testing.assert_allclose(blocks, tiled, atol=1e-5, rtol=0)  # no seams between blocks
    assert not bf.parallel_safe  # tiles are shared between neighbouring blocks: one block at a time
    with pytest.raises(ConfigError, match="one block at a time"):
        bf.prepare_parallel()
    # one tile covering the whole image is the whole-image run itself
    np.testing.assert_allclose(tiled_features(engine, image, tile=140, overlap=14), engine.compute(image),
                               atol=1e-4, rtol=0)


def test_blockwise_refusals(alloy, classical_model):
    image = alloy[0][:64, :64]
    with pytest.raises(ConfigError, match="block size 8"):
        segment_blockwise(classical_model, image, block_size=8)
    with pytest.raises(ShapeError, match="3"):
        segment_blockwise(classical_model, np.dstack([image] * 3), block_size=32)
    crf = Segmenter("classical", crf=True).fit([alloy[0]], [alloy[1]])
    with pytest.raises(ConfigError, match="CRF"):
        segment_blockwise(crf, image)


def _run(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


def test_apply_cli_blockwise_ome_zarr_bigtiff_and_resume(alloy, classical_model, tmp_path):
    image = np.tile(alloy[0], (2, 2))[:900, :1000]
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(128, 128))
    model = classical_model.save(tmp_path / "m.skops")
    whole = classical_model.predict(image)
    code, text = _run("apply", model, tmp_path / "big.tif", "--out", tmp_path / "z", "--format", "ome-zarr",
                      "--block-size", "256")
    assert code == 0, text
    store = tmp_path / "z" / "big_labels.ome.zarr"
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(store)))()))
    level0 = np.asarray(node.data[0])
    assert level0.dtype == np.uint8 and len(node.data) >= 2  # a pyramid for viewers
    np.testing.assert_array_equal(level0.reshape(whole.shape), whole)
    assert zarr.open_group(str(store), mode="r")["0"].chunks[-2:] == (256, 256)

    code, text = _run("apply", model, tmp_path / "big.tif", "--out", tmp_path / "t", "--format", "bigtiff",
                      "--block-size", "256")
    assert code == 0, text
    with tifffile.TiffFile(tmp_path / "t" / "big_labels.ome.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.pages[0].asarray(), whole)
    fractions = (tmp_path / "t" / "phase_fractions.csv").read_text().splitlines()[1].split(",")[2:]
    counts = np.bincount(whole.ravel(), minlength=4)[1:] / whole.size
    np.testing.assert_allclose([float(v) for v in fractions], counts, atol=1e-6)


def test_interrupted_blockwise_apply_resumes(alloy, classical_model, tmp_path, monkeypatch):
    from hrdv2.segmentation import blockwise as bw_mod
    from hrdv2.segmentation.blockwise import label_writer

    image = alloy[0][:200, :220]
    calls = {"n": 0}
    original = bw_mod.BlockFeatures.features

    def flaky(self, data, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed ctrl-C in the middle
        return original(self, data, block)

    monkeypatch.setattr(bw_mod.BlockFeatures, "features", flaky)
    target = tmp_path / "x.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_blockwise(classical_model, image, label_writer("ome-zarr", target, "k"), block_size=64)
    assert not target.exists()  # nothing half-written at the target
    calls["n"] = 10
    segment_blockwise(classical_model, image, label_writer("ome-zarr", target, "k"), block_size=64)
    assert calls["n"] == 10 + 16 - 2  # 4x4 blocks, the 2 finished before the interrupt were skipped
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(target), mode="r")["0"]), classical_model.predict(image))


def test_volume_mode_trains_on_two_slices_and_applies_by_bricks(shared_data, tmp_path):
    """3-D filters: a model trained on two labelled slices of the ISBI stack segments the volume;
    bricks of any size give the same labels, and a slice's training features equal the bricks'."""
    from hrdv2.blocks import ArrayWriter
    from hrdv2.metrics.segmentation import compact_confusion, mean_iou

    d = shared_data / "isbi2012"
    vol = np.stack([read_image(d / f"isbi_{i:02d}.png")[:96, :112] for i in range(10)])
    gt = np.stack([read_labels(d / f"isbi_{i:02d}_gt.png")[:96, :112] for i in range(10)])
    lab = np.zeros_like(gt)
    rng = np.random.default_rng(0)
    for z in (2, 7):
        keep = rng.random(gt[z].shape) < 0.05
        lab[z][keep] = gt[z][keep]
    tifffile.imwrite(tmp_path / "vol.tif", vol, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    code, text = _run("train", "--image", tmp_path / "vol.tif", "--scribble", tmp_path / "lab.tif", "--volume",
                      "--spacing", "12.5,1,1", "--sigmas", "1,2,4", "--out", tmp_path / "v.skops")
    assert code == 0 and "2 slice(s)" in text, text
    seg = Segmenter.load(tmp_path / "v.skops")
    assert seg.features.volume and seg.features.spacing == (12.5, 1.0, 1.0)
    a = segment_blockwise(seg, vol, block_size=16)  # bricks smaller than the halo
    b = segment_blockwise(seg, vol, block_size=64, workers=1)
    np.testing.assert_array_equal(a, b)
    ids, cm = compact_confusion(list(zip(a, gt)))
    assert mean_iou(cm) > 0.6, mean_iou(cm)  # membranes vs cells from 5 % of two slices
    bf = BlockFeatures(seg.engine, as_lazy(vol), block_size=32)
    whole = map_blocks(as_lazy(vol), bf.plan, bf.features, ArrayWriter(np.float32, bf.n_features))
    np.testing.assert_allclose(bf.slice_features(7, block_size=40), whole[7], atol=1e-5, rtol=0)
    code, text = _run("apply", tmp_path / "v.skops", tmp_path / "vol.tif", "--out", tmp_path / "o", "--format", "tif")
    assert code == 0, text
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / "vol_labels.tif"), a)
    with pytest.raises(ConfigError, match="spacing"):
        FeatureConfig(volume=True, spacing=(1, 0, 1))
    with pytest.raises(ConfigError, match="volume mode"):
        seg.engine.compute(vol[0])


def test_auto_blend_applies_blockwise_as_whole_image(alloy, classical_model):
    """auto's blend (forest + logistic regression, hrdv2.features.auto.blend) through the block-wise
    apply: the compiled forest with the folded linear part in every block, the whole-image
    predict on a megapixel the same way, so the probabilities agree to float32 rounding."""
    import copy

    from hrdv2.features.auto import blend
    from hrdv2.segmentation.forest import FastBlend, fast_forest

    image, scribble = alloy
    linear = Segmenter("classical", "logistic").fit([image], [scribble])
    seg = copy.copy(classical_model)
    seg.model_ = blend(classical_model.model_, linear.model_, 0.25)
    big = np.tile(image[:300, :333], (4, 4))[:1030, :1031]
    whole = seg.predict_proba(big)
    assert isinstance(fast_forest(seg, seg.model_, big.size), FastBlend)
    probs = segment_blockwise(seg, big, block_size=512, workers=2, proba=True)
    np.testing.assert_allclose(probs, whole, atol=1e-5)
    # the blend differs from its forest alone: the linear part is really there
    assert np.abs(whole - classical_model.predict_proba(big)).max() > 0.05
