"""``features="auto"``: choose the classical filter preset, scales and classifier from the user's
own scribbles, by cross-validation that never scores a pixel whose stroke is in training.

Why: no single filter set wins everywhere (many fine-scale filters overfit the training image's
appearance; a texture boundary needs the structure tensor), and the user's scribbles are the
only labels there are. Folds hold out whole strokes (connected components of one class's
scribble, 8-connected; each class's strokes dealt round-robin to the folds, largest first) and,
with 2+ training images where every fold keeps all classes in training, also whole images; the
score is the mean of the two protocols (image folds alone are 2 noisy folds with 2 images). A
class drawn as one stroke is cut in two across its longest side, with a ``GAP``-px band between
the halves left out of both, so no scored pixel has a training neighbour from its own stroke.
A protocol's score is the mIoU of its summed held-out confusion matrices.

Every candidate is a channel subset of ONE feature map per image (the union of the candidates'
filters at the largest sigma list; every candidate's sigmas are a prefix of it, so a channel
has the same value in both), so featurising costs one pass per image and normalisation.
Candidates run in the order below until ``budget_s`` is spent (the first always runs); a later
candidate must beat the best by ``MARGIN`` to be chosen, so ties keep the earlier, simpler one
(logistic regression must also beat the best forest by ``LOGISTIC_MARGIN``). The intensity
normalisation is not searched: the per-image stretch won on every grey set measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi

from hrdv2.errors import HRDv2Error
from hrdv2.features.classical import DEFAULT_SIGMAS, feature_names, resolve_filters

# (label, filters, sigmas): default first; "smooth" is intensity + blur only (generalises across
# appearance changes between images); "fine" stops at sigma 4 for small structures
CANDIDATE_FEATURES: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("default", "default", DEFAULT_SIGMAS),
    ("weka", "weka", DEFAULT_SIGMAS),
    ("default+structure", "default,structure", DEFAULT_SIGMAS),
    ("smooth", "intensity,gaussian", DEFAULT_SIGMAS),
    ("fine", "default", (1.0, 2.0, 4.0)),
)
CANDIDATE_CLASSIFIERS: tuple[str, ...] = ("random_forest", "logistic")
DEFAULT_BUDGET_S = 20.0
MARGIN = 0.01  # mIoU a later candidate must gain to replace an earlier one
# ... and a logistic regression over the best forest: on the tuning sets, CV on scribbled pixels
# rated it far above its held-out mIoU (superalloy: CV 0.73, test 0.42 against the forest's 0.54),
# since scribbles sample region interiors and logistic regression errs near boundaries
LOGISTIC_MARGIN = 0.1
GAP = 8  # px left out between the two halves of a single-stroke class
CV_SAMPLES = 3000  # training pixels per fold (class-balanced): CV ranks candidates, it need not be exact
Progress = Callable[[int, int], None] | None


@dataclass
class AutoChoice:
    """What ``auto`` chose and why: the winner, its cross-validated mIoU, and every candidate's."""

    label: str
    filters: tuple[str, ...]
    sigmas: tuple[float, ...]
    classifier: str
    normalise: str
    cv_miou: float
    folds: str  # "3 stroke folds" / "2 image folds + 3 stroke folds"
    scores: dict[str, float] = field(default_factory=dict)  # "label/classifier[/normalise]" -> CV mIoU
    skipped: int = 0  # candidates not run within the budget
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"auto chose {self.label} filters (sigmas {','.join(f'{s:g}' for s in self.sigmas)}) + "
                f"{self.classifier}, normalise {self.normalise}: CV mIoU {self.cv_miou:.3f} over {self.folds} "
                f"({len(self.scores)} candidates in {self.seconds:.1f} s"
                f"{f', {self.skipped} skipped by the time budget' if self.skipped else ''})")


# --------------------------------------------------------------------------- folds

