"""Hostile inputs for the reading/writing layer: whatever the file, hrdv2.io returns a result that
keeps its conventions or raises an HRDv2Error subclass; outputs get normal permissions; killed
runs leave nothing that accumulates; bad output paths are refused before any work."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from hrdv2 import io as hio
from hrdv2.errors import HRDv2Error, ImageReadError, ImageTooLargeError, OutputPathError, ResourceLimitError
from hrdv2.io import (
    MAX_IMAGE_BYTES_ENV,
    atomic_path,
    check_decoded_size,
    check_writable,
    estimate_bytes,
    read_image,
    read_label_stack,
    read_labels,
    read_stack,
    require_memory,
    write_bytes_atomic,
    write_image,
    write_npy,
)

BOUNDED = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]
SUFFIXES = [".png", ".jpg", ".bmp", ".webp", ".tif"]


# ------------------------------------------------------------------------------------------------
# crafted files


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 0, idat: bytes = b"\x00" * 8) -> bytes:
    """A PNG with valid chunk CRCs whose IHDR declares any size, however little data follows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


def tiff_bytes(width: int, height: int, bits: int = 8, sample_format: int = 1, byte_count: int | None = None) -> bytes:
    """A one-strip uncompressed TIFF whose header declares any size; 64 bytes of data follow."""
    count = width * height * bits // 8 if byte_count is None else byte_count
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, count), (339, 3, sample_format)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + b"\x00" * 64


