"""`hrdv2 probe linear`: a probe learns a synthetic two-texture folder, heads in DINOv2's key
layout load and predict exactly as BatchNorm + 1x1 conv, the VOC / COCO-Stuff readers map
labels to hrdv2's convention, and the command runs end to end (train, then apply its head)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hrdv2.cli.main import cli
from hrdv2.datasets.segmentation import load_segmentation
from hrdv2.errors import ConfigError, ModelFileError
from hrdv2.io import read_image, write_image
from hrdv2.matching import DenseFeatures
from hrdv2.probe.linear import (
    LinearHead, LinearProbeConfig, evaluate, load_head, predict, sample_pixels, save_head, train_head,
)


def _two_texture(rng: np.random.Generator, size: int = 56) -> tuple[np.ndarray, np.ndarray]:
    """Fine vertical stripes inside a random disc, coarse diagonal waves outside; gt 2 = disc, 1 = rest."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
    r = rng.uniform(size * 0.2, size * 0.35)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    a = 0.5 + 0.4 * np.sin(2 * np.pi * xx / 4 + rng.uniform(0, 6))
    b = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + yy) / 16 + rng.uniform(0, 6))
    img = np.where(disc, a, b) + rng.normal(0, 0.03, (size, size))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), (disc + 1).astype(np.uint8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def textures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textures")
    for split, n, seed in (("train", 5, 0), ("val", 3, 1)):
        rng = np.random.default_rng(seed)
        for i in range(n):
            img, gt = _two_texture(rng)
            write_image(root / split / f"s{i}.png", img)
            write_image(root / split / f"s{i}_gt.png", gt)
    return root


def test_probe_learns_two_textures(textures):
    train, val = load_segmentation("folder", textures / "train"), load_segmentation("folder", textures / "val")
    dense = DenseFeatures("classical")
    x, y = sample_pixels(train, dense, per_image=1500, progress=False)
    assert x.shape[0] == y.shape[0] == 5 * 1500 and set(np.unique(y)) == {1, 2}
    head = train_head(x, y, 2, LinearProbeConfig(steps=150), progress=False)
    scores, kept = evaluate(head, val, dense, progress=False, keep=2)
    assert scores.miou > 0.85 and scores.accuracy > 0.9 and scores.n_images == 3
    assert len(kept) == 2 and kept[0][2].shape == kept[0][1].shape
    # an untrained head of the same shape is no better than chance on these balanced-ish classes
    chance, _ = evaluate(LinearHead(x.shape[1], 2).eval(), val, dense, progress=False)
    assert chance.miou < scores.miou - 0.3


def test_dinov2_layout_head_loads_and_predicts_as_bn_then_conv(tmp_path):
    torch.manual_seed(0)
    c, k = 6, 3
    state = {"decode_head.bn.weight": torch.rand(c) + 0.5, "decode_head.bn.bias": torch.randn(c),
             "decode_head.bn.running_mean": torch.randn(c), "decode_head.bn.running_var": torch.rand(c) + 0.5,
             "decode_head.bn.num_batches_tracked": torch.tensor(100),
             "decode_head.conv_seg.weight": torch.randn(k, c, 1, 1), "decode_head.conv_seg.bias": torch.randn(k)}
    torch.save({"meta": {"mmseg_version": "0.27.0"}, "state_dict": state}, tmp_path / "head.pth")
    head, meta = load_head(tmp_path / "head.pth")
    assert (head.in_channels, head.n_classes, meta["mmseg_version"]) == (c, k, "0.27.0")
    feats = np.random.default_rng(0).normal(size=(7, 9, c)).astype(np.float32)
    s = {key.removeprefix("decode_head."): v.numpy() for key, v in state.items()}
    normed = (feats - s["bn.running_mean"]) / np.sqrt(s["bn.running_var"] + 1e-5) * s["bn.weight"] + s["bn.bias"]
    logits = normed @ s["conv_seg.weight"][:, :, 0, 0].T + s["conv_seg.bias"]
    assert np.array_equal(predict(head, feats), logits.argmax(-1) + 1)  # channel c is class id c + 1
    with pytest.raises(ConfigError, match="expects 6 feature channels"):
        predict(head, feats[..., :4])
    # a head of another kind, a truncated file and a missing file: one clear error each
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(2, 4, 1, 1),
                               "decode_head.convs.0.weight": torch.zeros(1)}}, tmp_path / "ms.pth")
    with pytest.raises(ModelFileError, match="not a linear head"):
        load_head(tmp_path / "ms.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "head.pth").read_bytes()[:100])
    with pytest.raises(ModelFileError, match="cannot be read as a linear-head checkpoint"):
        load_head(tmp_path / "cut.pth")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_head(tmp_path / "nothing.pth")


def test_saved_head_round_trips(tmp_path):
    x = np.random.default_rng(1).normal(size=(400, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 1
    head = train_head(x, y, 2, LinearProbeConfig(steps=200), progress=False)
    save_head(head, tmp_path / "h.pth", {"upsampler": "test"})
    again, meta = load_head(tmp_path / "h.pth")
    feats = x.reshape(20, 20, 5)
    assert meta["upsampler"] == "test" and np.array_equal(predict(head, feats), predict(again, feats))
    assert (predict(again, feats).ravel() == y).mean() > 0.95


def test_voc_and_cocostuff_readers_map_labels(tmp_path):
    from PIL import Image

    voc = tmp_path / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    write_image(voc / "JPEGImages" / "a.png", np.zeros((8, 10, 3), np.uint8))
    (voc / "JPEGImages" / "a.png").rename(voc / "JPEGImages" / "a.jpg")
    raw = np.zeros((8, 10), np.uint8)
    raw[2:5, 3:6], raw[0] = 15, 255  # person, boundary
    lab = Image.frombytes("P", (10, 8), raw.tobytes())
    lab.putpalette([0, 0, 0, 128, 0, 0] * 128)
    (voc / "SegmentationClass").mkdir()
    lab.save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    ds = load_segmentation("voc", tmp_path, "val")
    labels = ds[0].labels()
    assert ds.n_classes == 21 and labels[3, 4] == 16 and labels[0, 0] == 0 and labels[7, 9] == 1
    coco = tmp_path / "coco"
    write_image(coco / "images" / "val2017" / "1.png", np.zeros((6, 6, 3), np.uint8))
    (coco / "images" / "val2017" / "1.png").rename(coco / "images" / "val2017" / "1.jpg")
    fine = np.full((6, 6), 255, np.uint8)
    fine[0, :3] = (0, 91, 181)  # person -> coarse 9, fine 91 -> 17, fine 181 -> 24 (STEGO's table)
    write_image(coco / "annotations" / "val2017" / "1.png", fine)
    coarse = load_segmentation("cocostuff", coco, "val")[0].labels()
    assert coarse[0, :4].tolist() == [10, 18, 25, 0]
    assert load_segmentation("cocostuff", coco, "val", coarse=False)[0].labels()[0, :3].tolist() == [1, 92, 182]


def test_cli_trains_then_applies_its_head(textures, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["probe", "linear", "--val", str(textures / "val"), "--upsampler", "classical", "--out", str(out)]
    res = runner.invoke(cli, args + ["--train", str(textures / "train"), "--steps", "120"])
    assert res.exit_code == 0, res.output
    trained = json.loads((out / "linear_probe.json").read_text())["results"][0]
    assert trained["miou"] > 0.85 and "classical" in res.output
    assert (out / "head_classical.pth").is_file() and list((out / "cache").glob("pool-classical-*.npz"))
    pic = read_image(out / "predictions_classical.png")
    assert pic.ndim == 3 and pic.shape[1] > 2 * pic.shape[0] / 3  # rows of image | truth | prediction
    applied = runner.invoke(cli, args + ["--head", str(out / "head_classical.pth"), "--out", str(tmp_path / "o2")])
    assert applied.exit_code == 0, applied.output
    again = json.loads((tmp_path / "o2" / "linear_probe.json").read_text())["results"][0]
    assert again["miou"] == pytest.approx(trained["miou"])
    wrong = runner.invoke(cli, ["probe", "linear", "--val", str(textures / "val"), "--upsampler", "nearest",
                                "--weights", "random", "--head", str(out / "head_classical.pth"),
                                "--out", str(tmp_path / "o3")])
    assert wrong.exit_code == 2 and "but the features have 384" in wrong.output
    assert "random weights, UNTRAINED" in wrong.output


def test_cli_random_weights_probe_says_so(textures, tmp_path):
    res = CliRunner().invoke(cli, ["probe", "linear", "--train", str(textures / "train"), "--val", str(textures / "val"),
                                   "--upsampler", "nearest", "--weights", "random", "--steps", "20", "--limit", "2",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "random weights, UNTRAINED" in res.output and "say nothing about the quality" in res.output
    result = json.loads((tmp_path / "o" / "linear_probe.json").read_text())["results"][0]
    assert result["untrained"] and 0 <= result["miou"] <= 1
