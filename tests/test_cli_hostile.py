"""The command line under hostile input: one-line errors, never a traceback; folder runs finish
the good files; outputs are checked before any work; nothing is silently wrong.

Exit codes: 0 done, 1 some files of a folder run failed (the others are written), 2 a user
error (one line naming the file/value and the fix), 3 a bug in hrdv2. Property tests assert
that generated input never produces 3 (or a traceback).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.io import read_labels, read_stack


def run(*args) -> tuple[int, str]:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    text = r.output  # click >= 8.2: stdout and stderr interleaved as a terminal shows them
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # escaped the boundary
        raise AssertionError(f"exception escaped the CLI boundary: {r.exception!r}\n{text}")
    return r.exit_code, text


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def bomb_png(path: Path, width: int = 60000, height: int = 60000) -> None:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small classical model trained on a synthetic two-phase image (bright disks on dark)."""
    d = tmp_path_factory.mktemp("model")
    yy, xx = np.mgrid[:96, :96]
    img = np.where((yy % 32 - 16) ** 2 + (xx % 32 - 16) ** 2 < 64, 200, 40).astype(np.uint8)
    img = (img + np.random.default_rng(0).integers(0, 20, img.shape)).astype(np.uint8)
    scr = np.zeros_like(img)
    scr[16, 10:22] = 2
    scr[2, :] = 1
    Image.fromarray(img).save(d / "train.png")
    Image.fromarray(scr).save(d / "train_scribble.png")
    code, text = run("train", "--image", d / "train.png", "--scribble", d / "train_scribble.png", "--out", d / "m.skops")
    assert code == 0, text
    return d / "m.skops"


