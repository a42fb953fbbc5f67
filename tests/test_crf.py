"""Dense CRF: cleans noisy probabilities along image edges; shapes and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.crf import dense_crf
from hrdv2.errors import ShapeError


def _noisy_case(rng, rgb=False):
    gt = np.zeros((64, 80), np.int64)
    gt[:, 40:] = 1
    img = np.where(gt == 1, 200, 50).astype(np.uint8)
    if rgb:
        img = np.stack([img, img // 2, 255 - img], -1)
    p1 = np.clip(np.where(gt == 1, 0.65, 0.35) + rng.normal(0, 0.25, gt.shape), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], -1).astype(np.float32)
    return img, probs, gt


@pytest.mark.parametrize("rgb", [False, True])
def test_crf_removes_speckle(rng, rgb):
    img, probs, gt = _noisy_case(rng, rgb)
    before = np.mean(probs.argmax(-1) == gt)
    out = dense_crf(img, probs, n_iter=5)
    assert out.shape == probs.shape and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(-1), 1, atol=1e-4)
    after = np.mean(out.argmax(-1) == gt)
    assert before < 0.9 and after > 0.98


def test_zero_iterations_is_identity(rng):
    img, probs, _ = _noisy_case(rng)
    np.testing.assert_array_equal(dense_crf(img, probs, n_iter=0), probs)


def test_bad_shapes(rng):
    img, probs, _ = _noisy_case(rng)
    with pytest.raises(ShapeError, match="must match"):
        dense_crf(img[:10], probs)
    with pytest.raises(ShapeError, match="K>=2"):
        dense_crf(img, probs[..., :1])


def test_segmenter_with_crf(rng):
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.segmentation import Segmenter

    img, probs, gt = _noisy_case(rng)
    noisy = np.clip(img + rng.normal(0, 60, img.shape), 0, 255).astype(np.uint8)
    scr = np.zeros(gt.shape, np.uint8)
    scr[30, 5:35] = 1
    scr[30, 45:75] = 2
    cfg = FeatureConfig(sigmas=(1,), filters=("intensity",))  # per-pixel: speckle the CRF must remove
    plain = Segmenter(cfg, classifier="logistic").fit([noisy], [scr]).predict(noisy)
    # a per-pixel logistic model is over-confident on noise pixels: a stronger smoothness term
    crf = Segmenter(cfg, classifier="logistic", crf=True, crf_params={"compat_gaussian": 10}).fit([noisy], [scr])
    crf = crf.predict(noisy)
    assert np.mean(plain == gt + 1) < 0.95 and np.mean(crf == gt + 1) > 0.98
