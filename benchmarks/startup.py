"""Start-up of a classical ``hrdv2 train``: wall and CPU seconds of fresh processes.

Each row runs ``--repeats`` times in a fresh interpreter (what a user pays per command) and
prints the median wall and CPU (user + system of the child) seconds:

* ``hrdv2 train``: the console script, classical default features and random forest, on two
  512x512 crops (top-left) of ../shared/data/tcell images with their real scribbles;
* ``reference``: what the issue calls "the others", a plain script: scikit-image
  ``multiscale_basic_features`` (intensity + texture, sigmas 1..16) + ``RandomForestClassifier``
  with the settings of scikit-image's trainable-segmentation example (50 trees, depth 10,
  ``max_samples=0.05``) fitted on every scribbled pixel, then ``joblib.dump``;
* ``import sklearn.ensemble`` and ``python -c pass``: the floors that no classical trainer built
  on scikit-learn's random forest avoids.

Ratios are against the reference of the same run (same load). Load average is printed: on a
shared machine compare CPU seconds, which other processes inflate far less than wall seconds.

Usage: python benchmarks/startup.py [--repeats 5] [--data ../shared/data/tcell]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = ("tcell_0_big", "tcell_1_busy")
SIZE = 512

REFERENCE = r"""
import sys
import joblib
import numpy as np
from PIL import Image
from skimage.feature import multiscale_basic_features
from sklearn.ensemble import RandomForestClassifier

d = sys.argv[1]
xs, ys = [], []
for i in range(2):
    image = np.asarray(Image.open(f"{d}/im{i}.png"))
    labels = np.asarray(Image.open(f"{d}/s{i}.png"))
    feats = multiscale_basic_features(image, intensity=True, edges=False, texture=True, sigma_min=1, sigma_max=16)
    xs.append(feats[labels > 0])
    ys.append(labels[labels > 0])
clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05)
clf.fit(np.concatenate(xs), np.concatenate(ys))
joblib.dump(clf, f"{d}/reference.joblib")
"""

PHASES = r"""
import json, sys, time
marks = [("start", time.perf_counter(), time.process_time())]
def mark(name):
    marks.append((name, time.perf_counter(), time.process_time()))
import numpy as np
from hrdv2.io import read_image
from hrdv2.segmentation import Segmenter
mark("import hrdv2 + scipy.ndimage")
import sklearn.ensemble
mark("import scikit-learn")
images = [read_image(f"im{i}.png") for i in range(2)]
scribbles = [read_image(f"s{i}.png") for i in range(2)]
mark("read images")
seg = Segmenter()
feats = [seg.featurise(im) for im in images]
mark("classical features")
seg.fit(images, scribbles, feats)
mark("random forest fit")
from hrdv2.segmentation.lazy_skops import import_skops_io
import_skops_io()
mark("import skops")
seg.save("phases.skops")
mark("save")
print(json.dumps([(b[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(marks, marks[1:])]))
"""

def write_data(data: Path, out: Path) -> None:
    """Two 512x512 crops of real micrographs and their scribbles (every class kept)."""
    import numpy as np
    from PIL import Image

    for i, name in enumerate(PAIRS):
        image = np.asarray(Image.open(data / f"{name}.png"))[:SIZE, :SIZE]
        labels = np.asarray(Image.open(data / f"{name}_scribble.png"))[:SIZE, :SIZE]
        if len(np.unique(labels[labels > 0])) < 2:
            raise SystemExit(f"{data / name}: the {SIZE}x{SIZE} crop keeps fewer than two scribbled classes")
        Image.fromarray(image).save(out / f"im{i}.png")
        Image.fromarray(labels).save(out / f"s{i}.png")


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed:\n{res.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", type=Path, default=here.parent.parent / "shared" / "data" / "tcell")
    args = ap.parse_args()
    py = sys.executable
    hrdv2 = shutil.which("hrdv2", path=str(Path(py).parent)) or shutil.which("hrdv2")
    if hrdv2 is None:
        raise SystemExit("the hrdv2 console script is not installed next to this Python; run `pip install -e .`")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_data(args.data, d)
        (d / "reference.py").write_text(REFERENCE)
        phases = [json.loads(subprocess.run([py, "-c", PHASES], cwd=d, capture_output=True, text=True,
                                            check=True).stdout.splitlines()[-1]) for _ in range(args.repeats)]
        train = ["train", "--image", "im0.png", "--scribble", "s0.png", "--image", "im1.png", "--scribble", "s1.png",
                 "--out", "m.skops"]
        rows = {
            "hrdv2 train (classical default)": [hrdv2, *train],
            "reference: skimage features + RF + joblib": [py, str(d / "reference.py"), str(d)],
            "python -c 'import sklearn.ensemble'": [py, "-c", "import sklearn.ensemble"],
            "python -c 'pass'": [py, "-c", "pass"],
        }
        for cmd in rows.values():  # warm the disk cache; not timed
            run(cmd, d)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
        for _ in range(args.repeats):  # interleaved, so load changes hit every row alike
            for name, cmd in rows.items():
                times[name].append(run(cmd, d))
    load = os.getloadavg()
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    ref_wall, ref_cpu = med["reference: skimage features + RF + joblib"]
    print(f"{args.repeats} fresh processes per row, median; load average {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f}; {os.cpu_count()} CPUs")
    print(f"| {'command':44s} | wall s | CPU s | wall / reference | CPU / reference |")
    print(f"| {'-' * 44} | ------ | ----- | ---------------- | --------------- |")
    for name, (wall, cpu) in med.items():
        print(f"| {name:44s} | {wall:6.2f} | {cpu:5.2f} | {wall / ref_wall:16.2f} | {cpu / ref_cpu:15.2f} |")
    print("\nwhere a classical train's time goes (one process, in order; median of the runs):")
    print(f"| {'phase':28s} | wall s | CPU s |")
    print(f"| {'-' * 28} | ------ | ----- |")
    for i, (name, _, _) in enumerate(phases[0]):
        wall, cpu = (statistics.median(run[i][k] for run in phases) for k in (1, 2))
        print(f"| {name:28s} | {wall:6.2f} | {cpu:5.2f} |")


if __name__ == "__main__":
    main()
