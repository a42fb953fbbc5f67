"""Scribble (weakly supervised) segmentation benchmark on ../shared/data.

For every labelled set: train on the labelled image(s), report mIoU on held-out images of the
same set, for feature sets x classifiers, with seconds to featurise (per image), fit and predict
(per image). Beside it, in the same run, the scikit-image tutorial recipe
(``multiscale_basic_features`` + ``RandomForestClassifier(n_estimators=50, max_depth=10,
max_samples=0.05)``) as the reference: our classical mIoU and featurisation speed are printed
as ratios against it. Then speed on a 1024x1024 grey image (featurise; apply = featurise +
predict of a trained model) and the interactive-seg-backend reference setting
(superalloy/isb_0 with its scribbles, scored against isb_0_gt; 512 and 1536 px).

Splits (see docs/segmentation.md):
  superalloy  train nasa_spot3_0d_3 (simulated scribbles), test the 9 other NASA images
  isb_0       real scribbles, scored on the same image (the published reference setting)
  tcell       train tcell_0..2 (real scribbles), score tcell_3..5 on their scribbled pixels
  sofc        one image: strokes split per class into train / test halves (see _split_strokes)
  isbi2012    train isbi_00 (simulated), test isbi_01..09
  horse       train horse001..005 (simulated), test horse006..030

Feature rows: ``classical`` is the default classical selection (36 channels per image channel),
``classical-all`` the whole filter bank (135), ``deep`` / ``hybrid`` need backbone weights.

Usage: python benchmarks/wss.py [--data DIR] [--features classical,classical-all,deep,hybrid]
       [--classifiers logistic,random_forest,gradient_boosting] [--weights PATH|random]
       [--max-test N] [--sets a,b] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from hrdv2.errors import WeightsUnavailableError
from hrdv2.features.classical import feature_names
from hrdv2.engine import BackboneCache, FeatureEngine, compute_features
from hrdv2.features.sets import FeatureConfig
from hrdv2.io import read_image, read_labels
from hrdv2.metrics.segmentation import confusion_matrix, mean_iou
from hrdv2.segmentation import Segmenter, simulate_scribbles

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SIM = dict(strokes_per_class=3, radius=2, max_fraction=0.01)  # simulated-scribble procedure


def _load(folder: Path, stem: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    im = read_image(folder / f"{stem}.png")
    return im, read_labels(folder / f"{stem}_{label}.png", im.shape[:2])


def _split_strokes(scr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: connected strokes alternate train / test (largest first); a class with one
    stroke is cut at its median column, left half train, right half test."""
    train, test = np.zeros_like(scr), np.zeros_like(scr)
    for c in [int(v) for v in np.unique(scr) if v > 0]:
        lab, n = ndi.label(scr == c)
        if n >= 2:
            sizes = ndi.sum(np.ones_like(lab), lab, range(1, n + 1))
            for rank, comp in enumerate(np.argsort(-sizes) + 1):
                (train if rank % 2 == 0 else test)[lab == comp] = c
        else:
            ys, xs = np.nonzero(lab)
            mid = np.median(xs)
            train[ys[xs <= mid], xs[xs <= mid]] = c
            test[ys[xs > mid], xs[xs > mid]] = c
    return train, test


