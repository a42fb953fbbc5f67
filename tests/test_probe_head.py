"""The click head: click encoding, shapes, and checkpoints that reload to identical predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrdv2.errors import CheckpointError, ConfigError, HRDv2Error, ShapeError
from hrdv2.probe.clicks import Click
from hrdv2.probe.head import ClickHead, HeadSegmenter, encode_clicks, load_head, save_head


def test_encode_clicks_maps():
    maps = encode_clicks([Click(5, 5, True), Click(10, 12, False)], np.eye(16, dtype=bool), (16, 16), radius=2)
    assert maps.shape == (3, 16, 16)
    assert maps[0, 5, 5] == 1 and maps[0, 10, 12] == 0 and maps[1, 10, 12] == 1 and maps[1, 5, 5] == 0
    assert maps[0].sum() == 13  # a radius-2 disk
    assert torch.equal(maps[2], torch.eye(16))
    with pytest.raises(ShapeError):
        encode_clicks([], np.zeros((3, 3)), (16, 16))


def test_head_shape_errors():
    head = ClickHead(in_channels=6, hidden=8)
    with pytest.raises(ShapeError, match="click maps"):
        head(torch.zeros(1, 5, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ShapeError, match="trained on 6-channel"):
        HeadSegmenter(head, torch.zeros(5, 8, 8))
    with pytest.raises(ConfigError):
        ClickHead(in_channels=0)


def test_prototype_channel_reaches_far_pixels():
    """A pixel far outside every click disk still changes with the click (similarity channel)."""
    torch.manual_seed(0)
    head = ClickHead(in_channels=4, hidden=8, dilations=(1,), radius=1).eval()
    feats = torch.randn(4, 40, 40)
    seg = HeadSegmenter(head, feats)
    a = seg.logits([Click(5, 5, True)])
    b = seg.logits([Click(34, 34, True)])
    assert abs(a[20, 20] - b[20, 20]) > 1e-4


def test_checkpoint_roundtrip_gives_identical_predictions(tmp_path):
    torch.manual_seed(1)
    head = ClickHead(in_channels=6, hidden=16, dilations=(1, 3), radius=3)
    for p in head.parameters():  # make every weight matter
        p.data.normal_(0, 0.3)
    feats = torch.randn(6, 33, 47)  # odd sizes on purpose
    clicks = [Click(10, 20, True), Click(30, 5, False)]
    prev = np.zeros((33, 47), bool)
    prev[5:15, 10:30] = True
    before = HeadSegmenter(head, feats).logits(clicks, prev)
    path = save_head(tmp_path / "sub" / "head.pt", head, meta={"upsampler": "bilinear", "max_side": 64},
                     train_state={"step": 7})
    assert not list((tmp_path / "sub").glob(".*part*"))  # atomic: no temporary file left behind
    ck = load_head(path)
    after = HeadSegmenter(ck.head, feats).logits(clicks, prev)
    assert np.array_equal(before, after)
    assert ck.head.config == head.config and ck.meta == {"upsampler": "bilinear", "max_side": 64}
    assert ck.train_state == {"step": 7}


def test_load_head_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="click-head checkpoint file does not exist"):
        load_head(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ConfigError, match="not an hrdv2 click-head"):
        load_head(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(HRDv2Error, match="garbage.pt"):
        load_head(garbage)
