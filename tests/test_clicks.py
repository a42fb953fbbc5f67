"""The click simulator on hand-made masks: where clicks land, their sign, when a session stops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.probe.clicks import Click, iou, next_click, simulate


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def component_oracle(gt):
    """A perfect segmenter: the gt components touched by a positive click, minus negatively clicked ones."""
    labels, _ = ndimage.label(gt)

    def predict(clicks, prev):
        keep = {labels[c.y, c.x] for c in clicks if c.positive} - {0}
        return np.isin(labels, list(keep))

    return predict


def test_square_first_click_at_centre():
    gt = np.zeros((41, 41), bool)
    gt[10:31, 10:31] = True  # 21 x 21, centre (20, 20)
    assert next_click(gt) == Click(20, 20, True)


def test_square_off_centre_in_image():
    gt = np.zeros((30, 50), bool)
    gt[3:12, 30:39] = True  # 9 x 9, centre (7, 34)
    assert next_click(gt) == Click(7, 34, True)


def test_two_blobs_clicks_then_stops_when_perfect():
    gt = disk((41, 81), 20, 20, 10) | disk((41, 81), 20, 62, 5)
    run = simulate(gt, component_oracle(gt), max_clicks=20)
    assert run.clicks == [Click(20, 20, True), Click(20, 62, True)]  # the big blob first, then the small
    big = disk((41, 81), 20, 20, 10).sum()
    assert run.ious[0] == pytest.approx(big / gt.sum())
    assert run.ious[1] == 1.0
    assert len(run.ious) == 2  # no error left: no third click


def test_stops_at_threshold():
    gt = disk((41, 81), 20, 20, 10) | disk((41, 81), 20, 62, 5)
    first_iou = disk((41, 81), 20, 20, 10).sum() / gt.sum()
    below = simulate(gt, component_oracle(gt), stop_iou=first_iou + 0.01)
    at = simulate(gt, component_oracle(gt), stop_iou=first_iou)
    assert len(below.ious) == 2 and len(at.ious) == 1


def test_ring_first_click_on_ring_then_negative_in_hole():
    shape = (41, 41)
    ring = disk(shape, 20, 20, 16) & ~disk(shape, 20, 20, 8)
    first = next_click(ring)
    assert first.positive and ring[first.y, first.x]
    radius = np.hypot(first.y - 20, first.x - 20)
    assert 10.5 <= radius <= 13.5  # midway through the ring's width
    filled = disk(shape, 20, 20, 16)  # a predictor that fills the hole
    run = simulate(ring, lambda clicks, prev: filled, max_clicks=2)
    assert run.clicks[1] == Click(20, 20, False)  # the hole is false foreground: negative at its centre


def test_sign_follows_largest_error_region():
    gt = np.zeros((40, 40), bool)
    gt[5:15, 5:15] = True
    pred = gt.copy()
    pred[5:8, 5:8] = False  # 9 px missed
    pred[20:35, 20:35] = True  # 225 px false foreground
    c = next_click(gt, pred)
    assert not c.positive and 20 <= c.y < 35 and 20 <= c.x < 35
    pred2 = np.zeros_like(gt)
    pred2[30:32, 30:32] = True  # 4 px false foreground, the whole object missed
    assert next_click(gt, pred2).positive


def test_strategies_differ_on_thin_vs_compact_regions():
    gt = np.zeros((40, 80), bool)
    gt[2:5, 5:75] = True  # thin strip, 210 px, depth 2
    pred = gt.copy()
    pred[:] = False
    pred[20:31, 20:31] = True  # compact false positive, 121 px, depth 6
    largest = next_click(gt, pred, strategy="largest_region")
    farthest = next_click(gt, pred, strategy="farthest")
    assert largest.positive and gt[largest.y, largest.x]
    assert not farthest.positive and (farthest.y, farthest.x) == (25, 25)


def test_ignore_pixels_are_never_clicked_nor_errors():
    gt = np.zeros((41, 41), bool)
    gt[10:31, 10:31] = True
    ignore = np.zeros_like(gt)
    ignore[15:26, 15:26] = True  # the centre is ignored
    c = next_click(gt, None, ignore)
    assert c.positive and gt[c.y, c.x] and not ignore[c.y, c.x]
    pred = gt & ~ignore
    assert next_click(gt, pred, ignore) is None  # only ignored pixels differ: nothing to fix
    assert iou(pred, gt, ignore) == 1.0
    assert iou(pred, gt) < 1.0


def test_seeded_tie_breaking_is_deterministic():
    gt = np.zeros((20, 60), bool)
    gt[5:9, 5:55] = True  # many interior points share the maximal distance
    a = [next_click(gt, rng=np.random.default_rng(s)) for s in range(6)]
    b = [next_click(gt, rng=np.random.default_rng(s)) for s in range(6)]
    assert a == b
    assert len(set(a)) > 1  # different seeds can break the tie differently
    assert all(gt[c.y, c.x] for c in a)


def test_max_clicks_caps_the_session():
    gt = disk((41, 41), 20, 20, 10)
    run = simulate(gt, lambda clicks, prev: np.zeros_like(gt), max_clicks=5)
    assert len(run.clicks) == 5 and run.ious == [0.0] * 5


def test_bad_inputs_raise_clear_errors():
    gt = disk((20, 20), 10, 10, 4)
    with pytest.raises(ShapeError, match="empty"):
        simulate(np.zeros((20, 20), bool), lambda c, p: p)
    with pytest.raises(ShapeError, match="shape"):
        simulate(gt, lambda c, p: np.zeros((5, 5), bool))
    with pytest.raises(ConfigError, match="strategy"):
        next_click(gt, strategy="nope")
    with pytest.raises(ShapeError):
        next_click(gt, np.zeros((3, 3), bool))
