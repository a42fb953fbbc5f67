"""Classical features on every labelled set in ../shared/data: hrdv2's default, the `weka` preset,
`auto`, and the scikit-image reference, measured in one run on identical splits and scribbles.

Per set: train on (up to) 2 images, score mIoU on (up to) 6 others, summed confusion matrix.
``grabcut-per-image`` is the interactive use instead: one model per image, trained on scribbles
simulated on that image and scored on its own ground truth (all 10 images, confusion matrices
summed over them); GrabCut's foreground is a different object in every photo, so its cross-image
split (``grabcut``) asks for something no scribble on other photos can teach.
Where a set has only dense ground truth, scribbles are simulated from it with
``simulate_scribbles(gt, seed=i, strokes_per_class=3, radius=2, max_fraction=0.01)`` (i = index of
the training image), the same for every method. The reference is the scikit-image tutorial
recipe: ``multiscale_basic_features(sigma_min=1, sigma_max=16)`` + ``RandomForestClassifier(
n_estimators=50, max_depth=10, max_samples=0.05)``. Every hrdv2 row uses ``Segmenter`` as shipped
(random forest unless auto chooses otherwise); ``default/percentile`` is the default with the plain
percentile stretch instead of the robust one, ``default/none`` without any (the normalisation
study in docs/segmentation.md).

``tuned`` marks the sets looked at while choosing auto's candidates and the normalisation;
the others are held out from that tuning. auto's ensemble rule and logistic share were then
compared on every set's usual split, so ``--unseen`` tests the same models on images after each
set's usual test images, which no tuning looked at (superalloy 2, isbi2012 2, horse 22, grabcut 2;
tcell, isb_0, isb_1 and grabcut-per-image have none).

Usage: python benchmarks/classical_quality.py [--sets a,b] [--budget 20] [--json out.json] [--ranking]
       [--seeds N] [--methods reference,default,auto] [--unseen]
(``--ranking``: every auto candidate's CV score next to its test score, per set. ``--seeds N``:
repeat everything with seeds 0..N-1 -- seed s simulates scribbles with ``seed=10 * s + i`` and
gives every forest, the reference's included, ``random_state=s`` -- and print each method's mean
and spread over the seeds, the ratio of the means to the reference, and on how many seeds each
method reached the reference. Seed 0 is the single-seed run.)
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
METHODS = ("reference", "default", "default/percentile", "default/none", "weka", "auto")


def _stems(folder: Path, pattern: str, label: str) -> list[str]:
    return sorted(p.stem for p in folder.glob(pattern)
                  if not p.stem.endswith(("_gt", "_scribble")) and (folder / f"{p.stem}_{label}.png").exists())


def _pair(folder: Path, stem: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    im = read_image(folder / f"{stem}.png")
    return im, read_labels(folder / f"{stem}_{label}.png", im.shape[:2])


def build_sets(data: Path, seed: int = 0, unseen: bool = False) -> dict[str, dict]:
    """name -> {train: [(image, scribble)], test: [(name, image, labels)], note}; ``seed`` varies
    the simulated scribbles (``seed=10 * seed + i``; real scribbles do not change). ``unseen``:
    the same training images and scribbles, tested on the images after the usual test images
    (which no tuning of hrdv2 looked at); sets without such images are left out."""
    sets: dict[str, dict] = {}

    def simulated(name: str, folder: Path, pattern: str) -> None:
        stems = _stems(folder, pattern, "gt")
        train = [_pair(folder, s, "gt") for s in stems[:2]]
        test = stems[8:] if unseen else stems[2:8]
        if not test:
            return
        sets[name] = {"train": [(im, simulate_scribbles(gt, seed=10 * seed + i, **SIM))
                                for i, (im, gt) in enumerate(train)],
                      "test": [(s, *_pair(folder, s, "gt")) for s in test],
                      "note": f"2 / {len(test)}{' unseen' if unseen else ''}, simulated scribbles"}

    simulated("superalloy", data / "superalloy", "nasa_*.png")
    tc = data / "tcell"
    stems = _stems(tc, "tcell_*.png", "scribble")
    if not unseen:  # its 6 scribbled images are all in the usual split
        sets["tcell"] = {"train": [_pair(tc, s, "scribble") for s in stems[:2]],
                         "test": [(s, *_pair(tc, s, "scribble")) for s in stems[2:6]],
                         "note": "2 / 4, real scribbles, scored on scribbled pixels"}
    simulated("isbi2012", data / "isbi2012", "isbi_*.png")
    sa = data / "superalloy"
    for stem in ("isb_0", "isb_1") if not unseen else ():  # tested on its own training image: nothing unseen
        sets[stem] = {"train": [_pair(sa, stem, "scribble")], "test": [(stem, *_pair(sa, stem, "gt"))],
                      "note": "real scribbles, same image's GT"}
    simulated("horse", data / "horse", "horse*.png")
    simulated("grabcut", data / "grabcut", "*.png")
    if unseen:  # likewise one model per image, tested on that image
        return sets
    gc = data / "grabcut"
    own = [(stem, *_pair(gc, stem, "gt")) for stem in _stems(gc, "*.png", "gt")]
    sets["grabcut-per-image"] = {
        "rounds": [{"train": [(im, simulate_scribbles(gt, seed=10 * seed + i, **SIM))], "test": [(stem, im, gt)]}
                   for i, (stem, im, gt) in enumerate(own)],
        "note": "10 x 1 / same image, simulated scribbles"}
    return sets


def rounds(s: dict) -> list[dict]:
    """The (train, test) splits of a set: one, or one per image for a per-image set."""
    return s.get("rounds", [s])


def n_classes(s: dict) -> int:
    """The largest class id in any split's scribbles or ground truth."""
    return max(max(int(max(sc.max() for _, sc in r["train"])), int(max(g.max() for _, _, g in r["test"])))
               for r in rounds(s))


