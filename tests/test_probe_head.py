"""The optional trained head: a smoke test on a tiny synthetic dataset (not a benchmark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrdv2.errors import ShapeError
from hrdv2.probe.clicks import Click, simulate
from hrdv2.probe.head import ClickHead, HeadSegmenter, HeadTrainConfig, encode_clicks, train_head


def _toy_samples(n=4, size=24, channels=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[:size, :size]
        cy, cx, r = rng.integers(8, 16), rng.integers(8, 16), rng.integers(4, 7)
        gt = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        f = rng.standard_normal((channels, size, size)).astype(np.float32) * 0.3
        f[0] += 2.0 * gt
        out.append((torch.from_numpy(f), gt, None))
    return out


def test_encode_clicks_maps():
    maps = encode_clicks([Click(5, 5, True), Click(10, 12, False)], np.eye(16, dtype=bool), (16, 16), radius=2)
    assert maps.shape == (3, 16, 16)
    assert maps[0, 5, 5] == 1 and maps[0, 10, 12] == 0 and maps[1, 10, 12] == 1 and maps[1, 5, 5] == 0
    assert maps[0].sum() == 13  # a radius-2 disk
    assert torch.equal(maps[2], torch.eye(16))
    with pytest.raises(ShapeError):
        encode_clicks([], np.zeros((3, 3)), (16, 16))


def test_head_trains_and_plugs_into_the_simulator():
    torch.manual_seed(0)
    samples = _toy_samples()
    head = ClickHead(in_channels=6, hidden=16)
    losses = train_head(head, samples, HeadTrainConfig(steps=120, lr=5e-3, max_train_clicks=3, radius=2))
    assert len(losses) == 120 and all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    feats, gt, _ = samples[0]
    run = simulate(gt, HeadSegmenter(head, feats, radius=2).as_predictor(), max_clicks=3)
    assert len(run.ious) >= 1 and run.final_mask.shape == gt.shape and max(run.ious) > 0.5


def test_head_shape_errors():
    head = ClickHead(in_channels=6, hidden=8)
    with pytest.raises(ShapeError, match="click maps"):
        head(torch.zeros(1, 5, 8, 8), torch.zeros(1, 3, 8, 8))


def test_iter_training_samples_featurises_a_dataset(tmp_path):
    from hrdv2.datasets.interactive import InteractiveDataset, ObjectSample
    from hrdv2.probe.head import iter_training_samples

    gt = np.zeros((40, 60), bool)
    gt[10:30, 20:40] = True
    image = np.zeros((40, 60, 3), np.uint8)
    ds = InteractiveDataset("toy", [ObjectSample("a", tmp_path / "a.png", lambda: (image, gt, np.zeros_like(gt)))])

    class Const:
        name = "const"

        def __call__(self, img, backbone):
            return torch.zeros(5, *img.shape[:2])

    (feats, obj, ignore), = iter_training_samples(ds, Const(), backbone=None, max_side=30)
    assert tuple(feats.shape) == (5, 20, 30) and obj.shape == (20, 30) and obj.sum() == 100
