"""Confusion matrix, IoU, mIoU and pixel accuracy against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.errors import ShapeError
from hrdv2.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def test_hand_computed_case():
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 0]])
    pred = np.array([[1, 2, 2, 2], [1, 1, 1, 2]])
    cm = confusion_matrix(pred, gt)
    assert cm.shape == (3, 3) and cm[0].sum() == 0  # gt 0 ignored
    assert cm[1, 1] == 3 and cm[1, 2] == 1 and cm[2, 2] == 2 and cm[2, 1] == 1
    # class 1: tp 3, fp 1, fn 1 -> 3/5; class 2: tp 2, fp 1, fn 1 -> 2/4
    np.testing.assert_allclose(iou_per_class(pred, gt), [0.6, 0.5])
    assert mean_iou(pred, gt) == pytest.approx(0.55)
    assert pixel_accuracy(pred, gt) == pytest.approx(5 / 7)
    # the same from the matrix, and summed matrices over images
    assert mean_iou(cm) == pytest.approx(0.55)
    assert pixel_accuracy(cm + cm) == pytest.approx(5 / 7)


def test_perfect_and_absent_classes():
    gt = np.array([[1, 1], [3, 3]])
    np.testing.assert_allclose(iou_per_class(gt, gt, n_classes=3), [1.0, np.nan, 1.0])
    assert mean_iou(gt, gt, n_classes=3) == 1.0
    assert pixel_accuracy(gt, gt) == 1.0


def test_unlabelled_prediction_counts_as_error():
    gt = np.array([[1, 2]])
    pred = np.array([[0, 2]])
    assert pixel_accuracy(pred, gt) == 0.5
    np.testing.assert_allclose(iou_per_class(pred, gt), [0.0, 1.0])


def test_bad_input():
    with pytest.raises(ShapeError):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError):
        confusion_matrix(np.full((2, 2), 4), np.ones((2, 2), int), n_classes=2)
