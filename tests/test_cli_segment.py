"""`hrdv2 train -> apply -> evaluate` on ../shared/data/superalloy, each step a fresh process,
plus the CLI's handling of bad input (clear message, other files still processed)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.io import read_image, read_labels, read_stack


def _hrdv2(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from hrdv2.cli.main import cli; cli()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def model(shared_data, tmp_path_factory) -> Path:
    sa = shared_data / "superalloy"
    out = tmp_path_factory.mktemp("model") / "isb0.skops"
    r = _hrdv2("train", "--image", sa / "isb_0.png", "--scribble", sa / "isb_0_scribble.png",
               "--class-names", "matrix,gamma_prime,secondary", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    return out


def test_train_apply_evaluate_chain(shared_data, model, tmp_path):
    sa = shared_data / "superalloy"
    inp = tmp_path / "in"
    inp.mkdir()
    for stem in ("isb_0", "nasa_spot3_0d_3"):
        (inp / f"{stem}.png").write_bytes((sa / f"{stem}.png").read_bytes())
    page = read_image(sa / "nasa_spot3_0d_3.png")
    tifffile.imwrite(inp / "stack.tif", np.stack([page, page[:, ::-1]]))
    out = tmp_path / "out"
    r = _hrdv2("apply", model, inp, "--out", out, "--proba")
    assert r.returncode == 0, r.stderr
    lab = read_labels(out / "isb_0_labels.png")
    assert lab.shape == (512, 512) and set(np.unique(lab)) <= {1, 2, 3}
    stack = read_stack(out / "stack_labels.tif")
    assert len(stack) == 2 and stack[0].shape == page.shape
    assert not np.array_equal(stack[0], stack[1])  # pages segmented one by one
    proba = tifffile.imread(out / "isb_0_proba.tif")
    assert proba.shape == (512, 512, 3) and np.allclose(proba.sum(-1), 1, atol=1e-4)
    rows = list(csv.DictReader((out / "phase_fractions.csv").open()))
    assert [r["file"].split("/")[-1] for r in rows] == ["isb_0.png", "nasa_spot3_0d_3.png", "stack.tif", "stack.tif"]
    assert set(rows[0]) == {"file", "page", "matrix", "gamma_prime", "secondary"}
    fr = np.array([float(rows[0][k]) for k in ("matrix", "gamma_prime", "secondary")])
    assert fr.sum() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(fr, np.bincount(lab.ravel(), minlength=4)[1:] / lab.size, atol=1e-5)
    assert not list(out.glob("*.part*"))
    r = _hrdv2("evaluate", out / "isb_0_labels.png", "--gt", sa / "isb_0_gt.png")
    assert r.returncode == 0, r.stderr
    miou = float(re.search(r"mIoU\s+([0-9.]+)", r.stdout).group(1))
    acc = float(re.search(r"pixel accuracy\s+([0-9.]+)", r.stdout).group(1))
    assert 0.5 < miou <= 1 and 0.7 < acc <= 1  # the tldr-group reference reaches 0.663 here
    assert len(re.findall(r"^\s*[123] ", r.stdout, re.M)) == 3


def test_apply_skips_unreadable_and_ragged_files(model, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray((np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)).save(inp / "a.png")
    (inp / "broken.png").write_bytes(b"\x89PNG not really")
    tifffile.imwrite(inp / "ragged.tif", np.zeros((40, 40), np.uint8))
    tifffile.imwrite(inp / "ragged.tif", np.zeros((50, 40), np.uint8), append=True)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["apply", str(model), str(inp), "--out", str(out)])
    assert res.exit_code == 1
    assert "broken.png" in res.output and "not a readable image" in res.output
    assert "ragged.tif" in res.output and "page 1" in res.output
    assert (out / "a_labels.png").exists()
    assert not (out / "broken_labels.png").exists() and not (out / "ragged_labels.tif").exists()
    assert len(list(csv.DictReader((out / "phase_fractions.csv").open()))) == 1


def test_train_bad_input_messages(shared_data, tmp_path):
    sa = shared_data / "superalloy"
    runner = CliRunner()
    # scribble of another image's size
    res = runner.invoke(cli, ["train", "--image", str(sa / "isb_0.png"), "--scribble", str(sa / "isb_1_scribble.png"),
                              "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 2 and "isb_1_scribble.png" in res.output and "same size" in res.output
    # a scribble that labels one class only, and an empty one
    one = tmp_path / "one.png"
    scr = read_labels(sa / "isb_0_scribble.png")
    Image.fromarray(np.where(scr == 1, 1, 0).astype(np.uint8)).save(one)
    res = runner.invoke(cli, ["train", "--image", str(sa / "isb_0.png"), "--scribble", str(one), "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 2 and "one.png" in res.output and "only class 1" in res.output
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros_like(scr)).save(empty)
    res = runner.invoke(cli, ["train", "--image", str(sa / "isb_0.png"), "--scribble", str(empty), "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 2 and "empty.png" in res.output and "empty" in res.output
    # more class ids than names
    res = runner.invoke(cli, ["train", "--image", str(sa / "isb_0.png"), "--scribble", str(sa / "isb_0_scribble.png"),
                              "--class-names", "a,b", "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 2 and "class id(s) [3]" in res.output
    assert not (tmp_path / "m.skops").exists()


def test_corrupt_model_and_channel_mismatch(shared_data, model, tmp_path):
    bad = tmp_path / "bad.skops"
    bad.write_bytes(model.read_bytes()[:200])
    res = CliRunner().invoke(cli, ["apply", str(bad), str(shared_data / "superalloy" / "isb_0.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "bad.skops" in res.output and "Traceback" not in res.output
    # a grey model on an RGB image: one line naming the file and the channel counts
    res = CliRunner().invoke(cli, ["apply", str(model), str(shared_data / "superalloy" / "isb_rgb.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "isb_rgb.png" in res.output and "3 channel" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_evaluate_mismatched_pairs(shared_data, tmp_path):
    sa = shared_data / "superalloy"
    res = CliRunner().invoke(cli, ["evaluate", str(sa / "isb_0_gt.png"), "--gt", str(sa / "isb_1_gt.png")])
    assert res.exit_code == 2 and "does not match" in res.output
