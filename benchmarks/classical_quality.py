"""Classical features on every labelled set in ../shared/data: hrdv2's default, the `weka` preset,
`auto`, and the scikit-image reference, measured in one run on identical splits and scribbles.

Per set: train on (up to) 2 images, score mIoU on (up to) 6 others, summed confusion matrix.
Where a set has only dense ground truth, scribbles are simulated from it with
``simulate_scribbles(gt, seed=i, strokes_per_class=3, radius=2, max_fraction=0.01)`` (i = index of
the training image), the same for every method. The reference is the scikit-image tutorial
recipe: ``multiscale_basic_features(sigma_min=1, sigma_max=16)`` + ``RandomForestClassifier(
n_estimators=50, max_depth=10, max_samples=0.05)``. Every hrdv2 row uses ``Segmenter`` as shipped
(random forest unless auto chooses otherwise); ``default/none`` is the default without the
per-image percentile stretch (the normalisation study in docs/segmentation.md).

``tuned`` marks the sets looked at while choosing auto's candidates and the normalisation;
the others are held out from that tuning.

Usage: python benchmarks/classical_quality.py [--sets a,b] [--budget 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hrdv2.features.sets import FeatureConfig
from hrdv2.io import read_image, read_labels
from hrdv2.metrics.segmentation import confusion_matrix, mean_iou
from hrdv2.segmentation import Segmenter, simulate_scribbles

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIM = dict(strokes_per_class=3, radius=2, max_fraction=0.01)
TUNED = {"superalloy", "tcell"}
METHODS = ("reference", "default", "default/none", "weka", "auto")


def _stems(folder: Path, pattern: str, label: str) -> list[str]:
    return sorted(p.stem for p in folder.glob(pattern)
                  if not p.stem.endswith(("_gt", "_scribble")) and (folder / f"{p.stem}_{label}.png").exists())


def _pair(folder: Path, stem: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    im = read_image(folder / f"{stem}.png")
    return im, read_labels(folder / f"{stem}_{label}.png", im.shape[:2])


def build_sets(data: Path) -> dict[str, dict]:
    """name -> {train: [(image, scribble)], test: [(name, image, labels)], note}."""
    sets: dict[str, dict] = {}

    def simulated(name: str, folder: Path, pattern: str) -> None:
        stems = _stems(folder, pattern, "gt")
        train = [_pair(folder, s, "gt") for s in stems[:2]]
        sets[name] = {"train": [(im, simulate_scribbles(gt, seed=i, **SIM)) for i, (im, gt) in enumerate(train)],
                      "test": [(s, *_pair(folder, s, "gt")) for s in stems[2:8]],
                      "note": "2 / 6, simulated scribbles"}

    simulated("superalloy", data / "superalloy", "nasa_*.png")
    tc = data / "tcell"
    stems = _stems(tc, "tcell_*.png", "scribble")
    sets["tcell"] = {"train": [_pair(tc, s, "scribble") for s in stems[:2]],
                     "test": [(s, *_pair(tc, s, "scribble")) for s in stems[2:6]],
                     "note": "2 / 4, real scribbles, scored on scribbled pixels"}
    simulated("isbi2012", data / "isbi2012", "isbi_*.png")
    sa = data / "superalloy"
    for stem in ("isb_0", "isb_1"):
        sets[stem] = {"train": [_pair(sa, stem, "scribble")], "test": [(stem, *_pair(sa, stem, "gt"))],
                      "note": "real scribbles, same image's GT"}
    simulated("horse", data / "horse", "horse*.png")
    simulated("grabcut", data / "grabcut", "*.png")
    return sets


def _reference(s: dict, n_cls: int) -> tuple[float, list[float]]:
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(im):
        return multiscale_basic_features(im, sigma_min=1, sigma_max=16, channel_axis=-1 if im.ndim == 3 else None)

    x = np.concatenate([feats(im)[sc > 0] for im, sc in s["train"]])
    y = np.concatenate([sc[sc > 0] for _, sc in s["train"]])
    clf = RandomForestClassifier(n_estimators=50, max_depth=10, max_samples=0.05, n_jobs=-1, random_state=0).fit(x, y)
    cms = []
    for _, im, gt in s["test"]:
        f = feats(im)
        cms.append(confusion_matrix(clf.predict(f.reshape(-1, f.shape[-1])).reshape(gt.shape), gt, n_cls))
    return mean_iou(sum(cms)), [mean_iou(c) for c in cms]


def _hrdv2(s: dict, n_cls: int, method: str, budget: float) -> tuple[float, list[float], str]:
    if method == "auto":
        seg = Segmenter("auto", auto_budget_s=budget)
    else:
        filters, _, norm = method.partition("/")
        seg = Segmenter(FeatureConfig(filters=filters, normalise=norm or "auto"))
    seg.fit([im for im, _ in s["train"]], [sc for _, sc in s["train"]])
    cms = [confusion_matrix(seg.predict(im), gt, n_cls) for _, im, gt in s["test"]]
    note = seg.auto_choice_.summary() if method == "auto" else ""
    return mean_iou(sum(cms)), [mean_iou(c) for c in cms], note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", default=None, help="comma-separated subset of the set names")
    ap.add_argument("--budget", type=float, default=20.0, help="auto's time budget per set (s)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    sets = build_sets(args.data)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    results = {}
    for name, s in sets.items():
        n_cls = max(int(max(sc.max() for _, sc in s["train"])), int(max(g.max() for _, _, g in s["test"])))
        row: dict = {"note": s["note"], "tuned": name in TUNED, "per_image": {}, "seconds": {}}
        for m in METHODS:
            t = time.perf_counter()
            if m == "reference":
                row[m], per = _reference(s, n_cls)
            else:
                row[m], per, note = _hrdv2(s, n_cls, m, args.budget)
                if note:
                    row["auto_choice"] = note
            row["seconds"][m] = round(time.perf_counter() - t, 1)
            row["per_image"][m] = [round(v, 3) for v in per]
        results[name] = row
        ratios = "  ".join(f"{m} {row[m]:.3f} ({row[m] / row['reference']:.2f})" for m in METHODS[1:])
        split = "tuned" if row["tuned"] else "held out"
        print(f"{name:<11}{split:<9} ref {row['reference']:.3f}  {ratios}", flush=True)
        print(f"{'':<20}per image: " + "; ".join(f"{m} {row['per_image'][m]}" for m in ("reference", "default",
                                                                                          "default/none")), flush=True)
        if "auto_choice" in row:
            print(f"{'':<20}{row['auto_choice']}", flush=True)
    print("\n| set | split | reference | default | default, no stretch | weka | auto | auto's choice (CV mIoU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        cells = " | ".join(f"{r[m]:.3f} ({r[m] / r['reference']:.2f})" for m in METHODS[1:])
        choice = r.get("auto_choice", "").replace("auto chose ", "").split(": CV")[0]
        cv = r.get("auto_choice", "").split("CV mIoU ")[-1].split(" ")[0]
        print(f"| {name}{'' if r['tuned'] else ' (held out)'} | {r['note']} | {r['reference']:.3f} | {cells} | "
              f"{choice} ({cv}) |")
    for m in METHODS:
        print(f"mean {m}: {np.mean([r[m] for r in results.values()]):.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
