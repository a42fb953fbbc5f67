"""Throw hostile input at every command and tally what happens: a result, one clear line, or a crash.

Each case runs the real ``hrdv2`` command line in-process (click's runner) on files this script
makes in a temporary folder: decompression bombs, NaN/inf images, truncated and garbage files of
every type, label maps that are negative / fractional / all zero / 16-bit, size mismatches,
unusable output paths, bad option values, hostile model files. A case is

* ``ok``       -- exit 0 (or 1 for a folder run that reports its bad files and finishes the rest);
* ``clear``    -- exit 2 with exactly one ``error:`` line and no traceback;
* ``crash``    -- anything else (a traceback, exit 3, several error lines).

``data lost`` counts cases after which a file that existed before (a previous result in the
output folder, the input itself) changed or vanished. Usage: python benchmarks/hostile_cli.py
"""

from __future__ import annotations

import hashlib
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import tifffile
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli


def bomb_png(path: Path, w: int = 60000, h: int = 60000) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def make_files(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    f: dict[str, Path] = {}

    def png(name: str, arr: np.ndarray) -> None:
        f[name] = d / f"{name}.png"
        Image.fromarray(arr).save(f[name])

    def tif(name: str, arr: np.ndarray, **kw) -> None:
        f[name] = d / f"{name}.tif"
        tifffile.imwrite(f[name], arr, **kw)

    img = rng.integers(0, 255, (64, 72), dtype=np.uint8)
    png("good", img)
    scr = np.zeros_like(img)
    scr[:4], scr[-4:] = 1, 2
    png("good_scr", scr)
    bomb_png(d / "bomb.png")
    f["bomb"] = d / "bomb.png"
    tif("nan", np.where(rng.random((64, 72)) < 0.1, np.nan, rng.random((64, 72))).astype(np.float32))
    tif("inf", np.full((64, 72), np.inf, np.float32))
    tif("float64", rng.random((64, 72)))
    tif("int32", rng.integers(-5, 5, (64, 72)).astype(np.int32))
    tif("rgba", rng.integers(0, 255, (64, 72, 4), dtype=np.uint8))
    tif("two_channel", rng.integers(0, 255, (64, 72, 2), dtype=np.uint8), photometric="minisblack", planarconfig="contig")
    tif("stack3", rng.integers(0, 255, (3, 64, 72), dtype=np.uint8), photometric="minisblack")
    tif("tiny", np.zeros((2, 72), np.uint8))
    tif("empty_pixels", np.zeros((0, 0), np.uint8))
    tif("uint16_labels", np.where(scr > 0, scr.astype(np.uint16) * 30000, 0).astype(np.uint16))
    tif("neg_labels", (scr.astype(np.int16) - 1))
    tif("float_labels", scr.astype(np.float32) + 0.5)
    tif("nan_labels", np.where(scr > 0, scr, np.nan).astype(np.float32))
    png("zero_labels", np.zeros_like(scr))
    png("one_class", (scr > 0).astype(np.uint8))
    png("wrong_size", scr[:32])
    png("rgb_labels", np.dstack([scr, scr * 2, scr]))
    tif("label_stack2", np.stack([scr, scr]), photometric="minisblack")
    for name, src in (("truncated_png", f["good"]), ("truncated_tif", f["nan"])):
        data = src.read_bytes()
        f[name] = d / (name + src.suffix)
        f[name].write_bytes(data[: len(data) // 3])
    f["garbage_jpg"] = d / "garbage.jpg"
    f["garbage_jpg"].write_bytes(b"\xff\xd8\xff" + bytes(rng.integers(0, 255, 500, dtype=np.uint8)))
    f["zero_bytes"] = d / "zero.png"
    f["zero_bytes"].write_bytes(b"")
    f["missing"] = d / "missing.png"
    f["a_folder"] = d / "folder.png"
    f["a_folder"].mkdir()
    f["not_model"] = d / "m.skops"
    f["not_model"].write_bytes(b"PK\x03\x04 not really a zip")
    # a folder with good and bad files for folder runs
    mixed = d / "mixed"
    mixed.mkdir()
    for i, name in enumerate(("good", "bomb", "nan", "truncated_png", "good")):
        (mixed / f"{i}_{name}{f[name].suffix}").write_bytes(f[name].read_bytes())
    f["mixed"] = mixed
    return f


def cases(f: dict[str, Path], d: Path, model: Path) -> list[tuple[str, list[str]]]:
    out = str(d / "out")
    images = ["bomb", "nan", "inf", "float64", "int32", "rgba", "two_channel", "stack3", "tiny", "empty_pixels",
              "truncated_png", "truncated_tif", "garbage_jpg", "zero_bytes", "missing", "a_folder"]
    labels = ["uint16_labels", "neg_labels", "float_labels", "nan_labels", "zero_labels", "one_class", "wrong_size",
              "rgb_labels", "label_stack2", "bomb", "truncated_png", "missing", "a_folder"]
    c: list[tuple[str, list[str]]] = []
    for name in images:
        c.append((f"train image={name}", ["train", "--image", f[name], "--scribble", f["good_scr"], "--out", d / "t.skops"]))
        c.append((f"apply {name}", ["apply", model, f[name], "--out", out]))
        c.append((f"apply block-wise {name}", ["apply", model, f[name], "--out", out, "--format", "ome-zarr"]))
        c.append((f"features {name}", ["features", f[name], "--weights", "random", "--shifts", "", "--out", out]))
        c.append((f"evaluate pred={name}", ["evaluate", f[name], "--gt", f["good_scr"]]))
        c.append((f"unsupervised {name}", ["unsupervised", f[name], "--preset", "fast", "--weights", "random", "--k", "3",
                                           "--pca", "0", "--out", out]))
    for name in labels:
        c.append((f"train scribble={name}", ["train", "--image", f["good"], "--scribble", f[name], "--out", d / "t.skops"]))
        c.append((f"evaluate gt={name}", ["evaluate", f["good_scr"], "--gt", f[name]]))
    c += [
        ("apply folder with bad files", ["apply", model, f["mixed"], "--out", out]),
        ("features folder with bad files", ["features", f["mixed"], "--weights", "random", "--shifts", "", "--out", out]),
        ("unsupervised folder with bad files", ["unsupervised", f["mixed"], "--preset", "fast", "--weights", "random",
                                                "--k", "3", "--pca", "0", "--out", out]),
        ("train --out is a folder", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--out", f["a_folder"]]),
        ("train --out under a file", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--out",
                                      f["good"] / "m.skops"]),
        ("apply --out is a file", ["apply", model, f["good"], "--out", f["good"]]),
        ("features --out under a file", ["features", f["good"], "--weights", "random", "--out", f["good"] / "x"]),
        ("apply with a garbage model", ["apply", f["not_model"], f["good"], "--out", out]),
        ("apply with a missing model", ["apply", d / "none.skops", f["good"], "--out", out]),
        ("apply with an image as model", ["apply", f["good"], f["good"], "--out", out]),
        ("apply --block-size 4", ["apply", model, f["good"], "--out", out, "--block-size", "4"]),
        ("apply --device cuda (none here)", ["apply", model, f["good"], "--out", out, "--device", "cuda"]),
        ("apply --device nonsense", ["apply", model, f["good"], "--out", out, "--device", "gpu7"]),
        ("features --device cuda:3", ["features", f["good"], "--weights", "random", "--device", "cuda:3", "--out", out]),
        ("features --stride 0", ["features", f["good"], "--weights", "random", "--stride", "0", "--out", out]),
        ("features --stride 99", ["features", f["good"], "--weights", "random", "--stride", "99", "--out", out]),
        ("features --shifts 9", ["features", f["good"], "--weights", "random", "--shifts", "9", "--out", out]),
        ("features --shifts a,b", ["features", f["good"], "--weights", "random", "--shifts", "a,b", "--out", out]),
        ("features --backbone nope", ["features", f["good"], "--backbone", "nope", "--out", out]),
        ("features --weights missing file", ["features", f["good"], "--weights", d / "none.pth", "--out", out]),
        ("features --weights is an image", ["features", f["good"], "--weights", f["good"], "--out", out]),
        ("train --volume on one image", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--volume",
                                         "--out", d / "t.skops"]),
        ("train --volume --spacing 1,0", ["train", "--image", f["stack3"], "--scribble", f["label_stack2"], "--volume",
                                          "--spacing", "1,0", "--out", d / "t.skops"]),
        ("train label stack page count", ["train", "--image", f["stack3"], "--scribble", f["label_stack2"],
                                          "--out", d / "t.skops"]),
        ("train --sigmas -1", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--sigmas", "-1",
                               "--out", d / "t.skops"]),
        ("train --filters nope", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--filters", "nope",
                                  "--out", d / "t.skops"]),
        ("train --features deep, missing weights", ["train", "--image", f["good"], "--scribble", f["good_scr"],
                                                    "--features", "deep", "--weights", d / "none.pth",
                                                    "--out", d / "t.skops"]),
        ("train --max-samples 3", ["train", "--image", f["good"], "--scribble", f["good_scr"], "--max-samples", "3",
                                   "--out", d / "t.skops"]),
        ("evaluate count mismatch", ["evaluate", f["good_scr"], f["good_scr"], "--gt", f["good_scr"], "--gt",
                                     f["good_scr"], "--gt", f["good_scr"]]),
        ("unsupervised --k 0", ["unsupervised", f["good"], "--k", "0", "--weights", "random", "--out", out]),
        ("unsupervised --head 99", ["unsupervised", f["good"], "--preset", "fast", "--head", "99", "--weights",
                                    "random", "--out", out]),
    ]
    return [(name, [str(a) for a in args]) for name, args in c]