def _split_single(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of one stroke across its longest side, a GAP-px band between them dropped."""
    ys, xs = np.nonzero(mask)
    coord, grid = (xs, np.arange(mask.shape[1])[None, :]) if np.ptp(xs) >= np.ptp(ys) else \
        (ys, np.arange(mask.shape[0])[:, None])
    mid = float(np.median(coord))
    return mask & (grid < mid - GAP / 2), mask & (grid > mid + GAP / 2)


def stroke_folds(scribbles: Sequence[np.ndarray], n_folds: int = 3) -> list[list[np.ndarray]]:
    """Per fold, per image: int8 map, 1 = training pixel, 2 = held-out pixel, 0 = unused."""
    classes = sorted({int(c) for s in scribbles for c in np.unique(s) if c > 0})
    comps: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in classes}  # class -> (image, mask)
    for i, s in enumerate(scribbles):
        for c in classes:
            lab, n = ndi.label(s == c, structure=np.ones((3, 3)))
            comps[c].extend((i, lab == k) for k in range(1, n + 1))
    k = max(2, min(n_folds, max(len(v) for v in comps.values())))
    folds = [[np.zeros(s.shape, np.int8) for s in scribbles] for _ in range(k)]
    for c, parts in comps.items():
        if len(parts) == 1:  # one stroke: its halves, both ways round
            i, m = parts[0]
            a, b = _split_single(m)
            parts = [(i, a), (i, b)]
        parts.sort(key=lambda p: -int(p[1].sum()))
        for j, (i, m) in enumerate(parts):
            for f in range(k):
                held = j % k == f if len(parts) >= k else j == f % len(parts)
                folds[f][i][m] = 2 if held else 1
    return folds


def image_folds(scribbles: Sequence[np.ndarray]) -> list[list[np.ndarray]] | None:
    """Leave-one-image-out folds, or None if some fold's training images would miss a class."""
    classes = {int(c) for s in scribbles for c in np.unique(s) if c > 0}
    if len(scribbles) < 2:
        return None
    folds = []
    for held in range(len(scribbles)):
        rest = {int(c) for i, s in enumerate(scribbles) if i != held for c in np.unique(s) if c > 0}
        if rest != classes:
            return None
        folds.append([np.where(s > 0, 2 if i == held else 1, 0).astype(np.int8) for i, s in enumerate(scribbles)])
    return folds


# --------------------------------------------------------------------------- scoring

def _balanced(y: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    per = max(1, cap // max(1, len(classes)))
    keep = [rng.permutation(np.flatnonzero(y == c))[:per] for c in classes]
    return np.sort(np.concatenate(keep))


def cv_score(rows: list[np.ndarray], labels: list[np.ndarray], roles: list[list[np.ndarray]],
             classifier: str, n_classes: int, random_state: int = 0) -> float:
    """mIoU of the summed held-out confusion matrices. ``rows[i]``: (N_i, F) features of image i's
    scribbled pixels, ``labels[i]`` their classes, ``roles[fold][i]`` their role in the fold."""
    from hrdv2.metrics.segmentation import mean_iou
    from hrdv2.segmentation.segmenter import make_classifier

    rng = np.random.default_rng(random_state)
    cm = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    for fold in roles:
        tr = [r == 1 for r in fold]
        te = [r == 2 for r in fold]
        x = np.concatenate([rw[m] for rw, m in zip(rows, tr)])
        y = np.concatenate([lb[m] for lb, m in zip(labels, tr)])
        xt = np.concatenate([rw[m] for rw, m in zip(rows, te)])
        yt = np.concatenate([lb[m] for lb, m in zip(labels, te)])
        if len(np.unique(y)) < 2 or len(yt) == 0:
            continue
        pick = _balanced(y, CV_SAMPLES, rng)
        # a 20-tree forest ranks candidates like the final 40-tree one at half the cost
        params = {"n_jobs": 1, "n_estimators": 20} if classifier == "random_forest" else {}
        model = make_classifier(classifier, random_state, **params)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            model.fit(x[pick], y[pick])
            pred = model.predict(xt)
        np.add.at(cm, (yt, pred), 1)
    return mean_iou(cm) if cm.sum() else float("nan")


def choose(images: Sequence[np.ndarray], scribbles: Sequence[np.ndarray], featurise: Callable,
           *, budget_s: float = DEFAULT_BUDGET_S, normalisations: Sequence[str] | None = None,
           random_state: int = 0, progress: Progress = None) -> tuple[AutoChoice, dict]:
    """Run the candidates; return the choice and, per normalisation, the union feature maps
    (``featurise(image, filters, sigmas, normalise)`` -> (H, W, F)) so the final fit reuses them."""
    t0 = time.perf_counter()
    scribbles = [np.asarray(s) for s in scribbles]
    n_classes = int(max(int(s.max()) for s in scribbles))
    by_image = image_folds(scribbles)
    by_stroke = stroke_folds(scribbles)
    protocols = [by_stroke] if by_image is None else [by_image, by_stroke]
    folds = f"{len(by_stroke)} stroke folds" if by_image is None else \
        f"{len(by_image)} image folds + {len(by_stroke)} stroke folds"
    if normalisations is None:  # not searched: the per-image stretch won on every grey set (docs/segmentation.md)
        normalisations = ("auto",)
    union = resolve_filters(",".join(f for _, f, _ in CANDIDATE_FEATURES))
    sigmas = max((s for _, _, s in CANDIDATE_FEATURES), key=len)
    names = feature_names(1 if images[0].ndim == 2 else images[0].shape[-1], sigmas, union)
    index = {n: j for j, n in enumerate(names)}
    labels = [s[s > 0].astype(np.int64) for s in scribbles]
    protocols_px = [[[r[s > 0] for r, s in zip(fold, scribbles)] for fold in roles] for roles in protocols]
    maps: dict[str, list[np.ndarray]] = {}
    plan = [(n, c, f) for n in normalisations for f in CANDIDATE_FEATURES for c in CANDIDATE_CLASSIFIERS]
    best: tuple[float, tuple] | None = None
    best_forest = -1.0
    scores: dict[str, float] = {}
    skipped = 0
    for step, (norm, clf, (label, filt, sig)) in enumerate(plan):
        if best is not None and time.perf_counter() - t0 > budget_s:
            skipped = len(plan) - step
            break
        if norm not in maps:
            maps[norm] = [featurise(im, union, sigmas, norm) for im in images]
        cols = [index[n] for n in feature_names(1 if images[0].ndim == 2 else images[0].shape[-1], sig, filt)]
        rows = [m.reshape(-1, m.shape[-1])[(s > 0).ravel()][:, cols] for m, s in zip(maps[norm], scribbles)]
        score = float(np.mean([cv_score(rows, labels, px, clf, n_classes, random_state) for px in protocols_px]))
        key = f"{label}/{clf}" + (f"/{norm}" if len(normalisations) > 1 else "")
        scores[key] = float(score)
        need = MARGIN if clf == "random_forest" else max(MARGIN, best_forest + LOGISTIC_MARGIN - (best or (0.0,))[0])
        if np.isfinite(score) and (best is None or score > best[0] + need):
            best = (float(score), (label, filt, sig, clf, norm))
        if clf == "random_forest" and np.isfinite(score):
            best_forest = max(best_forest, float(score))
        if progress:
            progress(step + 1, len(plan))
    if best is None:
        raise HRDv2Error("auto features: no candidate could be scored (each fold needs training strokes of two "
                         "classes and a held-out stroke); paint at least two strokes of two classes.")
    label, filt, sig, clf, norm = best[1]
    choice = AutoChoice(label=label, filters=resolve_filters(filt), sigmas=tuple(sig), classifier=clf, normalise=norm,
                        cv_miou=best[0], folds=folds, scores=scores, skipped=skipped,
                        seconds=time.perf_counter() - t0)
    return choice, {"maps": maps, "index": index}
