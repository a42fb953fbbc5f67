"""How ``auto`` turns its cross-validated candidates into a choice, compared on test images: the
shipped rule (``hrdv2.features.auto.select``), variants of it, and the rule it replaced, all on the
same candidate runs of ``benchmarks/classical_quality.py``'s sets and seeds.

Per set and seed: the scribbles and splits of ``classical_quality.build_sets(seed)``; ``auto.choose``
with an unlimited budget (every candidate scored); every forest candidate fitted once as an
ensemble member (``ENSEMBLE_TREES`` trees, the final fit's pixels, ``random_state=seed``) and every
candidate as Segmenter fits it on its own, their test probabilities kept. A rule's single choice is
scored as the model on its own; an ensemble by its members' test probabilities weighted as
``auto.member_weights`` says, which is what ``fit_ensemble``'s model predicts (the previous
rule's ensembles had 40-tree members, here ``ENSEMBLE_TREES``: the same members, fewer trees);
``grabcut-per-image`` (a model per image) is left out. The reference (scikit-image
``multiscale_basic_features`` + forest) is run on the same split.

Usage: python benchmarks/auto_rules.py [--sets a,b] [--seeds 5]
(about 1 minute per set and seed on 2 idle CPUs)
"""

from __future__ import annotations

import argparse
import contextlib
import math
from unittest import mock

import numpy as np
from classical_quality import DATA, _reference, build_sets

from hrdv2.features import auto
from hrdv2.features.classical import feature_names
from hrdv2.features.sets import FeatureConfig
from hrdv2.metrics.segmentation import confusion_matrix, mean_iou
from hrdv2.segmentation import Segmenter
from hrdv2.segmentation.sampling import balanced_sample
from hrdv2.segmentation.segmenter import make_classifier


def previous_rule(runs: list, n_classes: int) -> tuple[list, list[float]]:
    """The rule before 2026-12-02 16:47: the first candidate in run order that no later one beats
    by 0.01 (logistic regression also by 0.1 over the best forest), replaced by the average of the
    3 best forests unless the single one beats that average by more than 0.01."""
    margin, best, best_forest = 0.01, None, -1.0
    for run in runs:
        score, cand = run[0], run[1]
        forest = cand.classifier == "random_forest"
        need = margin if forest else max(margin, best_forest + auto.LOGISTIC_MARGIN - (best[0] if best else 0.0))
        if np.isfinite(score) and (best is None or score > best[0] + need):
            best = run
        if forest and np.isfinite(score):
            best_forest = max(best_forest, score)
    top = sorted((r for r in runs if r[1].classifier == "random_forest" and np.isfinite(r[0])),
                 key=lambda r: -r[0])[:3]
    if len(top) >= 2 and auto._ensemble_score([r[3] for r in top], n_classes) >= best[0] - margin:
        return top, [1 / len(top)] * len(top)
    return [best], [1.0]


def _with(runs: list, n: int, **constants) -> tuple[list, list[float]]:
    """``auto.select``'s choice and its members' weights, with some of auto's constants changed."""
    with mock.patch.multiple(auto, **constants) if constants else contextlib.nullcontext():
        chosen = auto.select(runs, n)[0]
        return chosen, auto.member_weights(chosen)


RULES = {
    "shipped": lambda runs, n: _with(runs, n),
    "forests alone (share 0; the rule of 2026-12-02 16:47)": lambda runs, n: _with(runs, n, LINEAR_SHARE=0.0),
    "logistic share 0.5": lambda runs, n: _with(runs, n, LINEAR_SHARE=0.5),
    "no delta (top 5 forests), with the share": lambda runs, n: _with(runs, n, ENSEMBLE_DELTA=math.inf),
    "single best forest, with the share": lambda runs, n: _with(runs, n, ENSEMBLE_K=1),
    "previous (pick one unless the top-3 average ties)": previous_rule,
}


