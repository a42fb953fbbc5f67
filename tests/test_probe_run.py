"""The click segmenter and the whole probe: CLI on shared/data/grabcut, outputs, honesty."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.datasets.interactive import InteractiveDataset, ObjectSample
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.metrics.clicks import noc
from hrdv2.probe.click_segmenter import ClickSegmenter, SegmenterConfig
from hrdv2.probe.clicks import Click, simulate
from hrdv2.probe.runner import ProbeConfig, downsize, run_probe


def _blob_scene(rng, shape=(48, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    gt = ((yy - 24) / 14) ** 2 + ((xx - 30) / 20) ** 2 <= 1
    return gt


def _features(gt, rng, signal: float, channels: int = 16):
    f = rng.standard_normal((channels, *gt.shape)).astype(np.float32)
    f[:4] += signal * gt  # the object shifts a few channels
    return torch.from_numpy(f)


def test_segmenter_with_informative_features_needs_few_clicks(rng):
    gt = _blob_scene(rng)
    run = simulate(gt, ClickSegmenter(_features(gt, rng, 3.0)).as_predictor(), max_clicks=10)
    assert noc(run.ious, 0.90, 10) <= 3


def test_segmenter_ranks_features_by_quality(rng):
    gt = _blob_scene(rng)
    good = simulate(gt, ClickSegmenter(_features(gt, rng, 3.0)).as_predictor(), max_clicks=5)
    weak = simulate(gt, ClickSegmenter(_features(gt, rng, 0.3)).as_predictor(), max_clicks=5)
    assert np.mean(good.ious) > np.mean(weak.ious) + 0.1


def test_segmenter_is_deterministic_and_respects_clicks(rng):
    gt = _blob_scene(rng)
    feats = _features(gt, rng, 1.0)
    a = ClickSegmenter(feats).predict([Click(24, 30, True), Click(5, 5, False)])
    b = ClickSegmenter(feats).predict([Click(24, 30, True), Click(5, 5, False)])
    assert np.array_equal(a, b)
    assert a[24, 30] and not a[5, 5]  # click disks carry their labels
    lab = __import__("scipy.ndimage", fromlist=["label"]).label(a)[0]
    assert set(np.unique(lab[a])) == {lab[24, 30]}  # one component, the clicked one


def test_segmenter_input_errors(rng):
    with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
        ClickSegmenter(np.zeros((4, 4)))
    seg = ClickSegmenter(_features(_blob_scene(rng), rng, 1.0))
    with pytest.raises(ShapeError, match="outside"):
        seg.predict([Click(100, 3, True)])
    with pytest.raises(ConfigError):
        seg.predict([])
    with pytest.raises(ConfigError):
        SegmenterConfig(radius=-1)


def test_downsize_keeps_masks_binary_and_aligned():
    img = np.zeros((100, 300, 3), np.uint8)
    m = np.zeros((100, 300), bool)
    m[40:60, 100:200] = True
    small, (ms,) = downsize(img, [m], 150)
    assert small.shape == (50, 150, 3) and ms.shape == (50, 150) and ms.dtype == bool
    assert 0.9 < ms.sum() / (m.sum() / 4) < 1.1


def test_run_probe_custom_and_unavailable_upsamplers(tmp_path, rng):
    gt = _blob_scene(rng)
    image = (np.stack([gt] * 3, -1) * 200 + 20).astype(np.uint8)
    ds = InteractiveDataset("toy", [ObjectSample("blob", tmp_path / "blob.png", lambda: (image, gt, np.zeros_like(gt)))])

    class Oracle:
        name = "oracle"

        def __call__(self, img, backbone):
            return _features(gt, np.random.default_rng(0), 3.0)

    class Missing:
        name = "missing"

        def check(self):
            from hrdv2.probe.upsamplers import UpsamplerUnavailableError

            raise UpsamplerUnavailableError("not installed here")

        def __call__(self, img, backbone):  # pragma: no cover - must never run
            raise AssertionError("an unavailable upsampler was called")

    res = run_probe(ds, [Oracle(), Missing()], "toy-backbone", ProbeConfig(max_clicks=5), tmp_path / "out", progress=False)
    assert res.unavailable == {"missing": "not installed here"}
    assert [r["upsampler"] for r in res.summary] == ["oracle"]
    assert res.summary[0]["noc@85"] <= 3
    meta = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert meta["unavailable"] == {"missing": "not installed here"}
    with pytest.raises(ConfigError, match="unique"):
        run_probe(ds, [Oracle(), Oracle()], "toy-backbone", progress=False)


def test_cli_probe_on_shared_grabcut_writes_csv_and_plot(shared_data, tmp_path):
    out = tmp_path / "probe"
    result = CliRunner().invoke(cli, [
        "probe", "--dataset", "folder", "--root", str(shared_data / "grabcut"), "--weights", "random",
        "--upsamplers", "nearest,bilinear", "--max-side", "64", "--limit", "2", "--clicks", "3", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "NoC@85" in result.output and "UNTRAINED" in result.output
    with open(out / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["upsampler"] for r in summary] == ["nearest", "bilinear"]
    for r in summary:
        assert r["dataset"] == "grabcut" and float(r["n"]) == 2
        assert 1 <= float(r["noc@85"]) <= 3 and 0 <= float(r["miou@3"]) <= 1
        assert float(r["miou@3"]) >= float(r["miou@1"]) - 0.5
    with open(out / "per_sample.csv") as fh:
        per = list(csv.DictReader(fh))
    assert len(per) == 4 and {r["sample"] for r in per} == {"106024", "124084"}
    assert all(max(int(r["height"]), int(r["width"])) == 64 for r in per)
    png = np.asarray(Image.open(out / "miou_vs_clicks.png").convert("L"))
    assert png.shape[0] > 100 and png.std() > 5  # a real plot, not a blank canvas
    meta = json.loads((out / "probe.json").read_text())
    assert "UNTRAINED" in meta["backbone"] and meta["config"]["max_clicks"] == 3


def test_cli_probe_reports_bad_names_and_missing_root(tmp_path):
    bad = CliRunner().invoke(cli, ["probe", "--root", str(tmp_path), "--upsamplers", "nearest,nope", "--weights", "random"])
    assert bad.exit_code == 2 and "nope" in bad.output
    missing = CliRunner().invoke(cli, ["probe", "--weights", "random"])
    assert missing.exit_code == 2 and "--root" in missing.output
    listing = CliRunner().invoke(cli, ["probe", "--list-upsamplers"])
    assert listing.exit_code == 0 and "joint-bilateral" in listing.output and "hrdv2-shift-flip" in listing.output
