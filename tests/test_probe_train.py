"""Training the click head: the loss, click sampling, learning on held-out objects, resuming,
and the CLI (train on shared horse, evaluate with --head on shared grabcut, plot two runs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.probe.clicks import simulate
from hrdv2.probe.feature_cache import CachedSample
from hrdv2.probe.head import ClickHead, HeadSegmenter, load_head, save_head
from hrdv2.probe.training import TrainConfig, initial_clicks, normalized_focal_loss, train_click_head


def _toy(n: int, seed: int, size: int = 28, channels: int = 6) -> list[CachedSample]:
    """Discs whose pixels shift channel 0: features that carry the object, plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[:size, :size]
        cy, cx, r = rng.integers(9, size - 9), rng.integers(9, size - 9), rng.integers(4, 7)
        gt = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        f = rng.standard_normal((channels, size, size)).astype(np.float32) * 0.5
        f[0] += 1.5 * gt
        out.append(CachedSample(f"s{i}", f.astype(np.float16), gt, np.zeros_like(gt)))
    return out


def _mean_iou(head: ClickHead, samples: list[CachedSample], clicks: int = 3) -> float:
    return float(np.mean([np.mean(simulate(s.obj, HeadSegmenter(head, s.features_tensor()).as_predictor(),
                                           max_clicks=clicks).ious) for s in samples]))


def test_normalised_focal_loss_properties():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    valid = torch.ones(1, 8, 8)
    good = (target * 2 - 1) * 6.0  # confident and right
    bad = -good
    assert normalized_focal_loss(good, target, valid) < 0.01 < 1.0 < normalized_focal_loss(bad, target, valid)
    # ignored pixels carry no loss, whatever is predicted there
    valid2 = valid.clone()
    valid2[0, 0, :] = 0
    changed = good.clone()
    changed[0, 0, :] = 30.0
    assert torch.isclose(normalized_focal_loss(good, target, valid2), normalized_focal_loss(changed, target, valid2))
    # the formula: sum beta * (-log p_t) / sum beta, beta = (1 - p_t)^2
    logits = torch.randn(1, 8, 8)
    p = torch.sigmoid(logits)
    pt = torch.where(target > 0.5, p, 1 - p)
    beta = (1 - pt) ** 2
    assert torch.isclose(normalized_focal_loss(logits, target, valid), (beta * -pt.log()).sum() / beta.sum(), atol=1e-5)


def test_initial_clicks_respect_object_background_and_ignore():
    rng = np.random.default_rng(0)
    gt = np.zeros((30, 30), bool)
    gt[8:20, 8:20] = True
    ignore = np.zeros_like(gt)
    ignore[:, 25:] = True
    for _ in range(20):
        clicks = initial_clicks(gt, ignore, rng, max_positive=3, max_negative=3)
        assert clicks[0].positive and 1 <= sum(c.positive for c in clicks) <= 3
        for c in clicks:
            assert gt[c.y, c.x] == c.positive and not ignore[c.y, c.x]


def test_training_lowers_the_loss_and_beats_the_untrained_head_on_held_out_objects():
    train, held_out = _toy(8, seed=0), _toy(4, seed=1)
    torch.manual_seed(0)
    head = ClickHead(6, hidden=8, dilations=(1, 2), radius=2)
    untrained = _mean_iou(head, held_out)
    res = train_click_head(head, train, TrainConfig(steps=30, batch_size=4, lr=1e-2, max_iter_clicks=1),
                           progress=False)
    assert len(res.losses) == len(res.bce) == 30 and np.all(np.isfinite(res.losses))
    assert np.mean(res.bce[-5:]) < 0.5 * np.mean(res.bce[:5])  # the per-pixel loss falls a lot
    trained = _mean_iou(head, held_out)
    assert trained > untrained + 0.3 and trained > 0.6, (untrained, trained)