def score(s: dict, n_cls: int, method: str, budget: float = 20.0, seed: int = 0) -> tuple[float, list[float], str]:
    """(mIoU of the confusion matrices summed over every test image of every split, per-image
    mIoUs, auto's choice or '') of one method on one set."""
    cms, notes = [], []
    for r in rounds(s):
        if method == "reference":
            cms += _reference_cms(r, n_cls, seed)
        else:
            found, note = _hrdv2_cms(r, n_cls, method, budget, seed)
            cms += found
            notes.append(note)
    note = notes[0] if len(notes) == 1 else (f"{len(notes)} models, one per image" if any(notes) else "")
    return mean_iou(sum(cms)), [mean_iou(c) for c in cms], note


def _reference(s: dict, n_cls: int, seed: int = 0) -> tuple[float, list[float]]:
    """The reference's mIoU on a set and per test image."""
    return score(s, n_cls, "reference", seed=seed)[:2]


def _reference_cms(s: dict, n_cls: int, seed: int = 0) -> list[np.ndarray]:
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    def feats(im):
        return multiscale_basic_features(im, sigma_min=1, sigma_max=16, channel_axis=-1 if im.ndim == 3 else None)

    x = np.concatenate([feats(im)[sc > 0] for im, sc in s["train"]])
    y = np.concatenate([sc[sc > 0] for _, sc in s["train"]])
    clf = RandomForestClassifier(n_estimators=50, max_depth=10, max_samples=0.05, n_jobs=-1, random_state=seed).fit(x, y)
    cms = []
    for _, im, gt in s["test"]:
        f = feats(im)
        cms.append(confusion_matrix(clf.predict(f.reshape(-1, f.shape[-1])).reshape(gt.shape), gt, n_cls))
    return cms


def _hrdv2_cms(s: dict, n_cls: int, method: str, budget: float, seed: int = 0) -> tuple[list[np.ndarray], str]:
    if method == "auto":
        seg = Segmenter("auto", auto_budget_s=budget, random_state=seed)
    else:
        filters, _, norm = method.partition("/")
        seg = Segmenter(FeatureConfig(filters=filters, normalise=norm or "auto"), random_state=seed)
    seg.fit([im for im, _ in s["train"]], [sc for _, sc in s["train"]])
    cms = [confusion_matrix(seg.predict(im), gt, n_cls) for _, im, gt in s["test"]]
    return cms, seg.auto_choice_.summary() if method == "auto" else ""


