"""The whole chain with a random-weights DINOv2 ViT-S/14 (quality is not asserted), the CRF
step, resizing, and the bad inputs: single-colour image, k above the pixel count."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from hrdv2.io import read_image
from hrdv2.unsupervised import (
    UnsupervisedSettings,
    build_featurizer,
    crf_refine,
    labels_to_probs,
    resize_for_processing,
    segment_unsupervised,
)
from hrdv2.unsupervised.overlay import render_overlay


@pytest.fixture(scope="module")
def fast_featurizer(tiny_backbone):
    return build_featurizer(tiny_backbone, stride=14, shifts=(), flips=False)


def _check_result(res, shape):
    assert res.classes.shape == shape and res.classes.dtype == np.int32
    assert res.classes.min() >= 1
    assert res.foreground.shape == shape and res.foreground.dtype == bool
    np.testing.assert_array_equal(res.foreground, np.isin(res.classes, res.foreground_classes))
    b = res.boxes.boxes
    assert b.ndim == 2 and b.shape[1] == 4
    if len(b):
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= shape[1]).all() and (b[:, 3] <= shape[0]).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        # every box lies on foreground pixels
        for x0, y0, x1, y1 in b:
            assert res.foreground[y0:y1, x0:x1].any()
    doc = json.loads(json.dumps(res.summary()))
    assert len(doc["boxes"]) == len(b)
    assert all(set(d) == {"box", "class", "score", "superbox"} for d in doc["boxes"])


def test_end_to_end_random_backbone_on_a_horse(shared_data, fast_featurizer):
    image = read_image(shared_data / "horse" / "horse001.png")
    res = segment_unsupervised(image, featurizer=fast_featurizer, max_side=112, k=20)
    _check_result(res, image.shape[:2])
    assert res.info["processing_shape"] == [round(232 * 112 / 315), 112]  # 315x232 -> 112 px long side
    assert "UNTRAINED" in res.info["backbone"] and res.info["pretrained"] is False
    assert {"features", "pca", "kmeans", "foreground", "merging", "boxes"} <= set(res.timings)
    assert res.cluster_foreground.size == res.info["k_used"] <= 20
    # overlay is a picture of the image's size
    pic = render_overlay(image, res.classes, res.foreground_classes, res.boxes)
    assert pic.shape == (*image.shape[:2], 3) and pic.dtype == np.uint8


def test_end_to_end_is_deterministic(shared_data, fast_featurizer):
    image = read_image(shared_data / "horse" / "horse002.png")
    a = segment_unsupervised(image, featurizer=fast_featurizer, max_side=112, k=15, seed=1)
    b = segment_unsupervised(image, featurizer=fast_featurizer, max_side=112, k=15, seed=1)
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.boxes.boxes, b.boxes.boxes)


def test_end_to_end_with_crf(shared_data, fast_featurizer):
    image = read_image(shared_data / "grabcut" / "21077.png")
    res = segment_unsupervised(image, featurizer=fast_featurizer, max_side=112, k=20, crf=True)
    _check_result(res, image.shape[:2])
    assert "crf" in res.timings or not res.foreground_classes


def test_crf_refine_snaps_speckle_to_image_regions(rng):
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 30:] = (220, 200, 180)
    truth = np.where(np.arange(60)[None, :] < 30, 1, 2).repeat(40, axis=0)
    noisy = truth.copy()
    flip = rng.random(truth.shape) < 0.15
    noisy[flip] = 3 - noisy[flip]
    refined = crf_refine(image, noisy.astype(np.int32), n_iter=5, confidence=0.6)
    assert refined.shape == truth.shape and set(np.unique(refined)) <= {1, 2}
    assert (refined == truth).mean() > 0.97 > (noisy == truth).mean()


def test_labels_to_probs():
    p = labels_to_probs(np.array([[1, 3], [2, 2]]), 0.7)
    assert p.shape == (2, 2, 3)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert p[0, 1, 2] == pytest.approx(0.7) and p[0, 1, 0] == pytest.approx(0.15)


def test_resize_for_processing_keeps_aspect():
    img = np.zeros((300, 600, 3), np.uint8)
    assert resize_for_processing(img, 224).shape == (112, 224, 3)
    assert resize_for_processing(img, None) is img
    assert resize_for_processing(img, 1000) is img
    with pytest.raises(ValueError, match="max_side"):
        resize_for_processing(img, 5)


def test_single_colour_image_gives_a_valid_result(fast_featurizer):
    image = np.full((70, 70, 3), 128, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = segment_unsupervised(image, featurizer=fast_featurizer, k=80)
    _check_result(res, (70, 70))
    if not res.foreground.any():
        assert res.message and "no foreground" in res.message


def test_k_above_pixel_count_warns_and_runs(fast_featurizer):
    image = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)  # 2x2 patch grid
    with pytest.warns(UserWarning, match="k=80"):
        res = segment_unsupervised(image, featurizer=fast_featurizer, k=80, min_area=1)
    _check_result(res, (20, 20))
    assert res.info["k_used"] <= 4


def test_bad_settings_are_clear_errors(fast_featurizer):
    image = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown setting"):
        segment_unsupervised(image, featurizer=fast_featurizer, kk=3)
    with pytest.raises(ValueError, match="k must be"):
        segment_unsupervised(image, featurizer=fast_featurizer, settings=UnsupervisedSettings(k=0))
    with pytest.raises(ValueError, match="image must be"):
        segment_unsupervised(np.zeros((5, 5, 4)), featurizer=fast_featurizer)
