"""Keypoint matching and small-object retrieval by cosine similarity of dense features.

For each query pixel of the source image, the target pixel whose feature vector is most
similar (cosine) is its match; the (H, W) cosine map of the query over the whole target is
the retrieval heat map (paper section S4, after FeatUp). With annotated point pairs the
percentage of correct keypoints (PCK: predicted match within ``threshold`` px of the
annotation) scores an upsampler.

Points are (x, y) = (column, row) in pixels, 0-based, as drawing tools report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hrdv2.errors import ConfigError, ShapeError


@dataclass
class MatchResult:
    """Matches of N query points: ``matches[i]`` is the target pixel most similar to ``queries[i]``."""

    queries: np.ndarray  # (N, 2) int, (x, y) in the source
    matches: np.ndarray  # (N, 2) int, (x, y) in the target
    scores: np.ndarray  # (N,) cosine similarity of each match
    maps: np.ndarray  # (N, Ht, Wt) float32 cosine similarity of each query to every target pixel
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)


def check_points(points: Any, shape: tuple[int, ...], what: str = "source") -> np.ndarray:
    """(N, 2) int array of (x, y) points inside an image of ``shape``; anything else is refused."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        raise ConfigError(f"no {what} points given; give at least one x,y pixel position.")
    arr = arr.reshape(-1, 2) if arr.ndim == 1 and arr.size == 2 else arr
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ShapeError(f"{what} points must be (N, 2) x,y pairs, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{what} points contain NaN/inf; give whole pixel positions.")
    pts = np.rint(arr).astype(np.int64)
    h, w = shape[:2]
    bad = (pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)
    if bad.any():
        x, y = pts[np.argmax(bad)]
        raise ConfigError(f"{what} point ({x}, {y}) lies outside the {what} image ({w}x{h} px, WxH); "
                          f"x must be in 0..{w - 1} and y in 0..{h - 1}.")
    return pts


def standardise_pair(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score each channel with statistics over both images, so no channel dominates the cosine
    by its scale (hand-crafted filter banks mix intensities with small derivatives)."""
    both = np.concatenate([source.reshape(-1, source.shape[-1]), target.reshape(-1, target.shape[-1])])
    mean = both.mean(0, dtype=np.float64).astype(np.float32)
    std = np.maximum(both.std(0, dtype=np.float64).astype(np.float32), np.float32(1e-6))
    return (source - mean) / std, (target - mean) / std


def match_features(source: np.ndarray, target: np.ndarray, points: Any, *, chunk: int = 64,
                   tie_tol: float = 1e-5) -> MatchResult:
    """Match query ``points`` of ``source`` (Hs, Ws, C) features into ``target`` (Ht, Wt, C) features."""
    source, target = np.asarray(source), np.asarray(target)
    if source.ndim != 3 or target.ndim != 3 or source.shape[-1] != target.shape[-1]:
        raise ShapeError(f"features must be (H, W, C) with the same C, got {source.shape} and {target.shape}.")
    pts = check_points(points, source.shape)
    ht, wt, c = target.shape
    tgt = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(target, np.float32)).reshape(-1, c), dim=1)
    query = torch.from_numpy(np.ascontiguousarray(source[pts[:, 1], pts[:, 0]], np.float32))
    query = torch.nn.functional.normalize(query, dim=1)
    maps = np.empty((len(pts), ht, wt), np.float32)
    for i in range(0, len(pts), chunk):  # (chunk, Ht*Wt) at a time: memory stays bounded for many queries
        maps[i:i + chunk] = (query[i:i + chunk] @ tgt.T).reshape(-1, ht, wt).numpy()
    matches = np.stack([best_pixel(m, tie_tol) for m in maps]).reshape(-1, 2).astype(np.int64)
    scores = maps[np.arange(len(pts)), matches[:, 1], matches[:, 0]]
    return MatchResult(pts, matches, scores.astype(np.float32), maps)


def best_pixel(sim: np.ndarray, tie_tol: float = 1e-5) -> np.ndarray:
    """(x, y) of the maximum of ``sim``; when several pixels tie (within ``tie_tol``), the tied
    pixel nearest to their centroid. Features that are constant over a patch cell (nearest
    upsampling, or HR-Dv2 with few transforms) tie over the whole cell: the cell's centre is
    then the honest answer, not its first pixel in memory order."""
    top = float(sim.max())
    ys, xs = np.nonzero(sim >= top - tie_tol)
    if len(xs) == 1:
        return np.array([xs[0], ys[0]])
    cx, cy = xs.mean(), ys.mean()
    j = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return np.array([xs[j], ys[j]])


def match_images(source: np.ndarray, target: np.ndarray, points: Any, *, upsampler: str = "hrdv2",
                 backbone: Any = None, cache_dir: Any = None, standardise: bool | None = None,
                 **upsampler_kwargs: Any) -> MatchResult:
    """Featurise both images with ``upsampler`` (see :class:`~hrdv2.matching.features.DenseFeatures`)
    and match ``points`` of ``source`` into ``target``.

    ``standardise`` (default: only for ``classical`` features) z-scores channels over both
    images first. ``result.info`` names the upsampler, backbone and weights.
    """
    from hrdv2.matching.features import DenseFeatures

    dense = DenseFeatures(upsampler, backbone, cache_dir=cache_dir, **upsampler_kwargs)
    fs, ft = dense(source), dense(target)
    if standardise is None:
        standardise = dense.name == "classical"
    if standardise:
        fs, ft = standardise_pair(np.asarray(fs), np.asarray(ft))
    result = match_features(fs, ft, points)
    result.info = {"upsampler": dense.name, "features": dense.describe(), "untrained": dense.untrained,
                   "standardised": bool(standardise), "channels": int(fs.shape[-1])}
    return result


def pck(predicted: Any, truth: Any, threshold: float) -> float:
    """Fraction of predicted points within ``threshold`` px (Euclidean) of the annotated ones."""
    p, t = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 2:
        raise ShapeError(f"predicted and annotated points must both be (N, 2), got {p.shape} and {t.shape}.")
    if threshold < 0:
        raise ConfigError(f"PCK threshold must be >= 0 px, got {threshold}.")
    if len(p) == 0:
        raise ConfigError("PCK needs at least one annotated point pair.")
    return float(np.mean(np.linalg.norm(p - t, axis=1) <= threshold))
