"""The standard click simulator of interactive segmentation (RITM / SimpleClick / iSegProbe).

* Click 1 goes to the interior point of the object farthest from its boundary.
* Every later click goes to the interior point (farthest from the region's boundary) of the
  largest error region of the current prediction: positive when that region is missed object
  (false negative), negative when it is false foreground (false positive).
* "Largest" is by area (``strategy="largest_region"``, the iSegProbe wording); the RITM code
  instead takes the error pixel farthest from any error boundary (``strategy="farthest"``).
* Ignore pixels (``ignore`` mask) are never errors and never receive clicks; the image border
  counts as boundary (the masks are zero-padded before the distance transform).
* Ties (equal areas, equal distances) are broken by a seeded generator, so a run is
  deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.metrics.localisation import foreground_iou

STRATEGIES = ("largest_region", "farthest")


@dataclass(frozen=True)
class Click:
    """One simulated click: pixel (y, x) and its sign."""

    y: int
    x: int
    positive: bool


@dataclass
class ClickRun:
    """What one simulated session produced: the clicks, the IoU after each, the last mask."""

    clicks: list[Click] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)
    final_mask: np.ndarray | None = None


# predictor(clicks so far, previous mask or None) -> boolean mask (H, W)
Predictor = Callable[[Sequence[Click], "np.ndarray | None"], np.ndarray]


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two boolean masks, ignore pixels excluded (empty-vs-empty = 1)."""
    return foreground_iou(pred, gt, None if ignore is None else ~np.asarray(ignore, bool))


def _interior_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of each mask pixel to the nearest non-mask pixel or the image border."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def _pick_max(dist: np.ndarray, rng: np.random.Generator) -> tuple[int, int, float]:
    best = float(dist.max())
    ys, xs = np.nonzero(dist == best)
    i = int(rng.integers(len(ys))) if len(ys) > 1 else 0
    return int(ys[i]), int(xs[i]), best


def next_click(
    gt: np.ndarray,
    pred: np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    strategy: str = "largest_region",
) -> Click | None:
    """The next click for prediction ``pred`` (None = nothing predicted yet), or None if no error.

    ``gt`` is the object mask; both masks are (H, W) and boolean-like.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown click strategy {strategy!r}; choose one of {STRATEGIES}.")
    gt = np.asarray(gt, bool)
    if gt.ndim != 2:
        raise ShapeError(f"ground-truth mask must be (H, W), got shape {gt.shape}.")
    pred = np.zeros_like(gt) if pred is None else np.asarray(pred, bool)
    if pred.shape != gt.shape:
        raise ShapeError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    valid = np.ones_like(gt) if ignore is None else ~np.asarray(ignore, bool)
    rng = rng if rng is not None else np.random.default_rng(0)
    fn = gt & ~pred & valid
    fp = ~gt & pred & valid
    if not fn.any() and not fp.any():
        return None

    if strategy == "farthest":
        d_fn, d_fp = _interior_distance(fn), _interior_distance(fp)
        positive = d_fn.max() >= d_fp.max()  # a tie favours the object (as the first click does)
        y, x, _ = _pick_max(d_fn if positive else d_fp, rng)
        return Click(y, x, bool(positive))

    # largest_region: connected error components of both kinds, biggest area wins
    candidates: list[tuple[int, float, bool, np.ndarray]] = []
    for positive, err in ((True, fn), (False, fp)):
        if not err.any():
            continue
        labels, n = ndimage.label(err)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        for lab in np.flatnonzero(areas == areas.max()) + 1:
            region = labels == lab
            candidates.append((int(areas[lab - 1]), float(_interior_distance(region).max()), positive, region))
    top_area = max(c[0] for c in candidates)
    tied = [c for c in candidates if c[0] == top_area]
    top_dist = max(c[1] for c in tied)
    tied = [c for c in tied if c[1] == top_dist]
    _, _, positive, region = tied[int(rng.integers(len(tied)))] if len(tied) > 1 else tied[0]
    y, x, _ = _pick_max(_interior_distance(region), rng)
    return Click(y, x, positive)


def simulate(
    gt: np.ndarray,
    predictor: Predictor,
    ignore: np.ndarray | None = None,
    max_clicks: int = 20,
    stop_iou: float | None = None,
    seed: int = 0,
    strategy: str = "largest_region",
) -> ClickRun:
    """Run one interactive session: click, predict, measure IoU, until ``max_clicks``.

    Stops early when the IoU reaches ``stop_iou`` (if given) or when the prediction has no
    error left (so no click can be placed). The metrics pad a short run with its last IoU.
    """
    gt = np.asarray(gt, bool)
    if max_clicks < 1:
        raise ConfigError(f"max_clicks must be >= 1, got {max_clicks}.")
    if not (gt & (np.ones_like(gt) if ignore is None else ~np.asarray(ignore, bool))).any():
        raise ShapeError("the object mask is empty (outside the ignore region): there is nothing to click on.")
    rng = np.random.default_rng(seed)
    run = ClickRun()
    mask: np.ndarray | None = None
    for _ in range(max_clicks):
        click = next_click(gt, mask, ignore, rng, strategy)
        if click is None:
            break
        run.clicks.append(click)
        mask = np.asarray(predictor(list(run.clicks), mask), bool)
        if mask.shape != gt.shape:
            raise ShapeError(f"predictor returned a mask of shape {mask.shape}, expected {gt.shape}.")
        run.ious.append(iou(mask, gt, ignore))
        if stop_iou is not None and run.ious[-1] >= stop_iou:
            break
    run.final_mask = mask
    return run
