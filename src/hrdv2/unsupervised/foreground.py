"""Steps 3-4: which clusters are foreground, and how far apart foreground and background are.

The ViT's CLS token attends to salient objects, but per pixel the attention map is noisy
and blotchy. Averaging it over each k-means cluster (its *density*: attention summed over the
cluster divided by its area) turns it into a clean per-region score; regions scoring above the
mean are foreground. The typical feature distance between a foreground and a background region
(the *semantic distance*) then sets the scale for merging regions in step 5.
"""

from __future__ import annotations

import numpy as np

from hrdv2.errors import ConfigError, ShapeError

# Histogram binning of the fg-bg cosine distances (see ``semantic_distance``).
SEMANTIC_BINS = 20
# Densities whose spread (max - min) is below this fraction of their mean magnitude are "all equal".
EQUAL_DENSITY_RTOL = 1e-6


def attention_map(attention: np.ndarray, head: int | None = None) -> np.ndarray:
    """(heads, H, W) CLS attention -> (H, W): the mean over heads, or one chosen head."""
    attn = np.asarray(attention, dtype=np.float64)
    if attn.ndim == 2:
        return attn
    if attn.ndim != 3:
        raise ShapeError(f"attention must be (heads, H, W) or (H, W); got shape {attn.shape}.")
    if head is None:
        return attn.mean(axis=0)
    if not -attn.shape[0] <= head < attn.shape[0]:
        raise ConfigError(f"head={head} is out of range: the attention has {attn.shape[0]} heads (0..{attn.shape[0] - 1}).")
    return attn[head]


def region_densities(labels: np.ndarray, attention: np.ndarray, n: int | None = None) -> np.ndarray:
    """Attention density of each region id 0..n-1: summed attention / area (NaN for empty ids)."""
    labels = np.asarray(labels)
    attention = np.asarray(attention, dtype=np.float64)
    if labels.shape != attention.shape:
        raise ShapeError(f"labels {labels.shape} and attention {attention.shape} must have the same (H, W) shape.")
    n = int(labels.max()) + 1 if n is None else n
    area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    total = np.bincount(labels.ravel(), weights=attention.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, total / area, np.nan)


def above_mean(densities: np.ndarray) -> np.ndarray:
    """Boolean mask of densities strictly above their mean (NaNs ignored).

    When all densities are equal (up to ``EQUAL_DENSITY_RTOL``), nothing stands out and the
    result is all False: "no foreground found" rather than an arbitrary split.
    """
    d = np.asarray(densities, dtype=np.float64)
    valid = np.isfinite(d)
    if not valid.any():
        return np.zeros(d.shape, dtype=bool)
    dv = d[valid]
    spread = float(dv.max() - dv.min())
    if spread <= EQUAL_DENSITY_RTOL * max(float(np.abs(dv).mean()), 1e-12):
        return np.zeros(d.shape, dtype=bool)
    return valid & (np.nan_to_num(d, nan=-np.inf) > dv.mean())


def foreground_clusters(labels: np.ndarray, attention: np.ndarray, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(is_foreground mask over cluster ids, densities): clusters denser than the mean density."""
    dens = region_densities(labels, attention, n)
    return above_mean(dens), dens


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) cosine distances 1 - cos in [0, 2]; a zero vector is at distance 1."""
    from sklearn.metrics.pairwise import cosine_distances as _cos

    return _cos(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def semantic_distance(centroids: np.ndarray, is_foreground: np.ndarray, bins: int = SEMANTIC_BINS) -> float:
    """The modal cosine distance between every foreground and every background centroid.

    Binning: ``bins`` (default 20) equal-width bins spanning the observed [min, max] distance
    (``numpy.histogram``); the mode is the mean of the distances that fall in the fullest bin
    (the lowest such bin on ties). Averaging inside the bin, rather than taking its centre or
    edge, makes the estimate exact when most pairs share one distance.

    Returns NaN when there is no foreground or no background cluster (nothing to compare).
    """
    centroids = np.asarray(centroids)
    fg = np.asarray(is_foreground, dtype=bool)
    if fg.shape != (centroids.shape[0],):
        raise ShapeError(f"is_foreground has shape {fg.shape}; expected ({centroids.shape[0]},), one flag per centroid.")
    if bins < 1:
        raise ConfigError(f"bins must be >= 1; got {bins}.")
    if not fg.any() or fg.all():
        return float("nan")
    d = cosine_distances(centroids[fg], centroids[~fg]).ravel()
    counts, edges = np.histogram(d, bins=bins)
    top = int(np.argmax(counts))
    hi = edges[top + 1]
    inside = (d >= edges[top]) & ((d < hi) if top + 1 < bins else (d <= hi))
    return float(d[inside].mean())
