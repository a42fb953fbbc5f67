"""``hrdv2 unsupervised`` and ``hrdv2 bench unsupervised`` through the real command group."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hrdv2.cli.main import cli
from hrdv2.io import read_image

FAST = ["--preset", "fast", "--weights", "random", "--max-side", "112", "--k", "15"]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_unsupervised_writes_masks_overlay_and_json(runner, shared_data, tmp_path):
    img = shared_data / "horse" / "horse003.png"
    folder = tmp_path / "in"  # a folder input: its NAME_gt label map must be skipped
    folder.mkdir()
    for name in ("horse003.png", "horse003_gt.png"):
        (folder / name).write_bytes((shared_data / "horse" / name).read_bytes())
    res = runner.invoke(cli, ["unsupervised", str(folder), "--out", str(tmp_path), *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.glob("*_boxes.json")) == ["horse003_boxes.json"]
    assert "UNTRAINED" in res.output and "stride 14" in res.output
    image = read_image(img)
    labels = read_image(tmp_path / "horse003_labels.png")
    fg = read_image(tmp_path / "horse003_foreground.png")
    overlay = read_image(tmp_path / "horse003_overlay.png")
    assert labels.shape == fg.shape == image.shape[:2] and overlay.shape == image.shape
    assert labels.min() >= 1 and set(np.unique(fg)) <= {0, 255}
    doc = json.loads((tmp_path / "horse003_boxes.json").read_text())
    assert doc["untrained"] is True and doc["width"] == image.shape[1] and doc["height"] == image.shape[0]
    for b in doc["boxes"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
        assert isinstance(b["score"], float)
    # the JSON's foreground classes are the ones painted in the mask
    assert np.array_equal(fg == 255, np.isin(labels, doc["foreground_classes"]))
    assert not list(tmp_path.glob(".*.part*")), "temporary files left behind"


def test_bench_folder_prints_figures(runner, shared_data, tmp_path):
    out = tmp_path / "bench.json"
    res = runner.invoke(cli, ["bench", "unsupervised", "--dataset", "folder", "--root", str(shared_data / "grabcut"),
                              "--limit", "2", "--json", str(out), *FAST])
    assert res.exit_code == 0, res.output
    for key in ("corloc_single", "corloc_multi", "boxes_per_image", "miou", "seconds_per_image",
                "stage seconds per image", "UNTRAINED"):
        assert key in res.output
    doc = json.loads(out.read_text())
    assert doc["n_images"] == 2 and doc["untrained"] is True
    f = doc["figures"]
    assert all(0.0 <= f[k] <= 1.0 for k in ("miou", "corloc_single", "corloc_multi"))
    assert {"features", "kmeans", "merging"} <= set(doc["stage_seconds_per_image"])


def test_bench_wrong_layout_is_a_clear_message(runner, tmp_path):
    res = runner.invoke(cli, ["bench", "unsupervised", "--dataset", "voc07", "--root", str(tmp_path), *FAST])
    assert res.exit_code == 2
    assert "JPEGImages" in res.output and "Traceback" not in res.output


def test_unsupervised_missing_image_is_a_clear_message(runner, tmp_path):
    res = runner.invoke(cli, ["unsupervised", str(tmp_path / "nope.png"), "--out", str(tmp_path), *FAST])
    assert res.exit_code == 2 and "no such file" in res.output