def test_resume_continues_exactly(tmp_path):
    data = _toy(4, seed=2, size=20)
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-2, max_iter_clicks=2, checkpoint_every=2)
    torch.manual_seed(0)
    straight = ClickHead(6, hidden=8, dilations=(1,), radius=2)
    train_click_head(straight, data, cfg, checkpoint=tmp_path / "a.pt", progress=False)

    torch.manual_seed(0)
    first = ClickHead(6, hidden=8, dilations=(1,), radius=2)
    half = TrainConfig(**{**cfg.__dict__, "steps": 2})
    train_click_head(first, data, half, checkpoint=tmp_path / "b.pt", meta={"upsampler": "x"}, progress=False)
    ck = load_head(tmp_path / "b.pt")
    assert ck.train_state["step"] == 2 and ck.meta == {"upsampler": "x"}
    res = train_click_head(ck.head, data, cfg, checkpoint=tmp_path / "b.pt", resume_state=ck.train_state,
                           progress=False)
    assert res.steps_done == 4 and len(res.losses) == 4
    for (k, a), b in zip(straight.state_dict().items(), ck.head.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert load_head(tmp_path / "b.pt").train_state["step"] == 4


def _curve_row(path):
    with open(path / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shared_data):
    """`hrdv2 probe train` on 6 shared horse objects at 56 px (4 more held out), random (UNTRAINED) ViT weights."""
    out = tmp_path_factory.mktemp("train")
    args = ["probe", "train", "--dataset", "folder", "--root", str(shared_data / "horse"), "--weights", "random",
            "--upsampler", "bilinear", "--out", str(out), "--max-side", "56", "--limit", "10", "--holdout", "4", "--steps", "30",
            "--batch-size", "3", "--hidden", "16", "--radius", "3", "--lr", "0.01", "--max-iter-clicks", "1",
            "--checkpoint-every", "15"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out, args


def test_cli_train_writes_a_resumable_checkpoint_and_log(trained_run):
    out, args = trained_run
    ck = load_head(out / "head.pt")
    assert ck.train_state["step"] == 30 and ck.meta["upsampler"] == "bilinear" and ck.meta["max_side"] == 56
    assert "UNTRAINED" in ck.meta["backbone_describe"] and len(ck.meta["holdout"]) == 4
    with open(out / "train_log.csv", newline="") as fh:
        log = list(csv.DictReader(fh))
    assert len(log) == 30
    report = json.loads((out / "train.json").read_text())
    assert report["train_objects"] == 6 and report["bce_last"] < 0.75 * report["bce_first"]
    # the held-out horses were never trained on: the trained head segments them better than its own init
    assert report["held_out_miou_after"] > report["held_out_miou_before"] + 0.02, report
    assert list((out / "feature_cache").glob("*/*.npy"))  # features were cached
    again = CliRunner().invoke(cli, args)  # an existing run is never silently overwritten
    assert again.exit_code == 2 and "--resume" in again.output
    more = CliRunner().invoke(cli, [*args[:args.index("--steps") + 1], "32", *args[args.index("--steps") + 2:],
                                    "--resume"])
    assert more.exit_code == 0, more.output
    assert load_head(out / "head.pt").train_state["step"] == 32


def test_cli_head_evaluation_writes_csv_and_plot_and_plot_overlays_runs(trained_run, shared_data, tmp_path):
    out, _ = trained_run
    untrained = ClickHead(384, hidden=16, radius=3)
    save_head(tmp_path / "untrained.pt", untrained, meta={"upsampler": "bilinear"})
    common = ["probe", "--dataset", "folder", "--root", str(shared_data / "grabcut"), "--weights", "random",
              "--upsamplers", "bilinear", "--max-side", "56", "--limit", "2", "--clicks", "4"]
    runs = {}
    for name, head in (("trained", out / "head.pt"), ("untrained", tmp_path / "untrained.pt")):
        res = CliRunner().invoke(cli, [*common, "--head", str(head), "--out", str(tmp_path / name),
                                       *(["--vis-clicks", "1", "--save-features"] if name == "trained" else [])])
        assert res.exit_code == 0, res.output
        runs[name] = _curve_row(tmp_path / name)[0]
    trained_dir = tmp_path / "trained"
    with open(trained_dir / "per_sample.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"noc@80", "noc@85", "noc@90", "fail@90", "iou@4"} <= set(rows[0])
    assert {"noc@80", "fail@85", "miou@4"} <= set(runs["trained"])
    assert json.loads((trained_dir / "probe.json").read_text())["evaluator"] == {"*": str(out / "head.pt")}
    assert Image.open(trained_dir / "miou_vs_clicks.png").size[0] > 300
    assert len(list((trained_dir / "clicks").glob("*.png"))) == 1
    assert len(list((trained_dir / "features").glob("*.png"))) == 1

    res = CliRunner().invoke(cli, ["probe", "plot", str(tmp_path / "trained"), str(tmp_path / "untrained"),
                                   "--out", str(tmp_path / "both.png")])
    assert res.exit_code == 0, res.output
    from hrdv2.probe.compare import collect_curves

    curves = collect_curves([tmp_path / "trained", tmp_path / "untrained"])
    assert [c[0] for c in curves] == ["trained: bilinear", "untrained: bilinear"]
    assert all(c[1].shape == (4,) for c in curves)
    assert Image.open(tmp_path / "both.png").format == "PNG"


def test_cli_head_errors(trained_run, shared_data, tmp_path):
    out, _ = trained_run
    base = ["probe", "--root", str(shared_data / "grabcut"), "--weights", "random", "--out", str(tmp_path / "x")]
    res = CliRunner().invoke(cli, [*base, "--head", str(tmp_path / "missing.pt")])
    assert res.exit_code == 2 and "missing.pt" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, [*base, "--head", "none", "--head", str(out / "head.pt")])
    assert res.exit_code == 2 and "--head none" in res.output
    res = CliRunner().invoke(cli, ["probe", "plot", str(tmp_path)])
    assert res.exit_code == 2 and "summary.csv" in res.output


def test_cli_train_without_cache_computes_features_on_the_fly(shared_data, tmp_path):
    res = CliRunner().invoke(cli, ["probe", "train", "--root", str(shared_data / "horse"), "--weights", "random",
                                   "--out", str(tmp_path), "--max-side", "42", "--limit", "2", "--steps", "2",
                                   "--batch-size", "2", "--hidden", "8", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert load_head(tmp_path / "head.pt").train_state["step"] == 2 and not (tmp_path / "feature_cache").exists()