def _ranking(s: dict, n_cls: int, budget: float) -> list[tuple[str, float, float]]:
    """(candidate, CV mIoU, test mIoU) for every candidate auto scored, and its ensemble: how well
    the CV score (training scribbles only) ranks what the test images say. Every candidate is
    fitted as Segmenter fits it (same sampled pixels), on channels of one union feature map."""
    from hrdv2.features.auto import AutoChoice, candidates, fit_ensemble
    from hrdv2.features.classical import feature_names, resolve_filters
    from hrdv2.segmentation.sampling import balanced_sample
    from hrdv2.segmentation.segmenter import make_classifier

    seg = Segmenter("auto", auto_budget_s=budget).fit([im for im, _ in s["train"]], [sc for _, sc in s["train"]])
    cands = {m.key: m for m in candidates()}
    union = resolve_filters(",".join(f for m in cands.values() for f in m.filters))
    sig = max((m.sigmas for m in cands.values()), key=len)
    engine = Segmenter(FeatureConfig(filters=union, sigmas=sig, normalise=seg.auto_choice_.normalise))
    n_ch = 1 if s["train"][0][0].ndim == 2 else s["train"][0][0].shape[-1]
    index = {n: j for j, n in enumerate(feature_names(n_ch, sig, union))}
    picks = balanced_sample([sc for _, sc in s["train"]], seg.max_samples, 0)
    maps = [engine.featurise(im) for im, _ in s["train"]]
    x = np.concatenate([m.reshape(-1, m.shape[-1])[r] for m, (r, _) in zip(maps, picks)])
    y = np.concatenate([lab for _, lab in picks])
    tests = [(engine.featurise(im), gt) for _, im, gt in s["test"]]

    def score(model, cols) -> float:
        cms = [confusion_matrix(model.classes_[np.argmax(model.predict_proba(f.reshape(-1, f.shape[-1])[:, cols]), 1)]
                                .reshape(gt.shape), gt, n_cls) for f, gt in tests]
        return mean_iou(sum(cms))

    out = []
    for key, cv in seg.auto_choice_.scores.items():
        if key.startswith("ensemble("):
            members = tuple(cands[k] for k in key[len("ensemble("):-1].split("|"))
            filt = resolve_filters(",".join(f for m in members for f in m.filters))
            choice = AutoChoice("ensemble", filt, max((m.sigmas for m in members), key=len), "random_forest", "auto",
                                cv, "", members=members)
            cols = [index[n] for n in feature_names(n_ch, choice.sigmas, filt)]
            model = fit_ensemble(choice, x[:, cols], y, n_ch, 0)
        else:
            m = cands[key]
            cols = [index[n] for n in feature_names(n_ch, m.sigmas, m.filters)]
            model = make_classifier(m.classifier, 0, len(y), **dict(m.params)).fit(x[:, cols], y)
        out.append((key, cv, score(model, cols)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--sets", default=None, help="comma-separated subset of the set names")
    ap.add_argument("--budget", type=float, default=20.0, help="auto's time budget per set (s)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1 and summarise (see above)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"with --seeds: a comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--unseen", action="store_true",
                    help="test on the images after each set's usual test images, which no tuning looked at "
                         "(superalloy 2, isbi2012 2, horse 22, grabcut 2; the same training images)")
    ap.add_argument("--ranking", action="store_true",
                    help="instead: per set, every auto candidate's CV mIoU against its test mIoU")
    args = ap.parse_args()
    methods = tuple(m for m in METHODS if m in args.methods.split(","))
    if "reference" not in methods:
        raise SystemExit("--methods must include reference (every ratio is to it)")
    if args.seeds > 1:
        return _over_seeds(args, methods)
    sets = build_sets(args.data, unseen=args.unseen)
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    if args.ranking:
        from scipy.stats import spearmanr

        for name, s in sets.items():
            if "rounds" in s:
                print(f"{name}: skipped (--ranking compares candidates on one training split)", flush=True)
                continue
            rows = _ranking(s, n_classes(s), args.budget)
            rho = spearmanr([r[1] for r in rows], [r[2] for r in rows]).statistic
            best_cv, best_test = max(rows, key=lambda r: r[1]), max(rows, key=lambda r: r[2])
            print(f"{name}: Spearman(CV, test) {rho:.2f} over {len(rows)} candidates; best by CV {best_cv[0]} "
                  f"(test {best_cv[2]:.3f}), best on test {best_test[0]} ({best_test[2]:.3f})", flush=True)
            for key, cv, test in sorted(rows, key=lambda r: -r[1]):
                print(f"    {key:<72} CV {cv:.3f}  test {test:.3f}", flush=True)
        return
    results = {}
    for name, s in sets.items():
        n_cls = n_classes(s)
        row: dict = {"note": s["note"], "tuned": name in TUNED, "per_image": {}, "seconds": {}}
        for m in METHODS:
            t = time.perf_counter()
            row[m], per, note = score(s, n_cls, m, args.budget)
            if note:
                row["auto_choice"] = note
            row["seconds"][m] = round(time.perf_counter() - t, 1)
            row["per_image"][m] = [round(v, 3) for v in per]
        results[name] = row
        ratios = "  ".join(f"{m} {row[m]:.3f} ({row[m] / row['reference']:.2f})" for m in METHODS[1:])
        split = "unseen" if args.unseen else "tuned" if row["tuned"] else "held out"
        print(f"{name:<11}{split:<9} ref {row['reference']:.3f}  {ratios}", flush=True)
        print(f"{'':<20}per image: " + "; ".join(f"{m} {row['per_image'][m]}" for m in ("reference", "default",
                                                                                          "default/percentile",
                                                                                          "default/none")), flush=True)
        if "auto_choice" in row:
            print(f"{'':<20}{row['auto_choice']}", flush=True)
    print("\n| set | split | reference | default | default, plain stretch | default, no stretch | weka | auto | "
          "auto's choice (CV mIoU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        cells = " | ".join(f"{r[m]:.3f} ({r[m] / r['reference']:.2f})" for m in METHODS[1:])
        note = r.get("auto_choice", "")
        choice = note.replace("auto chose ", "").split(": CV")[0]
        if "CV mIoU " in note:  # a per-image set has one choice per image, and no single score
            choice += f" ({note.split('CV mIoU ')[-1].split(' ')[0]})"
        split = " (unseen images)" if args.unseen else "" if r["tuned"] else " (held out)"
        print(f"| {name}{split} | {r['note']} | {r['reference']:.3f} | {cells} | "
              f"{choice} |")
    for m in METHODS:
        print(f"mean {m}: {np.mean([r[m] for r in results.values()]):.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _over_seeds(args: argparse.Namespace, methods: tuple[str, ...]) -> None:
    """Every set and method at seeds 0..N-1; the summary table of means, spreads and wins."""
    scores: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        sets = build_sets(args.data, seed, args.unseen)
        for name, s in sets.items():
            if args.sets and name not in args.sets.split(","):
                continue
            n_cls = n_classes(s)
            row = scores.setdefault(name, {m: [] for m in methods})
            for m in methods:
                row[m].append(score(s, n_cls, m, args.budget, seed)[0])
            print(f"seed {seed} {name:<11} " + "  ".join(f"{m} {row[m][-1]:.3f}" for m in methods), flush=True)
    others = methods[1:]
    print("\n| set | reference | " + " | ".join(others) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in others) + " |")
    for name, row in scores.items():
        ref = np.asarray(row["reference"])
        cells = []
        for m in others:
            v = np.asarray(row[m])
            cells.append(f"{v.mean():.3f} ± {v.std():.3f} ({v.mean() / ref.mean():.3f}; >= ref on "
                         f"{int((v >= ref).sum())}/{len(v)})")
        split = "unseen images" if args.unseen else "tuning" if name in TUNED else "held out"
        print(f"| {name} ({split}) | {ref.mean():.3f} ± {ref.std():.3f} | " + " | ".join(cells) + " |")
    for m in methods:
        print(f"mean {m}: {np.mean([np.mean(r[m]) for r in scores.values()]):.3f}")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
