"""Latency of the web app as a user feels it, measured through the HTTP API of a real server.

* cached: with features already cached, the time from "stroke finished" (the stroke POST is
  sent) to "overlay updated" (the new prediction's pixels received), i.e. stroke POST + train
  job (fit on every stroke so far + predict the image) + prediction GET.
* first overlay: a new image, features not cached: upload done -> train -> prediction received.

Images are real Ni-superalloy SEM micrographs (../shared/data/superalloy/nasa_*): 512x512 as
stored, 1024x1024 as a 2x2 mosaic of four of them, and 4096x4096 (``--sides 4096``) as an 8x8
mosaic of them (each 2x2 group rotated, so no two neighbouring tiles repeat). Strokes are short lines placed inside
regions of the ground truth (3 classes). Classical features; each classifier the app offers
can be timed (--classifiers).

    .venv/bin/python benchmarks/app_latency.py [--repeats 5] [--classifiers random_forest,logistic] [--sides 512,1024,4096]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "superalloy"
TILES = ["nasa_spot3_0d_3", "nasa_spot3_180d_2", "nasa_spot4_0d_3", "nasa_spot4_180d_2"]


def _read(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / f"{name}.png"))


def images(sides: tuple[int, ...] = (512, 1024)) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{side: (image, ground truth)} for 512, 1024 and (if asked) 4096."""
    ims = [(_read(n), _read(f"{n}_gt")) for n in TILES]
    mosaic = np.block([[ims[0][0], ims[1][0]], [ims[2][0], ims[3][0]]])
    mosaic_gt = np.block([[ims[0][1], ims[1][1]], [ims[2][1], ims[3][1]]])
    out = {512: ims[0], 1024: (mosaic, mosaic_gt)}
    if 4096 in sides:
        rows = [[np.rot90(mosaic, (i + j) % 4) for j in range(4)] for i in range(4)]
        rows_gt = [[np.rot90(mosaic_gt, (i + j) % 4) for j in range(4)] for i in range(4)]
        out[4096] = (np.block(rows), np.block(rows_gt))
    return {side: out[side] for side in sides}


def stroke_plan(gt: np.ndarray, per_class: int, seed: int) -> list[tuple[int, list[list[float]]]]:
    """(class value, points) lines of up to 15 px, well inside regions of each class."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for value in np.unique(gt):
        dist = ndimage.distance_transform_edt(np.pad(gt == value, 1))[1:-1, 1:-1]
        ys, xs = np.nonzero(dist >= 3)
        for i in rng.choice(len(ys), per_class, replace=False):
            y, x = ys[i], xs[i]
            half = float(min(dist[y, x] - 2, 7))
            out.append((int(value), [[x + 0.5 - half, y + 0.5], [x + 0.5 + half, y + 0.5]]))
    return out


class Server:
    """`hrdv2 serve` on a free loopback port, in a subprocess."""

    def __init__(self, project_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hrdv2.cli.main", "serve", "--project-dir", str(project_dir), "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        deadline = time.time() + 60
        while True:
            try:
                if self.client.get("/api/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


def wait_job(c: httpx.Client, job: dict) -> dict:
    while job["state"] not in ("done", "failed", "cancelled"):
        time.sleep(0.01)
        job = c.get(f"/api/jobs/{job['id']}").json()
    if job["state"] != "done":
        raise RuntimeError(f"job failed: {job}")
    return job


def train_and_fetch(c: httpx.Client, pid: int, iid: int) -> bytes:
    job = wait_job(c, c.post(f"/api/projects/{pid}/train", json={"image_id": iid}).json())
    assert job["result"]["image_id"] == iid
    r = c.get(f"/api/images/{iid}/prediction")
    r.raise_for_status()
    return r.content


def run(side: int, image: np.ndarray, gt: np.ndarray, classifier: str, repeats: int, c: httpx.Client) -> dict:
    """One project: first overlay on a new image, then ``repeats`` stroke -> overlay rounds."""
    pid = c.post("/api/projects", json={"name": f"bench {side} {classifier}"}).json()["id"]
    c.patch(f"/api/projects/{pid}", json={"classifier": classifier})
    colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231"]
    class_ids = {}
    for v in np.unique(gt):
        cls = c.post(f"/api/projects/{pid}/classes", json={"name": f"phase {v}", "color": colours[int(v) % 4]}).json()
        class_ids[int(v)] = cls["id"]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    iid = c.post(f"/api/projects/{pid}/images", files={"file": (f"{side}.png", buf.getvalue(), "image/png")}).json()[0]["id"]
    for value, pts in stroke_plan(gt, 3, seed=0):
        c.post(f"/api/images/{iid}/strokes", json={"tool": "brush", "class_id": class_ids[value], "radius": 3, "points": pts})
    t0 = time.perf_counter()
    pixels = train_and_fetch(c, pid, iid)  # features computed now (new image, empty cache)
    first = time.perf_counter() - t0
    assert len(pixels) == side * side
    cached = []
    for k, (value, pts) in enumerate(stroke_plan(gt, repeats, seed=1)[:repeats]):
        t0 = time.perf_counter()
        c.post(f"/api/images/{iid}/strokes", json={"tool": "brush", "class_id": class_ids[value], "radius": 3, "points": pts})
        train_and_fetch(c, pid, iid)
        cached.append(time.perf_counter() - t0)
    labels = np.frombuffer(pixels, np.uint8).reshape(side, side)
    return {
        "side": side, "classifier": classifier, "first_overlay_s": round(first, 3),
        "cached_median_s": round(statistics.median(cached), 3), "cached_min_s": round(min(cached), 3),
        "cached_max_s": round(max(cached), 3), "repeats": len(cached),
        "pixel_accuracy_vs_gt": round(float((labels == gt).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--classifiers", default="random_forest,logistic")
    ap.add_argument("--sides", default="512,1024", help="image sides to time: 512, 1024, 4096")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            small, small_gt = images((512,))[512]  # warm-up: imports and first-call costs inside the server
            run(64, np.ascontiguousarray(small[:64, :64]), small_gt[:64, :64], "logistic", 1, server.client)
            for side, (image, gt) in images(tuple(int(v) for v in args.sides.split(","))).items():
                for k, classifier in enumerate(args.classifiers.split(",")):
                    # a different orientation per run, so "first overlay" never finds cached features
                    view, view_gt = np.rot90(image, k), np.rot90(gt, k)
                    res = run(side, np.ascontiguousarray(view), np.ascontiguousarray(view_gt), classifier,
                              args.repeats, server.client)
                    print(json.dumps(res), flush=True)
                    results.append(res)
        finally:
            server.close()
    print(f"\n| image | classifier | stroke -> overlay, features cached (median [min-max] of {args.repeats}) | first overlay, new image |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['side']}x{r['side']} | {r['classifier']} | {r['cached_median_s']:.2f} s "
              f"[{r['cached_min_s']:.2f}-{r['cached_max_s']:.2f}] | {r['first_overlay_s']:.2f} s |")
    print(f"\nmachine: {os.cpu_count()} CPUs visible; classical features (hrdv2.features.sets, defaults)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