def write_any(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` with the writer its suffix calls for; what a writer cannot store lands as raw bytes
    under that suffix (a garbage file of that type is a case too)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the writers' own deprecation notes are not under test
            if path.suffix == ".tif":
                tifffile.imwrite(path, arr)
            else:
                im = Image.fromarray(arr.astype(np.uint8) * 255 if arr.dtype == np.bool_ else arr)
                if path.suffix == ".jpg" and im.mode not in ("L", "RGB"):
                    im = im.convert("RGB")
                im.save(path)
    except Exception:  # noqa: BLE001 - any writer failure just means a garbage file
        path.write_bytes(arr.tobytes()[:4096])
    return path


def corrupt(data: bytes, how: str, where: float) -> bytes:
    if how == "truncate":
        return data[: int(len(data) * where)]
    if how == "flip" and data:
        i = min(len(data) - 1, int(len(data) * where))
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
    if how == "garbage":
        return bytes((i * 131 + int(where * 997)) % 256 for i in range(64))
    return data


def check_image(arr: np.ndarray) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3), arr.shape
    assert arr.dtype in (np.uint8, np.uint16, np.float32), arr.dtype
    assert min(arr.shape[:2]) >= hio.MIN_SIDE
    if arr.dtype == np.float32:
        assert np.isfinite(arr).all()


def outcome(fn, *args):
    """Call ``fn``: either its result or the HRDv2Error it raised; anything else fails the test.
    Warnings that should have become errors (bomb, invalid-value) fail it too."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn(*args)
        except HRDv2Error as exc:
            assert "\n" not in str(exc), "user-facing errors are one line"
            result = exc
    bad = [w for w in caught if issubclass(w.category, (Image.DecompressionBombWarning, RuntimeWarning))]
    assert not bad, [str(w.message) for w in bad]
    return result


shapes = st.one_of(
    st.tuples(st.integers(0, 12), st.integers(0, 12)),
    st.tuples(st.just(1), st.integers(1, 40)),  # 1xN
    st.tuples(st.integers(0, 12), st.integers(0, 12), st.sampled_from([1, 2, 3, 4])),  # incl. 2-channel, RGBA
)


@st.composite
def images(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@given(
    arr=images(),
    suffix=st.sampled_from(SUFFIXES),
    how=st.sampled_from(["none", "none", "truncate", "flip", "garbage"]),
    where=st.floats(0, 1),
)
@BOUNDED
def test_any_file_gives_a_result_or_an_hrdv2_error(arr, suffix, how, where):
    with tempfile.TemporaryDirectory() as d:
        path = write_any(Path(d) / f"x{suffix}", arr)
        path.write_bytes(corrupt(path.read_bytes(), how, where))
        img = outcome(read_image, path)
        event(f"read_image: {type(img).__name__}")
        if not isinstance(img, HRDv2Error):
            check_image(img)
        stack = outcome(read_stack, path)
        if not isinstance(stack, HRDv2Error):
            assert stack and all(p.shape[:2] == stack[0].shape[:2] for p in stack)
            for page in stack:
                check_image(page)
        labels = outcome(read_labels, path)
        if not isinstance(labels, HRDv2Error):
            assert labels.ndim == 2 and labels.dtype in (np.uint8, np.uint16)
        label_pages = outcome(read_label_stack, path)
        if not isinstance(label_pages, HRDv2Error):
            assert all(p.ndim == 2 and p.dtype in (np.uint8, np.uint16) for p in label_pages)


@given(
    dtype=st.sampled_from([np.int32, np.float32, np.float64, np.uint16]),
    values=st.lists(st.one_of(st.integers(-70000, 70000), st.floats(allow_nan=True, allow_infinity=True)),
                    min_size=1, max_size=4),
)
@BOUNDED
def test_label_maps_are_whole_class_ids_or_refused(dtype, values):
    arr = np.zeros((6, 7), np.float64)
    arr.flat[: len(values)] = values
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "l.tif"
        with np.errstate(invalid="ignore", over="ignore"):
            stored = arr.astype(dtype)
        tifffile.imwrite(path, stored)
        out = outcome(read_labels, path)
        s = stored.astype(np.float64)
        valid = np.isfinite(s).all() and (s == np.floor(s)).all() and s.min() >= 0 and s.max() <= 65535
        if valid:
            assert not isinstance(out, HRDv2Error), out
            np.testing.assert_array_equal(out, s)  # exact ids, nothing rounded or clipped
        else:
            assert isinstance(out, ImageReadError)
            assert "l.tif: label map has" in str(out) or "l.tif: label map holds" in str(out)


def test_label_errors_say_what_is_wrong(tmp_path):
    cases = {
        "nan": (np.where(np.eye(6, dtype=bool), np.nan, 1.0).astype(np.float32), "6 NaN/inf pixels"),
        "frac": (np.full((6, 6), 1.9, np.float64), "36 non-integer values \\(e.g. 1.9\\)"),
        "neg": (np.full((6, 6), -2, np.int32), "36 negative values \\(lowest -2\\)"),
        "big": (np.full((6, 6), 70000, np.int64), "class id 70000, above the maximum 65535"),
    }
    for name, (arr, message) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", arr)
        with pytest.raises(ImageReadError, match=f"{name}.tif: label map .*{message}"):
            read_labels(tmp_path / f"{name}.tif")
    tifffile.imwrite(tmp_path / "ok.tif", np.full((6, 6), 300, np.int64))
    assert read_labels(tmp_path / "ok.tif").dtype == np.uint16
    Image.fromarray(np.eye(6, dtype=bool)).save(tmp_path / "mask.png")  # 1-bit: ids 0/1, not 0/255
    np.testing.assert_array_equal(read_labels(tmp_path / "mask.png"), np.eye(6, dtype=np.uint8))


@given(dtype=st.sampled_from([np.float32, np.float64]), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       n=st.integers(1, 30))
@BOUNDED
def test_float_images_with_nan_or_inf_are_refused_not_sanitised(dtype, bad, n):
    arr = np.linspace(0, 1, 64, dtype=dtype).reshape(8, 8)
    arr.flat[:n] = bad
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.tif"
        tifffile.imwrite(path, arr)
        for fn in (read_image, read_stack):
            with pytest.raises(ImageReadError, match=f"f.tif: {n} pixels are NaN/inf; replace them"):
                fn(path)
    finite = np.linspace(-5, 5, 64, dtype=dtype).reshape(8, 8)
    with tempfile.TemporaryDirectory() as d:
        tifffile.imwrite(Path(d) / "ok.tif", finite)
        np.testing.assert_allclose(read_image(Path(d) / "ok.tif"), finite.astype(np.float32))


# ------------------------------------------------------------------------------------------------
# declared-size bombs and the memory budget


@pytest.mark.parametrize("depth,colour", [(8, 0), (16, 0), (8, 2), (8, 6), (16, 6), (1, 0), (8, 3)])
def test_png_declaring_60000x60000_is_refused_before_decoding(tmp_path, depth, colour):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(60000, 60000, depth, colour))
    for fn in (read_image, read_labels, read_stack):
        exc = outcome(fn, path)
        assert isinstance(exc, ImageReadError), exc
        assert "bomb.png" in str(exc) and "60000x60000" in str(exc)


def test_tiff_declaring_a_huge_page_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1G")
    path = tmp_path / "huge.tif"
    path.write_bytes(tiff_bytes(60000, 60000))  # one strip said to hold 3.6 GB, 64 bytes present
    with pytest.raises(ImageReadError, match="huge.tif: .*truncated|huge.tif: declares 60000x60000"):
        read_image(path)
    path.write_bytes(tiff_bytes(60000, 60000, bits=64, sample_format=3, byte_count=64))  # float64: 28.8 GB
    too_large = r"huge.tif: declares 60000x60000 px \(float64\), which needs 26.8 GiB"
    with pytest.raises(ImageTooLargeError, match=too_large):
        read_labels(path)
    sparse = tmp_path / "sparse.tif"
    sparse.write_bytes(tiff_bytes(40000, 40000, byte_count=0))  # no strip data at all: budget decides
    too_large = r"sparse.tif: declares 40000x40000 px \(uint8\).*raise HRDV2_MAX_IMAGE_BYTES"
    with pytest.raises(ImageTooLargeError, match=too_large):
        read_stack(sparse)


def test_budget_is_configurable_and_names_everything(tmp_path, monkeypatch):
    Image.fromarray((np.zeros((30, 40, 3)) + [1, 2, 3]).astype(np.uint8)).save(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 10, 12), np.uint16), photometric="minisblack")
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "500")
    with pytest.raises(ImageTooLargeError) as info:
        read_image(tmp_path / "rgb.png")
    msg = str(info.value)
    for part in ("rgb.png", "40x30 px", "3.5 KiB", "500 B", "HRDV2_MAX_IMAGE_BYTES", "crop/tile it"):
        assert part in msg, (part, msg)
    with pytest.raises(ImageTooLargeError, match=r"s.tif: declares 12x10 px x 3 pages \(uint16\)"):
        read_stack(tmp_path / "s.tif")
    assert read_image(tmp_path / "rgb.png", max_bytes=3600).shape == (30, 40, 3)  # explicit limit wins
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1M")
    assert [p.shape for p in read_stack(tmp_path / "s.tif")] == [(10, 12)] * 3
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "lots")
    with pytest.raises(HRDv2Error, match="HRDV2_MAX_IMAGE_BYTES='lots': not a size"):
        read_image(tmp_path / "rgb.png")


def test_pil_pixel_limit_neither_applies_nor_changes(tmp_path, monkeypatch):
    """hrdv2's budget replaces PIL's own limit for hrdv2's reads, and PIL's setting is left as it was."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # 64 px warns, 144 px would raise inside PIL
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12)).save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "a.png").shape == (12, 12)
    assert Image.MAX_IMAGE_PIXELS == 50
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "a.png")


def test_size_helpers():
    assert estimate_bytes((60000, 60000, 4), np.uint16) == 60000 * 60000 * 8
    assert estimate_bytes((0, 5), np.float64) == 0
    assert check_decoded_size("x.png", (10, 10), np.uint8, max_bytes=100) == 100
    with pytest.raises(ImageTooLargeError, match=r"x.png: declares 10x10 px \(uint8\), which needs 100 B"):
        check_decoded_size("x.png", (10, 10), np.uint8, max_bytes=99)
    require_memory(10, "a tiny job", available=10)
    with pytest.raises(ResourceLimitError, match="im.png: features needs about 2.0 GiB but only 1.0 GiB is allowed"):
        require_memory(2 << 30, "features", "im.png", available=1 << 30)
    assert 0 < hio.available_memory_bytes()


# ------------------------------------------------------------------------------------------------
# truncated files of every type


@given(suffix=st.sampled_from(SUFFIXES + [".jpeg", ".tiff"]), cut=st.floats(0, 0.999), rgb=st.booleans())
@BOUNDED
def test_truncated_files_of_every_type(suffix, cut, rgb):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (24, 20, 3) if rgb else (24, 20), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"t{suffix}"
        if suffix in (".tif", ".tiff"):
            tifffile.imwrite(path, arr)
        else:
            Image.fromarray(arr).save(path)
        full = path.read_bytes()
        path.write_bytes(full[: int(len(full) * cut)])
        for fn in (read_image, read_labels, read_stack):
            result = outcome(fn, path)
            if isinstance(result, HRDv2Error):
                assert f"t{suffix}" in str(result)


def test_special_paths_are_image_read_errors(tmp_path):
    for bad in (tmp_path, tmp_path / "missing.png", Path("/dev/null"), tmp_path / "nul\0.png"):
        with pytest.raises(ImageReadError):
            read_image(bad)


# ------------------------------------------------------------------------------------------------
# output permissions


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_new_outputs_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    expected = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert expected == 0o666 & ~mask
    written = [
        write_bytes_atomic(tmp_path / "a.bin", b"x"),
        write_image(tmp_path / "b.png", np.zeros((4, 4), np.uint8)),
        write_image(tmp_path / "c.tif", np.zeros((4, 4), np.float32)),
        write_npy(tmp_path / "d.npy", np.zeros(3)),
    ]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path


@pytest.mark.parametrize("mask", [0o022, 0o077])
@pytest.mark.parametrize("old_mode", [0o644, 0o600, 0o640])
def test_overwrite_keeps_the_existing_mode(tmp_path, umask, mask, old_mode):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    os.chmod(target, old_mode)
    umask(mask)
    write_image(target, np.ones((4, 4), np.uint8))
    assert stat.S_IMODE(os.stat(target).st_mode) == old_mode
    assert read_image(target).max() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# ------------------------------------------------------------------------------------------------
# stale temporary files


def test_a_killed_writer_leaves_a_part_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.skops"
    code = (
        "import os, signal, sys\n"
        "from hrdv2.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if ".part" in p.name]
    assert len(left) == 1 and left[0].name.startswith(".model.skops.") and not target.exists()
    write_bytes_atomic(target, b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["model.skops"]
    assert target.read_bytes() == b"whole"


def test_stale_cleanup_spares_live_and_recent_foreign_writers(tmp_path):
    target = tmp_path / "out.npy"
    host = hio._host_tag()
    other_host = "00000000" if host != "00000000" else "11111111"
    day_ago = time.time() - 2 * 86400
    files = {
        "live": f".out.npy.{host}-{os.getpid()}-0123abcd.part.npy",  # a concurrent writer (this process)
        "foreign_recent": f".out.npy.{other_host}-1-0123abcd.part.npy",
        "foreign_old": f".out.npy.{other_host}-2-0123abcd.part.npy",
        "legacy_recent": ".out.npy.ab_cd123.part.npy",
        "legacy_old": ".out.npy.zz_yy987.part.npy",
        "other_target": f".other.npy.{host}-999999999-0123abcd.part.npy",
        "unrelated": ".out.npy.notes.txt",
    }
    for key, name in files.items():
        (tmp_path / name).write_bytes(b"x")
        if key.endswith("_old"):
            os.utime(tmp_path / name, (day_ago, day_ago))
    write_npy(target, np.arange(3))
    remaining = {p.name for p in tmp_path.iterdir()}
    assert remaining == {"out.npy"} | {files[k] for k in ("live", "foreign_recent", "legacy_recent", "other_target",
                                                          "unrelated")}


def test_atomic_write_failures_leave_target_and_no_temp(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("before")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


# ------------------------------------------------------------------------------------------------
# output path validation


def test_check_writable_refuses_impossible_outputs_before_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (tmp_path / "afile" / "out.png", "file", "afile is a file, not a folder"),
        (tmp_path / "afile" / "deeper" / "out", "folder", "afile is a file, not a folder"),
        (tmp_path / "adir", "file", "is an existing folder, but a file is expected"),
        (tmp_path / "afile", "folder", "is an existing file, but a folder is expected"),
    ]
    for path, kind, message in cases:
        with pytest.raises(OutputPathError, match=message):
            check_writable(path, kind)
    assert check_writable(tmp_path / "new" / "deeper" / "m.skops") == tmp_path / "new" / "deeper" / "m.skops"
    assert check_writable(tmp_path / "adir", "folder") == tmp_path / "adir"
    assert not (tmp_path / "new").exists()  # validation creates nothing
    with pytest.raises(OutputPathError, match="afile is a file"):
        write_bytes_atomic(tmp_path / "afile" / "x.bin", b"x")
    with pytest.raises(OutputPathError, match="is an existing folder"):
        write_npy(tmp_path / "adir", np.zeros(2))


def test_check_writable_agrees_with_a_read_only_folder(tmp_path):
    """Refused exactly when a real write would fail (root may write into 0555 folders)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        try:
            (ro / "probe").write_text("x")
            (ro / "probe").unlink()
            writable = True
        except PermissionError:
            writable = False
        if writable:
            assert check_writable(ro / "out.png") == ro / "out.png"
            assert check_writable(ro / "sub" / "out.png") == ro / "sub" / "out.png"
        else:
            with pytest.raises(OutputPathError, match="read-only or no permission"):
                check_writable(ro / "out.png")
            with pytest.raises(OutputPathError, match="read-only or no permission"):
                check_writable(ro / "sub" / "out.png")
    finally:
        os.chmod(ro, 0o755)