def build_sets(data: Path, max_test: int | None) -> dict[str, dict]:
    """name -> {train: [(img, scribble)], test: [(img, labels)], note}."""
    sets: dict[str, dict] = {}
    sa = data / "superalloy"
    nasa = sorted(p.stem for p in sa.glob("nasa_*.png") if not p.stem.endswith("_gt"))
    im, gt = _load(sa, nasa[0], "gt")
    sets["superalloy"] = {"train": [(im, simulate_scribbles(gt, seed=0, **SIM))],
                          "test": [_load(sa, s, "gt") for s in nasa[1:]], "note": "simulated scribbles"}
    im, scr = _load(sa, "isb_0", "scribble")
    sets["isb_0"] = {"train": [(im, scr)], "test": [_load(sa, "isb_0", "gt")], "note": "real scribbles, same image"}
    tc = data / "tcell"
    stems = sorted(p.stem for p in tc.glob("tcell_*.png") if not p.stem.endswith("_scribble"))
    sets["tcell"] = {"train": [_load(tc, s, "scribble") for s in stems[:3]],
                     "test": [_load(tc, s, "scribble") for s in stems[3:]], "note": "real scribbles; scored on test scribbles"}
    im, scr = _load(tc, "sofc", "scribble")
    a, b = _split_strokes(scr)
    sets["sofc"] = {"train": [(im, a)], "test": [(im, b)], "note": "real scribbles, stroke split"}
    for name, folder, n_train in (("isbi2012", "isbi2012", 1), ("horse", "horse", 5)):
        stems = sorted(p.stem for p in (data / folder).glob("*.png") if not p.stem.endswith("_gt"))
        train = []
        for i, s in enumerate(stems[:n_train]):
            im, gt = _load(data / folder, s, "gt")
            train.append((im, simulate_scribbles(gt, seed=i, **SIM)))
        sets[name] = {"train": train, "test": [_load(data / folder, s, "gt") for s in stems[n_train:]],
                      "note": "simulated scribbles"}
    if max_test:
        for v in sets.values():
            v["test"] = v["test"][:max_test]
    return sets


