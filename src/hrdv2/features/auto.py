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
Candidates run in :func:`candidates` order until ``budget_s`` is spent (the first always runs).
Then the forests that CV cannot tell apart from the best one (within ``ENSEMBLE_DELTA`` mIoU of
it, at most ``ENSEMBLE_K``, ties kept in candidate order) are averaged, and a single forest is
used only when no other is that close; logistic regression replaces them only if it beats them
by ``LOGISTIC_MARGIN``. Why average instead of picking: on the benchmark's sets CV ranked single
candidates poorly (Spearman with the test ranking 0.64 on isbi2012, -0.45 on grabcut), and over
its 7 sets x 5 seeds (``benchmarks/auto_rules.py``) averaging the close forests scored a mean
test mIoU of 0.607, against 0.602 for the earlier pick-one-unless-the-top-3-average-ties rule and
0.598 for the single best forest on the same candidates (docs/segmentation.md); the delta keeps a
clearly best family (the structure tensor on a texture boundary) from being diluted by forests
that cannot see it. The best logistic regression by CV is blended in at ``LINEAR_SHARE`` of the
probability: forests transfer worst to test images unlike the training ones (a different cell
line, other photos), a linear model extrapolates more smoothly, and CV on the training scribbles
cannot see that shift (mean test mIoU 0.614 against 0.607, every set at or above the reference;
docs/segmentation.md). The forests are saved as one RandomForestClassifier, with the logistic
regression as a soft-voting classifier of the two (:func:`fit_ensemble`).
The intensity normalisation is not searched: the per-image stretch won on every grey set measured,
and colour images are featurised in CIE Lab (``COLOUR_NORMALISE``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi

from hrdv2.errors import HRDv2Error
from hrdv2.features.classical import DEFAULT_SIGMAS, feature_names, resolve_filters

# (label, filters, sigmas): default first; "basic" is scikit-image's multiscale_basic_features kind
# (blur, gradient, Hessian eigenvalues; its tutorial's recipe is the benchmark's reference); "smooth"
# is intensity + blur only (generalises across appearance changes between images); "fine" stops at
# sigma 4 for small structures
CANDIDATE_FEATURES: tuple[tuple[str, str, tuple[float, ...]], ...] = (
    ("default", "default", DEFAULT_SIGMAS),
    ("basic", "gaussian,gradient,hessian", DEFAULT_SIGMAS),
    ("weka", "weka", DEFAULT_SIGMAS),
    ("default+structure", "default,structure", DEFAULT_SIGMAS),
    ("smooth", "intensity,gaussian", DEFAULT_SIGMAS),
    ("fine", "default", (1.0, 2.0, 4.0)),
)
# (label, Segmenter classifier, its parameters). "subsampled_forest" is the scikit-image tutorial's
# forest: 50 trees, each on a 5 % bootstrap sample; the small samples decorrelate the trees and
# regularise (grabcut, 1693 training pixels: test mIoU 0.380 against 0.368 for the default forest
# on the same features; tcell 0.393 against 0.384; measured with benchmarks/classical_quality.py's sets)
CANDIDATE_CLASSIFIERS: tuple[tuple[str, str, dict], ...] = (
    ("random_forest", "random_forest", {}),
    ("subsampled_forest", "random_forest", {"n_estimators": 50, "max_samples": 0.05}),
    ("logistic", "logistic", {}),
)
DEFAULT_BUDGET_S = 20.0
# normalise 'auto' of a colour image means this here: lightness and the two colour axes as separate
# channels. benchmarks/classical_quality.py, seeds 0-4, auto's test mIoU in Lab against RGB: one
# model per GrabCut photo 0.690 against 0.634 (mean per-photo mIoU; reference 0.586); across photos
# level within the seeds' spread (grabcut 0.331 against 0.337, horse 0.712 against 0.707)
COLOUR_NORMALISE = "lab"
# a logistic regression replaces the forests only by this CV margin: on the tuning sets, CV on
# scribbled pixels rated it far above its held-out mIoU (superalloy: CV 0.73, test 0.42 against the
# forest's 0.54), since scribbles sample region interiors and logistic regression errs near boundaries
LOGISTIC_MARGIN = 0.1
ENSEMBLE_K = 5  # at most this many forests averaged (the best by CV score) ...
ENSEMBLE_DELTA = 0.05  # ... each within this CV mIoU of the best forest
ENSEMBLE_TREES = 24  # trees per ensemble member: equal counts weight the members equally (<= 120 in all)
# the chosen forests' averaged probabilities are blended with the best logistic regression's (by CV,
# same normalisation) at this weight: a linear model extrapolates smoothly to images unlike the
# training ones, where forests' piecewise-constant leaves do not (benchmarks/auto_rules.py, 7 sets x
# 5 seeds, test mIoU: mean 0.614 against 0.607 forests alone; tcell 0.443 against 0.416, grabcut
# 0.365 against 0.331, superalloy 0.569 against 0.593; a share of 0.5 lost superalloy and horse).
# Not chosen by CV: CV on scribbles rated the blend no better than the forests (docs/segmentation.md)
LINEAR_SHARE = 0.25
GAP = 8  # px left out between the two halves of a single-stroke class
CV_SAMPLES = 3000  # training pixels per fold (class-balanced): CV ranks candidates, it need not be exact
CV_TEST_SAMPLES = 8000  # held-out pixels scored per fold (uniform subsample): prediction dominated CV time
Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class Member:
    """One candidate: a channel subset (filters at sigmas) and a classifier with its parameters."""

    label: str
    filters: tuple[str, ...]
    sigmas: tuple[float, ...]
    classifier_label: str
    classifier: str
    params: tuple[tuple[str, object], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.label}/{self.classifier_label}"


# one scored candidate: (CV mIoU, candidate, normalisation, its held-out probabilities per protocol and fold)
Run = tuple[float, Member, str, list]


@dataclass
class AutoChoice:
    """What ``auto`` chose and why: the winner, its cross-validated mIoU, and every candidate's.
    An ensemble has ``members`` (its forests, averaged) and the union of their filters."""

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
    classifier_label: str = ""
    classifier_params: dict = field(default_factory=dict)
    members: tuple[Member, ...] = ()

    def describe(self) -> str:
        """The choice in words, e.g. ``default filters (sigmas 1,2,4,8,16) + random_forest``."""
        if self.members:
            forests = [f"{m.label} + {m.classifier_label}" for m in self.members if m.classifier == "random_forest"]
            linear = [f"{m.label} + {m.classifier_label}" for m in self.members if m.classifier != "random_forest"]
            share = f" blended with {linear[0]} ({LINEAR_SHARE:g} of the probability)" if linear else ""
            return ("an ensemble of " + ", ".join(forests) + share +
                    f" (sigmas {','.join(f'{s:g}' for s in self.sigmas)})")
        return (f"{self.label} filters (sigmas {','.join(f'{s:g}' for s in self.sigmas)}) + "
                f"{self.classifier_label or self.classifier}")

    def summary(self) -> str:
        return (f"auto chose {self.describe()}, normalise {self.normalise}: CV mIoU {self.cv_miou:.3f} over "
                f"{self.folds} ({len(self.scores)} candidates in {self.seconds:.1f} s"
                f"{f', {self.skipped} skipped by the time budget' if self.skipped else ''})")


def candidates() -> list[Member]:
    """Every candidate in the order they run: the forests first (feature sets in order, each with
    both forests), so a tight budget still leaves forests to ensemble, except that the first
    feature set's logistic regression runs right after its forests (a tight budget still leaves a
    logistic regression to blend in), then the other logistic regressions."""
    every = [Member(label, resolve_filters(filt), tuple(sig), cl, c, tuple(sorted(kw.items())))
             for label, filt, sig in CANDIDATE_FEATURES for cl, c, kw in CANDIDATE_CLASSIFIERS]
    first = CANDIDATE_FEATURES[0][0]
    # stable: keeps the table's order within each group
    return sorted(every, key=lambda m: m.classifier != "random_forest" and m.label != first)


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


def cv_predictions(rows: list[np.ndarray], labels: list[np.ndarray], roles: list[list[np.ndarray]],
                   classifier: str, n_classes: int, random_state: int = 0,
                   params: dict | None = None, final_samples: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per fold: (held-out classes, (N, n_classes + 1) held-out probabilities by class id).
    ``rows[i]``: (N_i, F) features of image i's scribbled pixels, ``labels[i]`` their classes,
    ``roles[fold][i]`` their role in the fold. Kept so the ensemble is scored without refitting.
    A forest with a fractional ``max_samples`` gets, per tree, as many pixels as the final fit on
    ``final_samples`` pixels will give it (CV trains on fewer: 5 % of them would be a different,
    much more regularised model)."""
    from threadpoolctl import threadpool_limits

    from hrdv2.segmentation.segmenter import make_classifier

    rng = np.random.default_rng(random_state)
    out = []
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
        if len(yt) > CV_TEST_SAMPLES:  # a uniform subsample keeps the class proportions (in expectation)
            keep = np.sort(rng.choice(len(yt), CV_TEST_SAMPLES, replace=False))
            xt, yt = xt[keep], yt[keep]
        kw = dict(params or {})
        if isinstance(kw.get("max_samples"), float) and final_samples:
            kw["max_samples"] = min(1.0, kw["max_samples"] * final_samples / len(pick))
        if classifier == "random_forest":  # a 20-tree forest ranks candidates like the final 40-tree one
            kw = {"n_estimators": 20, **kw, "n_jobs": 1}
        model = make_classifier(classifier, random_state, **kw)
        with threadpool_limits(1, user_api="blas"):
            model.fit(x[pick], y[pick])
            proba = np.zeros((len(yt), n_classes + 1), np.float32)
            proba[:, model.classes_] = model.predict_proba(xt)
        out.append((yt, proba))
    return out


def _miou(preds: list[tuple[np.ndarray, np.ndarray]], n_classes: int) -> float:
    """mIoU of the summed held-out confusion matrices of one protocol's folds."""
    from hrdv2.metrics.segmentation import mean_iou

    cm = np.zeros((n_classes + 1, n_classes + 1), np.int64)
    for yt, proba in preds:
        np.add.at(cm, (yt, np.argmax(proba, axis=1)), 1)
    return mean_iou(cm) if cm.sum() else float("nan")


def cv_score(rows: list[np.ndarray], labels: list[np.ndarray], roles: list[list[np.ndarray]],
             classifier: str, n_classes: int, random_state: int = 0, params: dict | None = None,
             final_samples: int | None = None) -> float:
    """mIoU of the summed held-out confusion matrices (see :func:`cv_predictions`)."""
    return _miou(cv_predictions(rows, labels, roles, classifier, n_classes, random_state, params, final_samples),
                 n_classes)


def _ensemble_score(preds: list[list[list[tuple[np.ndarray, np.ndarray]]]], n_classes: int,
                    weights: Sequence[float] | None = None) -> float:
    """CV mIoU of the members' averaged probabilities (``weights``: default equal):
    ``preds[member][protocol][fold]``."""
    w = [1.0 / len(preds)] * len(preds) if weights is None else list(weights)
    scores = []
    for p in range(len(preds[0])):
        folds = [(preds[0][p][f][0], sum(wm * m[p][f][1] for wm, m in zip(w, preds)))
                 for f in range(len(preds[0][p]))]
        scores.append(_miou(folds, n_classes))
    return float(np.mean(scores))


def choose(images: Sequence[np.ndarray], scribbles: Sequence[np.ndarray], featurise: Callable,
           *, budget_s: float = DEFAULT_BUDGET_S, normalisations: Sequence[str] | None = None,
           random_state: int = 0, progress: Progress = None, max_samples: int = 20_000) -> tuple[AutoChoice, dict]:
    """Run the candidates, then :func:`select`; return the choice and, per normalisation, the union
    feature maps (``featurise(image, filters, sigmas, normalise)`` -> (H, W, F)) so the final fit
    reuses them, and the scored runs. ``max_samples``: the final fit's pixel cap. ``normalisations``
    (default ``("auto",)``): ``auto`` means :data:`COLOUR_NORMALISE` for RGB images."""
    t0 = time.perf_counter()
    scribbles = [np.asarray(s) for s in scribbles]
    n_classes = int(max(int(s.max()) for s in scribbles))
    by_image = image_folds(scribbles)
    by_stroke = stroke_folds(scribbles)
    protocols = [by_stroke] if by_image is None else [by_image, by_stroke]
    folds = f"{len(by_stroke)} stroke folds" if by_image is None else \
        f"{len(by_image)} image folds + {len(by_stroke)} stroke folds"
    n_ch = 1 if images[0].ndim == 2 else images[0].shape[-1]
    if normalisations is None:  # not searched: the per-image stretch won on every grey set (docs/segmentation.md)
        normalisations = ("auto",)
    if n_ch == 3:
        normalisations = tuple(COLOUR_NORMALISE if n == "auto" else n for n in normalisations)
    union = resolve_filters(",".join(f for _, f, _ in CANDIDATE_FEATURES))
    sigmas = max((s for _, _, s in CANDIDATE_FEATURES), key=len)
    index = {n: j for j, n in enumerate(feature_names(n_ch, sigmas, union))}
    labels = [s[s > 0].astype(np.int64) for s in scribbles]
    final_samples = min(int(sum(len(lb) for lb in labels)), int(max_samples))
    protocols_px = [[[r[s > 0] for r, s in zip(fold, scribbles)] for fold in roles] for roles in protocols]
    maps: dict[str, list[np.ndarray]] = {}
    plan = [(n, m) for n in normalisations for m in candidates()]
    runs: list[Run] = []  # in run order
    scores: dict[str, float] = {}
    skipped = 0
    for step, (norm, cand) in enumerate(plan):
        if any(np.isfinite(r[0]) for r in runs) and time.perf_counter() - t0 > budget_s:
            skipped = len(plan) - step
            break
        if norm not in maps:
            maps[norm] = [featurise(im, union, sigmas, norm) for im in images]
        cols = [index[n] for n in feature_names(n_ch, cand.sigmas, cand.filters)]
        rows = [m.reshape(-1, m.shape[-1])[(s > 0).ravel()][:, cols] for m, s in zip(maps[norm], scribbles)]
        preds = [cv_predictions(rows, labels, px, cand.classifier, n_classes, random_state, dict(cand.params),
                                final_samples) for px in protocols_px]
        score = float(np.mean([_miou(p, n_classes) for p in preds]))
        scores[cand.key + (f"/{norm}" if len(normalisations) > 1 else "")] = score
        runs.append((score, cand, norm, preds))
        if progress:
            progress(step + 1, len(plan))
    if not any(np.isfinite(r[0]) for r in runs):
        raise HRDv2Error("auto features: no candidate could be scored (each fold needs training strokes of two "
                         "classes and a held-out stroke); paint at least two strokes of two classes.")
    chosen, cv = select(runs, n_classes)
    _, cand, norm, _ = chosen[0]
    if len(chosen) == 1:
        choice = AutoChoice(label=cand.label, filters=cand.filters, sigmas=cand.sigmas, classifier=cand.classifier,
                            normalise=norm, cv_miou=cv, folds=folds, scores=scores, skipped=skipped,
                            classifier_label=cand.classifier_label, classifier_params=dict(cand.params))
    else:
        members = tuple(r[1] for r in chosen)
        scores["ensemble(" + "|".join(m.key for m in members) + ")"] = cv
        choice = AutoChoice(label="ensemble", filters=resolve_filters(",".join(f for m in members for f in m.filters)),
                            sigmas=max((m.sigmas for m in members), key=len), classifier="random_forest",
                            normalise=norm, cv_miou=cv, folds=folds, scores=scores, skipped=skipped,
                            classifier_label="ensemble", members=members)
    choice.seconds = time.perf_counter() - t0
    return choice, {"maps": maps, "index": index, "runs": runs}


def select(runs: Sequence[Run], n_classes: int) -> tuple[list[Run], float]:
    """The chosen runs and their CV mIoU: every forest within ``ENSEMBLE_DELTA`` of the best forest,
    at most ``ENSEMBLE_K``, best first (``sorted`` is stable: ties keep candidate order), then the
    best logistic regression of the same normalisation, blended in at ``LINEAR_SHARE``; a logistic
    regression alone if it beats the forests by ``LOGISTIC_MARGIN``. Kept apart from :func:`choose`
    so the benchmark can compare rules on the same runs."""
    scored = [r for r in runs if np.isfinite(r[0])]
    forests = [r for r in scored if r[1].classifier == "random_forest"]
    others = [r for r in scored if r[1].classifier != "random_forest"]
    chosen: list[Run] = []
    cv = -np.inf
    if forests:
        lead = max(forests, key=lambda r: r[0])
        chosen = sorted((r for r in forests if r[2] == lead[2] and r[0] >= lead[0] - ENSEMBLE_DELTA),
                        key=lambda r: -r[0])[:ENSEMBLE_K]
        cv = chosen[0][0] if len(chosen) == 1 else _ensemble_score([r[3] for r in chosen], n_classes)
    if others:
        rival = max(others, key=lambda r: r[0])
        if not chosen or rival[0] > cv + LOGISTIC_MARGIN:
            return [rival], float(rival[0])
        partner = [r for r in others if r[2] == chosen[0][2]]
        if partner and LINEAR_SHARE > 0:
            chosen = chosen + [max(partner, key=lambda r: r[0])]
            cv = _ensemble_score([r[3] for r in chosen], n_classes, member_weights(chosen))
    return chosen, float(cv)


def member_weights(members: Sequence[Run] | Sequence[Member]) -> list[float]:
    """Each ensemble member's weight in the averaged probabilities: the forests share
    ``1 - LINEAR_SHARE`` equally, a logistic regression (at most one, last) gets ``LINEAR_SHARE``."""
    kinds = [(m[1] if isinstance(m, tuple) else m).classifier for m in members]
    n_forests = sum(k == "random_forest" for k in kinds)
    if n_forests == len(kinds):
        return [1.0 / len(kinds)] * len(kinds)
    return [(1.0 - LINEAR_SHARE) / n_forests if k == "random_forest" else LINEAR_SHARE for k in kinds]


# --------------------------------------------------------------------------- the ensemble model

def _remap_tree(est, cols: np.ndarray, width: int) -> None:
    """Make a tree fitted on columns ``cols`` of a ``width``-channel map read that map directly."""
    from sklearn.tree._tree import Tree

    state = est.tree_.__getstate__()
    nodes = state["nodes"].copy()
    inner = nodes["left_child"] != -1
    nodes["feature"][inner] = cols[nodes["feature"][inner]]
    tree = Tree(width, np.atleast_1d(np.asarray(est.n_classes_, dtype=np.intp)), int(est.n_outputs_))
    tree.__setstate__({**state, "nodes": nodes})
    est.tree_ = tree
    est.n_features_in_ = width


def fit_ensemble(choice: AutoChoice, x: np.ndarray, y: np.ndarray, n_channels: int,
                 random_state: int | None = 0):
    """The members fitted on their own channels of ``x`` (the union map, ``feature_names(
    n_channels, choice.sigmas, choice.filters)``) and re-indexed to the union: the forests as one
    RandomForestClassifier of all their trees (equal tree counts: its ``predict_proba`` is the
    forests' average) and a logistic regression member as a pipeline whose coefficients are zero
    off its channels; the two as a soft-voting classifier weighted by :func:`member_weights`.
    Only scikit-learn types, so the model file holds nothing new to trust."""
    from hrdv2.segmentation.segmenter import make_classifier

    index = {n: j for j, n in enumerate(feature_names(n_channels, choice.sigmas, choice.filters))}
    width = len(index)
    if x.shape[1] != width:
        raise HRDv2Error(f"auto ensemble: got {x.shape[1]} feature channels, the choice needs {width}.")
    merged, linear = None, None
    for m in choice.members:
        cols = np.asarray([index[n] for n in feature_names(n_channels, m.sigmas, m.filters)], dtype=np.intp)
        if m.classifier != "random_forest":
            linear = make_classifier(m.classifier, random_state, len(y), **dict(m.params)).fit(x[:, cols], y)
            _widen_linear(linear, cols, width)
            continue
        params = {**dict(m.params), "n_estimators": ENSEMBLE_TREES}
        model = make_classifier(m.classifier, random_state, len(y), **params)
        model.fit(x[:, cols], y)
        for est in model.estimators_:
            _remap_tree(est, cols, width)
        if merged is None:
            merged = model
        else:
            merged.estimators_ = merged.estimators_ + model.estimators_
    merged.n_estimators = len(merged.estimators_)
    merged.n_features_in_ = width
    if linear is None:
        return merged
    return blend(merged, linear, LINEAR_SHARE)


def blend(forest, linear, share: float):
    """A fitted soft-voting classifier: ``(1 - share) * forest + share * linear`` probabilities.
    Both were fitted on the same labels (so the same ``classes_``); set up as VotingClassifier.fit
    would leave it, without refitting the members: the fitted ones in ``estimators_``, unfitted
    clones as its parameters (the fitted ones there too would save every tree twice)."""
    from sklearn.base import clone
    from sklearn.ensemble import VotingClassifier
    from sklearn.preprocessing import LabelEncoder

    model = VotingClassifier([("forests", clone(forest)), ("linear", clone(linear))], voting="soft",
                             weights=[1.0 - share, share])
    model.estimators_ = [forest, linear]
    model.le_ = LabelEncoder().fit(forest.classes_)
    model.classes_ = model.le_.classes_
    return model


def _widen_linear(pipe, cols: np.ndarray, width: int) -> None:
    """Make a StandardScaler + LogisticRegression pipeline fitted on columns ``cols`` read a
    ``width``-channel map: the other columns get mean 0, scale 1 and coefficient 0."""
    scaler, lr = pipe[0], pipe[-1]
    for name, fill in (("mean_", 0.0), ("var_", 1.0), ("scale_", 1.0)):
        full = np.full(width, fill, dtype=np.float64)
        full[cols] = getattr(scaler, name)
        setattr(scaler, name, full)
    coef = np.zeros((lr.coef_.shape[0], width), dtype=lr.coef_.dtype)
    coef[:, cols] = lr.coef_
    lr.coef_ = coef
    scaler.n_features_in_ = lr.n_features_in_ = width
