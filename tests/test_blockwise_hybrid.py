"""Block-wise hybrid features (classical + deep, each standardised over the whole page) equal
the whole-image run; with the random-weight ViT (UNTRAINED: mechanics only) on real micrographs."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.blocks import as_lazy
from hrdv2.engine import FeatureEngine
from hrdv2.engine.blockwise import BlockFeatures, tiled_features
from hrdv2.engine.core import Moments
from hrdv2.features.sets import standardise

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """A 70x90 crop of isbi_00 and sparse labels taken from its ground truth (every 5th pixel)."""
    from hrdv2.io import read_image, read_labels

    d = shared_data / "isbi2012"
    crop = (slice(60, 130), slice(150, 240))
    image, gt = read_image(d / "isbi_00.png")[crop], read_labels(d / "isbi_00_gt.png")[crop]
    labels = np.zeros_like(gt)
    labels[::5, ::5] = gt[::5, ::5]
    assert set(np.unique(labels)) == {0, 1, 2}
    return np.ascontiguousarray(image), labels


@pytest.fixture(scope="module")
def hybrid(tiny_backbone) -> FeatureEngine:
    return FeatureEngine.for_backbone(tiny_backbone, kind="hybrid", shifts=(), sigmas=(1, 2, 4))


def _blockwise(engine: FeatureEngine, image: np.ndarray, block: int, tile: int = 448) -> tuple[np.ndarray, BlockFeatures]:
    bf = BlockFeatures(engine, as_lazy(image), block, tile=tile, overlap=tile // 8)
    out = None
    for b in bf.plan:
        f = bf.features(image[b.read], b)
        out = np.zeros(image.shape + f.shape[-1:], np.float32) if out is None else out
        out[b.write] = f
    assert out is not None
    return out, bf


def test_moments_match_whole_image_standardisation(rng):
    x = (rng.normal(5.0, 0.01, (3000, 4)) + np.arange(4) * 100).astype(np.float32)
    m = Moments()
    for a, b in ((0, 7), (7, 1000), (1000, 2999), (2999, 3000)):
        m.add(x[a:b], chunk=256)
    _, mean, std = standardise(x)
    np.testing.assert_allclose(m.result()[0], mean, rtol=1e-6)
    np.testing.assert_allclose(m.result()[1], std, rtol=1e-5)


@pytest.mark.parametrize("block", [16, 48])
def test_blockwise_hybrid_equals_whole_image(pair, hybrid, block):
    image, _ = pair
    whole = hybrid.compute(image)  # the image fits one tile: tiled deep features are the whole-image ones
    got, bf = _blockwise(hybrid, image, block)
    assert len(bf.plan) > 1 and got.shape == whole.shape
    np.testing.assert_allclose(got, whole, rtol=1e-4, atol=1e-4)


def test_blockwise_hybrid_with_several_tiles_equals_tiled_whole_image(pair, hybrid):
    image, _ = pair
    got, bf = _blockwise(hybrid, image, 32, tile=56)
    assert len(bf.grid.tiles_touching((slice(0, image.shape[0]), slice(0, image.shape[1])))) > 1
    classical = FeatureEngine(hybrid.config.replace(kind="classical")).compute(image)
    deep = tiled_features(FeatureEngine(hybrid.config.replace(kind="deep"), backbones=hybrid.backbones), image, 56, 7)
    expected = np.concatenate([standardise(classical)[0], standardise(deep)[0]], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_hybrid_model_predicts_the_same_labels_block_wise_and_after_reload(pair, hybrid, tmp_path):
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import segment_blockwise

    image, labels = pair
    seg = Segmenter(hybrid.config, classifier="logistic", backbones=hybrid.backbones).fit([image], [labels])
    whole = seg.predict(image)
    assert set(np.unique(whole)) == {1, 2}
    np.testing.assert_array_equal(segment_blockwise(seg, image, block_size=32), whole)
    seg.save(tmp_path / "hybrid.skops")  # a model file as before: no new fields, loads and predicts as saved
    again = Segmenter.load(tmp_path / "hybrid.skops")
    again.backbones = hybrid.backbones
    np.testing.assert_array_equal(again.predict(image), whole)
    np.testing.assert_array_equal(segment_blockwise(again, image, block_size=16), whole)