def reference_features(im: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(im, sigma_min=1, sigma_max=16, channel_axis=-1 if im.ndim == 3 else None)


def reference_classifier(seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, max_samples=0.05, random_state=seed)


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def run_set(s: dict, kinds: list[str], classifiers: list[str], configs: dict[str, FeatureConfig],
            seeds: int = 1, backbones: BackboneCache | None = None) -> list[dict]:
    """mIoU (mean over ``seeds`` classifier seeds; features are deterministic) and timings."""
    rows = []
    n_cls = max(int(max(sc.max() for _, sc in s["train"])), int(max(g.max() for _, g in s["test"])))
    ntr = len(s["train"])
    # reference: the scikit-image tutorial recipe
    ref_feats, tf = [], 0.0
    for im, _ in s["train"] + s["test"]:
        f, dt = _timed(reference_features, im)
        ref_feats.append(f)
        tf += dt
    x = np.concatenate([f[sc > 0] for f, (_, sc) in zip(ref_feats, s["train"])])
    y = np.concatenate([sc[sc > 0] for _, sc in s["train"]])
    mious, tfit, tpred = [], 0.0, 0.0
    for seed in range(seeds):
        clf, dt = _timed(reference_classifier(seed).fit, x, y)
        tfit += dt
        cm = 0
        for (_, gt), f in zip(s["test"], ref_feats[ntr:]):
            p, dp = _timed(clf.predict, f.reshape(-1, f.shape[-1]))
            tpred += dp
            cm = cm + confusion_matrix(p.reshape(gt.shape), gt, n_cls)
        mious.append(mean_iou(cm))
    rows.append({"features": "reference", "classifier": "skimage+RF", "miou": float(np.mean(mious)),
                 "miou_sd": float(np.std(mious)), "featurise_s": tf / len(ref_feats), "fit_s": tfit / seeds,
                 "predict_s": tpred / (seeds * len(s["test"]))})
    for kind in kinds:
        cfg = configs[kind]
        engine = FeatureEngine(cfg, backbones=backbones)
        try:
            feats, tf = [], 0.0
            for im, _ in s["train"] + s["test"]:
                f, dt = _timed(engine.compute, im)
                feats.append(f)
                tf += dt
        except WeightsUnavailableError as exc:
            rows.append({"features": kind, "classifier": "-", "error": str(exc).split(". ")[0]})
            continue
        for name in classifiers:
            mious, tfit, tpred = [], 0.0, 0.0
            for seed in range(seeds):
                seg = Segmenter(cfg, classifier=name, random_state=seed)
                _, dt = _timed(seg.fit, [im for im, _ in s["train"]], [sc for _, sc in s["train"]], feats[:ntr])
                tfit += dt
                cm = 0
                for (im, gt), f in zip(s["test"], feats[ntr:]):
                    p, dp = _timed(seg.predict, im, f)
                    tpred += dp
                    cm = cm + confusion_matrix(p, gt, n_cls)
                mious.append(mean_iou(cm))
            rows.append({"features": kind, "classifier": name, "miou": float(np.mean(mious)),
                         "miou_sd": float(np.std(mious)), "featurise_s": tf / len(feats), "fit_s": tfit / seeds,
                         "predict_s": tpred / (seeds * len(s["test"]))})
    return rows


_SPEED_CHILD = r"""
import json, sys, time, numpy as np
from hrdv2.io import read_image, read_labels
from hrdv2.segmentation import Segmenter
from hrdv2.metrics.segmentation import mean_iou
import scipy.ndimage as ndi
d, size = sys.argv[1], int(sys.argv[2])
im = read_image(d + "/isb_0.png"); sc = read_labels(d + "/isb_0_scribble.png", im.shape); gt = read_labels(d + "/isb_0_gt.png", im.shape)
if size != im.shape[0]:
    z = size / im.shape[0]
    im = ndi.zoom(im, z, order=1); sc = ndi.zoom(sc, z, order=0); gt = ndi.zoom(gt, z, order=0)
import sklearn.ensemble  # a one-off ~0.8 s library import, paid once per session: not part of "train"
seg = Segmenter("classical", classifier="random_forest")
t = time.perf_counter(); f = seg.featurise(im); tf = time.perf_counter() - t
t = time.perf_counter(); seg.fit([im], [sc], [f]); tt = time.perf_counter() - t
del f  # apply = what `hrdv2 apply` does: featurise + predict, without the training features held
t = time.perf_counter(); p = seg.predict(im); ta = time.perf_counter() - t
# VmHWM belongs to this exec'd image (ru_maxrss would carry over the forking parent's peak)
peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1e6
print(json.dumps({"size": size, "featurise_s": tf, "train_s": tt, "apply_s": ta, "miou": mean_iou(p, gt),
                  "peak_rss_gb": peak}))
"""


def speed(data: Path, repeats: int = 3) -> dict:
    """1024x1024 grey: featurise (ours vs reference, best of ``repeats``, alternating) and apply."""
    im = read_image(data / "superalloy" / "isb_0.png")
    big = ndi.zoom(im, 2, order=1)
    ours, ours_all, ref = [], [], []
    for _ in range(repeats):
        ours.append(_timed(compute_features, big, FeatureConfig())[1])
        ours_all.append(_timed(compute_features, big, FeatureConfig(filters="all"))[1])
        ref.append(_timed(reference_features, big)[1])
    scr = read_labels(data / "superalloy" / "isb_0_scribble.png", im.shape)
    seg = Segmenter("classical", classifier="random_forest").fit([im], [scr])
    apply_s = min(_timed(seg.predict, big)[1] for _ in range(repeats))
    n_ours = len(feature_names(1, FeatureConfig().sigmas, FeatureConfig().filters))
    n_all = len(feature_names(1, FeatureConfig().sigmas, "all"))
    return {"featurise_ours_s": min(ours), "featurise_ref_s": min(ref), "speedup": min(ref) / min(ours),
            "featurise_all_s": min(ours_all), "speedup_all": min(ref) / min(ours_all), "n_features_all": n_all,
            "apply_s": apply_s, "n_features_ours": n_ours, "n_features_ref": reference_features(big[:64, :64]).shape[-1]}


def reference_setting(data: Path) -> list[dict]:
    out = []
    for size in (512, 1536):
        r = subprocess.run([sys.executable, "-c", _SPEED_CHILD, str(data / "superalloy"), str(size)],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--features", default="classical,classical-all,deep,hybrid")
    ap.add_argument("--classifiers", default="logistic,random_forest,gradient_boosting")
    ap.add_argument("--weights", default=None, help="backbone weights file, or 'random' (UNTRAINED; for timing only)")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--shifts", default="1,2", help="HR-Dv2 shift distances (empty: no shifts)")
    ap.add_argument("--max-test", type=int, default=None, help="score at most N held-out images per set")
    ap.add_argument("--sets", default=None, help="comma-separated subset of sets")
    ap.add_argument("--seeds", type=int, default=3, help="classifier seeds to average mIoU over")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    kinds = [k for k in a.features.split(",") if k]
    classifiers = [c for c in a.classifiers.split(",") if c]
    shifts = tuple(int(v) for v in a.shifts.split(",") if v)
    configs = {k: FeatureConfig(kind=k.split("-")[0], filters="all" if k.endswith("-all") else "default",
                                backbone=a.backbone, weights=a.weights, shifts=shifts) for k in kinds}
    backbones = BackboneCache()  # one load per backbone for the whole run
    backbone = "none"
    if any(c.uses_deep for c in configs.values()):
        try:
            backbone = FeatureEngine(next(c for c in configs.values() if c.uses_deep), backbones=backbones).describe()
        except WeightsUnavailableError as exc:
            backbone = f"unavailable ({str(exc).split('. ')[0]})"
    print(f"# hrdv2 scribble-segmentation benchmark  ({platform.node()}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.1f}: timings are wall-clock on a shared machine)")
    print(f"# deep backbone: {backbone}; HR-Dv2 shifts {shifts or 'none'} (moore), no flips")
    print(f"# simulated scribbles: {SIM}, seed = train-image index; mIoU = mean over {a.seeds} classifier seed(s)")
    print("# feat s: per image; fit s: per fit; pred s: per held-out image (features precomputed)")
    sets = build_sets(a.data, a.max_test)
    if a.sets:
        sets = {k: v for k, v in sets.items() if k in a.sets.split(",")}
    report: dict = {"backbone": backbone, "sets": {}}
    hdr = (f"{'set':<11}{'features':<14}{'classifier':<18}{'mIoU':>7}{'(sd)':>7}{'vs ref':>8}{'feat s':>8}"
           f"{'fit s':>8}{'pred s':>8}")
    print(hdr)
    for name, s in sets.items():
        frac = np.mean([np.mean(sc > 0) for _, sc in s["train"]])
        rows = run_set(s, kinds, classifiers, configs, a.seeds, backbones)
        ref = rows[0]
        for r in rows:
            if "error" in r:
                print(f"{name:<11}{r['features']:<14}{'-':<18}  skipped: {r['error']}")
                continue
            ratio = r["miou"] / ref["miou"] if ref["miou"] > 0 else float("nan")
            print(f"{name:<11}{r['features']:<14}{r['classifier']:<18}{r['miou']:>7.3f}{r['miou_sd']:>7.3f}{ratio:>8.2f}"
                  f"{r['featurise_s']:>8.2f}{r['fit_s']:>8.2f}{r['predict_s']:>8.2f}")
        print(f"{'':<11}({len(s['train'])} train / {len(s['test'])} test images, {100 * frac:.2f}% of train pixels "
              f"labelled, {s['note']})")
        report["sets"][name] = rows
    if not a.no_speed:
        sp = speed(a.data)
        report["speed_1024"] = sp
        print(f"\n# 1024x1024 grey, classical: featurise {sp['featurise_ours_s']:.2f} s ({sp['n_features_ours']} features) "
              f"vs reference {sp['featurise_ref_s']:.2f} s ({sp['n_features_ref']} features): "
              f"{sp['speedup']:.2f}x; apply (featurise + RF predict) {sp['apply_s']:.2f} s")
        print(f"#   whole filter bank (filters='all'): {sp['featurise_all_s']:.2f} s ({sp['n_features_all']} features), "
              f"{sp['speedup_all']:.2f}x the reference")
        print(f"# load average now {os.getloadavg()[0]:.1f}")
        rs = reference_setting(a.data)
        report["isb_0_setting"] = rs
        print("# interactive-seg-backend setting (isb_0 + its scribbles, classical + random forest):")
        for r in rs:
            print(f"#   {r['size']}px: mIoU {r['miou']:.3f}, featurise {r['featurise_s']:.2f} s, train {r['train_s']:.2f} s, "
                  f"apply {r['apply_s']:.2f} s, peak RSS {r['peak_rss_gb']:.2f} GB")
        print("#   published (2 threads): 512px mIoU 0.663, featurise 0.55 s, train 0.27 s, apply 0.50 s; "
              "1536px featurise 5.4 s, apply 4.5 s, 1.8 GB")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