def digest(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hrdv2-hostile-") as tmp:
        d = Path(tmp)
        f = make_files(d)
        runner = CliRunner()
        r = runner.invoke(cli, ["train", "--image", str(f["good"]), "--scribble", str(f["good_scr"]),
                                "--out", str(d / "model.skops")])
        assert r.exit_code == 0, r.output
        model = d / "model.skops"
        (d / "out").mkdir()
        keep = d / "out" / "previous_result.png"  # a result of an earlier run: must survive every case
        keep.write_bytes(f["good"].read_bytes())
        protected = [keep, model] + [p for p in f.values() if p.is_file()]
        tally = {"ok": 0, "clear": 0, "crash": 0}
        lost, crashes = 0, []
        all_cases = cases(f, d, model)
        for name, args in all_cases:
            before = digest(protected)
            res = runner.invoke(cli, args)
            text = res.output
            errors = [line for line in text.splitlines() if line.startswith("error:")]
            escaped = res.exception is not None and not isinstance(res.exception, SystemExit)
            if escaped or "Traceback" in text or res.exit_code == 3 or len(errors) > 1:
                tally["crash"] += 1
                crashes.append(f"{name}: exit {res.exit_code} {res.exception!r} {text[-300:]!r}")
            elif res.exit_code in (0, 1):
                tally["ok"] += 1
            elif res.exit_code == 2:
                tally["clear"] += 1
            else:
                tally["crash"] += 1
                crashes.append(f"{name}: exit {res.exit_code}")
            after = digest(protected)
            if any(after.get(k) != v for k, v in before.items()):
                lost += 1
                crashes.append(f"{name}: a file that existed before changed or vanished")
        print("| cases tried | results (exit 0/1) | clear one-line errors (exit 2) | crashes | data lost |")
        print("|---|---|---|---|---|")
        print(f"| {len(all_cases)} | {tally['ok']} | {tally['clear']} | {tally['crash']} | {lost} |")
        for line in crashes:
            print("  -", line)
        return 1 if tally["crash"] or lost else 0


if __name__ == "__main__":
    sys.exit(main())