def collect(s: dict, seed: int) -> dict:
    """The candidate runs and every candidate's test probabilities for one set and seed."""
    images = [im for im, _ in s["train"]]
    scribbles = [np.asarray(sc) for _, sc in s["train"]]
    n_cls = max(int(max(sc.max() for sc in scribbles)), int(max(g.max() for _, _, g in s["test"])))
    engines: list[Segmenter] = []  # the union-map featuriser choose used, kept for the test images

    def featurise(image, filters, sigmas, normalise):
        engines.append(Segmenter(FeatureConfig(filters=filters, sigmas=sigmas, normalise=normalise)))
        return engines[-1].featurise(image)

    _, found = auto.choose(images, scribbles, featurise, budget_s=math.inf, random_state=seed)
    engine = engines[-1]
    n_ch = 1 if images[0].ndim == 2 else images[0].shape[-1]
    maps = found["maps"][found["runs"][0][2]]  # the one normalisation auto used (lab for colour)
    picks = balanced_sample(scribbles, Segmenter().max_samples, seed)  # the final fit's pixels
    x = np.concatenate([m.reshape(-1, m.shape[-1])[rows] for m, (rows, _) in zip(maps, picks)])
    y = np.concatenate([lab for _, lab in picks])
    tests = [(engine.featurise(im), gt) for _, im, gt in s["test"]]

    def test_probs(model, cols) -> list[np.ndarray]:
        out = []
        for f, gt in tests:
            p = np.zeros((gt.size, n_cls + 1), np.float32)
            p[:, model.classes_] = model.predict_proba(f.reshape(-1, f.shape[-1])[:, cols])
            out.append(p)
        return out

    probs, alone = {}, {}  # key -> test probabilities as an ensemble member / as the model on its own
    for run in found["runs"]:
        cand = run[1]
        cols = [found["index"][n] for n in feature_names(n_ch, cand.sigmas, cand.filters)]
        model = make_classifier(cand.classifier, seed, len(y), **dict(cand.params)).fit(x[:, cols], y)
        alone[cand.key] = test_probs(model, cols)
        if cand.classifier == "random_forest":
            member = {**dict(cand.params), "n_estimators": auto.ENSEMBLE_TREES}
            probs[cand.key] = test_probs(make_classifier(cand.classifier, seed, len(y), **member).fit(x[:, cols], y),
                                         cols)
    n_classes = int(max(int(sc.max()) for sc in scribbles))
    return {"runs": found["runs"], "probs": probs, "alone": alone, "gts": [gt for _, _, gt in s["test"]],
            "n_cls": n_cls, "n_classes": n_classes, "ref": _reference(s, n_cls, seed)[0]}


def rule_miou(data: dict, pick: tuple[list, list[float]]) -> float:
    """A single choice is scored as the model Segmenter fits for it; an ensemble as its members'
    weighted average (forests as ensemble members, a logistic regression as fitted on its own)."""
    chosen, weights = pick
    cms = []
    for i, gt in enumerate(data["gts"]):
        if len(chosen) == 1:
            p = data["alone"][chosen[0][1].key][i]
        else:
            p = sum(w * (data["probs"] if r[1].classifier == "random_forest" else data["alone"])[r[1].key][i]
                    for w, r in zip(weights, chosen))
        cms.append(confusion_matrix(np.argmax(p, axis=1).reshape(gt.shape), gt, data["n_cls"]))
    return mean_iou(sum(cms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=None, help="comma-separated subset of classical_quality's set names")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for seed in range(args.seeds):
        for name, s in build_sets(DATA, seed).items():
            if (args.sets and name not in args.sets.split(",")) or "rounds" in s:  # one model per image: not here
                continue
            data = collect(s, seed)
            row = results.setdefault(name, {r: [] for r in RULES})
            cells = []
            for rule, pick in RULES.items():
                value = rule_miou(data, pick(data["runs"], data["n_classes"]))
                row[rule].append((value, data["ref"]))
                cells.append(f"{value:.3f}")
            print(f"seed {seed} {name:<11} reference {data['ref']:.3f}  " + "  ".join(cells), flush=True)
    print("\nmean test mIoU over the seeds (ratio to the reference's mean; seeds at or above it)\n")
    print("| rule | " + " | ".join(results) + " | mean |")
    print("| --- | " + " | ".join("---" for _ in results) + " | --- |")
    refs = {n: np.mean([ref for _, ref in row["shipped"]]) for n, row in results.items()}
    print("| reference | " + " | ".join(f"{v:.3f}" for v in refs.values()) + f" | {np.mean(list(refs.values())):.3f} |")
    for rule in RULES:
        cells = []
        for name, row in results.items():
            v = np.array([a for a, _ in row[rule]])
            wins = sum(a >= b for a, b in row[rule])
            cells.append(f"{v.mean():.3f} ({v.mean() / refs[name]:.3f}; {wins}/{len(v)})")
        mean = np.mean([np.mean([a for a, _ in row[rule]]) for row in results.values()])
        print(f"| {rule} | " + " | ".join(cells) + f" | {mean:.3f} |")
    shipped = np.array([a for row in results.values() for a, _ in row["shipped"]])
    for rule in list(RULES)[1:]:
        d = shipped - np.array([a for row in results.values() for a, _ in row[rule]])
        t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 and d.std() > 0 else float("nan")
        print(f"shipped - {rule}: mean {d.mean():+.4f} over {len(d)} runs; better on {(d > 1e-4).sum()}, "
              f"worse on {(d < -1e-4).sum()}; paired t {t:.2f}")


if __name__ == "__main__":
    main()
