"""`hrdv2 tune`: a tiny Optuna search writes trials.csv, pareto.png and a best.json that
`hrdv2 train --config` accepts (and uses); config refusals; the Pareto front; peak memory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.tune import PeakMemory, TrialRecord, pareto_front


def _two_phase_folder(root: Path, n: int = 2, size: int = 48) -> Path:
    """NAME.png (a dark smooth disc in a bright noisy matrix) + NAME_scribble.png + NAME_gt.png."""
    root.mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        disc = (yy - size / 2 - 3 * i) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
        image = np.where(disc, 60, 180) + rng.normal(0, 6, (size, size)) * np.where(disc, 0.3, 3.0)
        gt = np.where(disc, 2, 1).astype(np.uint8)
        scribble = np.zeros_like(gt)
        scribble[2:5, 2:size - 2] = 1  # a stroke in the matrix
        scribble[size // 2 - 1:size // 2 + 2, size // 2 - 5:size // 2 + 5] = 2  # one in the disc
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"img{i}.png")
        Image.fromarray(gt).save(root / f"img{i}_gt.png")
        Image.fromarray(scribble).save(root / f"img{i}_scribble.png")
    return root


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A 3-trial classical search on a 2-image folder (max-samples 300, not train's default)."""
    tmp_path = tmp_path_factory.mktemp("tune")
    data = _two_phase_folder(tmp_path / "data")
    out = tmp_path / "tune"
    res = CliRunner().invoke(cli, ["tune", "--workflow", "train", "--data", str(data), "--trials", "3",
                                   "--max-samples", "300", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return data, out, res.output


def test_tune_train_writes_table_plot_and_a_config_train_uses(tuned, tmp_path):
    data, out, output = tuned
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    done = [r for r in rows if r["state"] == "complete"]
    assert done, rows
    for r in done:
        assert 0.0 <= float(r["quality"]) <= 1.0 and float(r["seconds"]) > 0 and float(r["peak_rss_mb"]) >= 0
        assert r["classifier"] in ("logistic", "random_forest", "gradient_boosting") and r["features"] == "classical"
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400
    best = json.loads((out / "best.json").read_text())
    assert best["hrdv2_config"] == 1 and best["workflow"] == "train"
    assert best["tune"]["quality"] == pytest.approx(max(float(r["quality"]) for r in done), abs=1e-4)
    assert best["tune"]["backbone"] == "none (classical features)" and "backbone none" in output
    # the two-phase disc is easy: the best trial must segment it well
    assert best["tune"]["quality"] > 0.8
    opts = best["options"]

    model = tmp_path / "model.skops"
    res = CliRunner().invoke(cli, ["train", "--config", str(out / "best.json"), "--image", str(data / "img0.png"),
                                   "--scribble", str(data / "img0_scribble.png"), "--out", str(model)])
    assert res.exit_code == 0, res.output
    from hrdv2.features.classical import resolve_filters
    from hrdv2.segmentation import Segmenter

    seg = Segmenter.load(model)
    assert seg.classifier == opts["classifier"]
    assert seg.max_samples == 300  # a non-default value that only the config file carried
    assert seg.features.kind == opts["features"] == "classical"
    assert seg.features.filters == resolve_filters(opts["filters"])
    assert seg.features.sigmas == tuple(float(s) for s in opts["sigmas"].split(","))


@pytest.mark.parametrize("change, words", [
    (lambda d: d["options"].update(bogus=1), ["unknown option 'bogus'", "max-samples"]),
    (lambda d: d.update(workflow="unsupervised"), ["for `hrdv2 unsupervised`, not `hrdv2 train`"]),
    (lambda d: d.update(hrdv2_config=2), ["config version 2 is not supported"]),
])
def test_train_refuses_a_bad_config_in_one_line(tuned, tmp_path, change, words):
    data, out, _ = tuned
    doc = json.loads((out / "best.json").read_text())
    change(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["train", "--config", str(bad), "--image", str(data / "img0.png"),
                                   "--scribble", str(data / "img0_scribble.png"), "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and str(bad) in res.output
    for w in words:
        assert w in res.output
    assert not (tmp_path / "m.skops").exists()


def test_tune_train_needs_scribbles_and_ground_truth(tmp_path):
    data = _two_phase_folder(tmp_path / "data", n=1)
    (data / "img0_gt.png").unlink()
    res = CliRunner().invoke(cli, ["tune", "--workflow", "train", "--data", str(data), "--trials", "1",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "NAME_gt.png" in res.output, res.output


def test_tune_unsupervised_with_random_weights(tmp_path):
    """The unsupervised space runs end to end (random weights: the quality only shows the mechanics)."""
    data = _two_phase_folder(tmp_path / "data", n=1, size=42)
    out = tmp_path / "tune"
    res = CliRunner().invoke(cli, ["tune", "--workflow", "unsupervised", "--data", str(data), "--trials", "2",
                                   "--weights", "random", "--strides", "14", "--transforms", "none,shift1", "--max-side", "42",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "random weights, UNTRAINED" in res.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and {"transforms", "stride", "pca", "k", "merge_factor"} <= set(rows[0])
    best = json.loads((out / "best.json").read_text())
    assert best["workflow"] == "unsupervised" and best["options"]["weights"] == "random"
    assert best["options"]["stride"] == 14 and 10 <= best["options"]["k"] <= 80
    from hrdv2.cli.config_file import read_config
    from hrdv2.cli.unsupervised import unsupervised

    values = read_config(out / "best.json", unsupervised, "unsupervised")  # every key is an option of the command
    assert values["merge_factor"] == best["options"]["merge-factor"] and values["shift_text"] == best["options"]["shifts"]


def test_pareto_front_keeps_only_undominated_trials():
    def rec(n, q, s):
        return TrialRecord(n, "complete", {}, {}, quality=q, seconds=s, peak_mb=0.0)

    records = [rec(0, 0.5, 1.0), rec(1, 0.7, 2.0), rec(2, 0.6, 3.0), rec(3, 0.9, 10.0), rec(4, 0.5, 0.5),
               TrialRecord(5, "failed", {}, {}, error="x")]
    assert [r.number for r in pareto_front(records)] == [4, 1, 3]


def test_peak_memory_sees_a_large_temporary_allocation():
    with PeakMemory(interval_s=0.001) as mem:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block.sum()
        del block
    assert mem.peak_delta_bytes > 150 * 2**20
