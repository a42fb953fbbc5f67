"""Box IoU, CorLoc, foreground IoU and boxes-per-image on hand-made boxes and masks."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.metrics.localisation import boxes_per_image, box_iou, corloc, foreground_iou, localised, mean_iou


def test_box_iou_hand_computed():
    a = [[0, 0, 10, 10]]
    b = [[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]]
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 0.0, 0.5])
    np.testing.assert_allclose(box_iou(b, a), iou.T)


def test_box_iou_empty_sets_and_bad_boxes():
    assert box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    with pytest.raises(ValueError, match="x1 < x0"):
        box_iou([[10, 0, 0, 10]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_localised_uses_strict_half_and_any_pair():
    gt = [[0, 0, 10, 10], [50, 50, 60, 60]]
    # IoU exactly 0.5 is not enough (IoU > 0.5 is the rule)
    assert not localised([[0, 0, 10, 5]], gt)
    assert localised([[0, 0, 10, 6]], gt)  # 0.6
    # any predicted box against any gt box
    assert localised([[100, 100, 110, 110], [51, 51, 60, 60]], gt)
    assert not localised(np.zeros((0, 4)), gt)


def test_corloc_over_images():
    gts = [[[0, 0, 10, 10]], [[0, 0, 10, 10]], [[0, 0, 10, 10]], [[0, 0, 10, 10]]]
    preds = [[[0, 0, 10, 10]], [[0, 0, 2, 2]], [], [[1, 1, 10, 10], [40, 40, 50, 50]]]
    assert corloc(preds, gts) == pytest.approx(0.5)
    assert np.isnan(corloc([], []))
    with pytest.raises(ValueError):
        corloc(preds[:2], gts)


def test_foreground_iou_and_ignore_region():
    gt = np.zeros((10, 10), bool)
    gt[:, :5] = True  # 50 px
    pred = np.zeros((10, 10), bool)
    pred[:, 2:7] = True  # 50 px, overlap 30
    assert foreground_iou(pred, gt) == pytest.approx(30 / 70)
    valid = np.ones((10, 10), bool)
    valid[:, 5:7] = False  # ignore the prediction's spill
    assert foreground_iou(pred, gt, valid) == pytest.approx(30 / 50)
    assert foreground_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        foreground_iou(pred, gt[:5])


def test_mean_iou_and_boxes_per_image():
    assert mean_iou([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert np.isnan(mean_iou([]))
    assert boxes_per_image([[[0, 0, 1, 1]], np.zeros((0, 4)), [[0, 0, 1, 1], [0, 0, 2, 2], [1, 1, 3, 3]]]) == 4 / 3