def _good(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(path)


def test_apply_folder_with_bad_files_finishes_the_good_ones(model, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    _good(inp / "a_good.png", 1)
    bomb_png(inp / "b_bomb.png")
    tifffile.imwrite(inp / "c_nan.tif", np.full((40, 40), np.nan, np.float32))
    (inp / "d_garbage.jpg").write_bytes(b"not a jpeg at all")
    tifffile.imwrite(inp / "e_rgb.tif", np.zeros((40, 40, 3), np.uint8) + np.arange(3, dtype=np.uint8))  # colour
    _good(inp / "f_good.png", 2)
    out = tmp_path / "out"
    code, text = run("apply", model, inp, "--out", out)
    assert code == 1, text  # some failed, the rest done
    assert sorted(p.name for p in out.glob("*_labels.png")) == ["a_good_labels.png", "f_good_labels.png"]
    csv_rows = (out / "phase_fractions.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and "a_good.png" in csv_rows[1] and "f_good.png" in csv_rows[2]
    for name in ("b_bomb.png", "c_nan.tif", "d_garbage.jpg", "e_rgb.tif"):
        assert any(name in line and line.startswith("skipped") for line in text.splitlines()), (name, text)
    assert "Traceback" not in text


def test_outputs_are_checked_before_work(model, tmp_path):
    a_file = tmp_path / "plain_file"
    a_file.write_text("x")
    _good(tmp_path / "img.png", 3)
    # output folder under a file
    code, text = run("apply", model, tmp_path / "img.png", "--out", a_file / "sub")
    assert code == 2 and len(error_lines(text)) == 1 and "plain_file" in text
    # an existing folder given as the model file
    (tmp_path / "model.skops").mkdir()
    scr = np.zeros((64, 80), np.uint8)
    scr[0], scr[-1] = 1, 2
    Image.fromarray(scr).save(tmp_path / "scr.png")
    code, text = run("train", "--image", tmp_path / "img.png", "--scribble", tmp_path / "scr.png",
                     "--out", tmp_path / "model.skops")
    assert code == 2 and "model.skops" in text and "folder" in text.lower(), text
    # features: output folder is a file -> refused before the backbone is loaded
    code, text = run("features", tmp_path / "img.png", "--weights", "random", "--out", a_file)
    assert code == 2 and "plain_file" in text, text


def test_evaluate_refuses_what_it_would_score_wrongly(tmp_path):
    gt = np.ones((32, 32), np.uint8)
    gt[:, 16:] = 2
    Image.fromarray(gt).save(tmp_path / "gt.png")
    tifffile.imwrite(tmp_path / "pred_float.tif", gt.astype(np.float32) + 0.9)  # non-integer ids
    code, text = run("evaluate", tmp_path / "pred_float.tif", "--gt", tmp_path / "gt.png")
    assert code == 2 and "pred_float.tif" in text and "integer" in text, text
    Image.fromarray(np.zeros_like(gt)).save(tmp_path / "gt_empty.png")
    code, text = run("evaluate", tmp_path / "gt.png", "--gt", tmp_path / "gt_empty.png")
    assert code == 2 and "gt_empty.png" in text and "nan" not in text.lower(), text
    tifffile.imwrite(tmp_path / "pred_neg.tif", gt.astype(np.int16) - 3)
    code, text = run("evaluate", tmp_path / "pred_neg.tif", "--gt", tmp_path / "gt.png")
    assert code == 2 and "negative" in text, text


def test_evaluate_large_ids_needs_no_huge_matrix(tmp_path):
    gt = np.ones((32, 32), np.uint16)
    gt[:, 16:] = 2
    pred = gt.copy()
    pred[:8, :8] = 65535  # a 16-bit prediction: a dense (65536^2) matrix would need 32 GiB
    Image.fromarray(gt.astype(np.uint8)).save(tmp_path / "gt.png")
    tifffile.imwrite(tmp_path / "pred.tif", pred)
    code, text = run("evaluate", tmp_path / "pred.tif", "--gt", tmp_path / "gt.png")
    assert code == 0, text
    miou = float(next(line for line in text.splitlines() if line.startswith("mIoU")).split()[-1])
    # class 1: 512 px, 64 of them predicted 65535 -> IoU 448/512; class 2: 1.0; id 65535 only predicted -> 0
    assert miou == pytest.approx((448 / 512 + 1.0 + 0.0) / 3, abs=1e-4)
    assert "65535" in text


def test_train_on_a_stack_uses_every_labelled_page(tmp_path):
    rng = np.random.default_rng(0)
    pages = np.stack([np.full((48, 48), v, np.uint8) for v in (30, 120, 200, 250)])
    pages = (pages + rng.integers(0, 10, pages.shape)).astype(np.uint8)
    labels = np.zeros_like(pages)
    labels[0, :4] = 1
    labels[1, :4] = 2
    labels[3, :4] = 3  # class 3 only on the last page; page 2 carries no label and is skipped
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    code, text = run("train", "--image", tmp_path / "stack.tif", "--scribble", tmp_path / "labels.tif",
                     "--out", tmp_path / "m.skops")
    assert code == 0, text
    from hrdv2.segmentation import Segmenter

    seg = Segmenter.load(tmp_path / "m.skops")
    assert seg.classes_.tolist() == [1, 2, 3]
    assert int(np.bincount(seg.predict(pages[3]).ravel()).argmax()) == 3
    tifffile.imwrite(tmp_path / "labels3.tif", labels[:3], photometric="minisblack")
    code, text = run("train", "--image", tmp_path / "stack.tif", "--scribble", tmp_path / "labels3.tif",
                     "--out", tmp_path / "m2.skops")
    assert code == 2 and "3 label page(s)" in text and "4 page(s)" in text, text
    assert not (tmp_path / "m2.skops").exists()


def test_unsupervised_and_features_folders_go_on_after_a_bad_file(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(inp / "a.png")
    bomb_png(inp / "b.png")
    Image.fromarray(rng.integers(0, 255, (56, 70, 3), dtype=np.uint8)).save(inp / "c.png")
    out = tmp_path / "unsup"
    code, text = run("unsupervised", inp, "--preset", "fast", "--weights", "random", "--k", "4", "--pca", "0",
                     "--out", out)
    assert code == 1, text
    assert sorted(p.name for p in out.glob("*_labels.png")) == ["a_labels.png", "c_labels.png"]
    out = tmp_path / "feats"
    code, text = run("features", inp, "--weights", "random", "--shifts", "", "--out", out, "--no-attention-png")
    assert code == 1, text
    assert sorted(p.name for p in out.glob("*_features.npy")) == ["a_features.npy", "c_features.npy"]


# ---------------------------------------------------------------------------- property tests

DTYPES = st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool"])


@st.composite
def images(draw):
    dtype = draw(DTYPES)
    h = draw(st.integers(1, 40))
    w = draw(st.integers(1, 40))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == "bool":
        arr = rng.integers(0, 2, shape).astype(bool)
    elif dtype.startswith("float"):
        arr = rng.normal(0, draw(st.sampled_from([1.0, 1e30])), shape).astype(dtype)
        if draw(st.booleans()):
            arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -1000), min(info.max, 70000), shape, endpoint=True).astype(dtype)
    return arr


def _write_any(path_stem: Path, arr: np.ndarray, truncate: bool) -> Path:
    """TIFF takes anything; PNG only what PIL writes (else TIFF)."""
    path = path_stem.with_suffix(".tif")
    try:
        if arr.dtype == np.uint8 and (arr.ndim == 2 or arr.shape[-1] in (3, 4)):
            path = path_stem.with_suffix(".png")
            Image.fromarray(arr).save(path)
        else:
            tifffile.imwrite(path, arr)
    except Exception:
        path = path_stem.with_suffix(".tif")
        tifffile.imwrite(path, np.zeros((8, 8), np.uint8))
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=images(), labels=images(), truncate=st.booleans())
def test_train_and_evaluate_never_crash(tmp_path_factory, image, labels, truncate):
    d = tmp_path_factory.mktemp("prop")
    ip = _write_any(d / "img", image, truncate)
    lp = _write_any(d / "lab", labels, False)
    code, text = run("train", "--image", ip, "--scribble", lp, "--out", d / "m.skops", "--max-samples", "200")
    assert code in (0, 2), text
    assert "Traceback" not in text and "internal error" not in text
    if code == 2:
        assert len(error_lines(text)) == 1 and not (d / "m.skops").exists()
    code, text = run("evaluate", lp, "--gt", lp)
    assert code in (0, 2), text
    assert "internal error" not in text
    if code == 0:  # a score is a number: never nan
        miou = next(line for line in text.splitlines() if line.startswith("mIoU")).split()[-1]
        assert np.isfinite(float(miou)) and float(miou) == 1.0, text  # a map against itself
    else:
        assert len(error_lines(text)) == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=images(), truncate=st.booleans())
def test_apply_never_crashes(model, tmp_path_factory, image, truncate):
    d = tmp_path_factory.mktemp("prop_apply")
    ip = _write_any(d / "img", image, truncate)
    code, text = run("apply", model, ip, "--out", d / "out")
    assert code in (0, 2), text  # one file: done, or one clear error line
    assert "internal error" not in text and "Traceback" not in text
    if code == 0:
        lab = read_labels(next((d / "out").glob("*_labels.*")))
        assert lab.shape == read_stack(ip)[0].shape[:2] and set(np.unique(lab)) <= {1, 2}
