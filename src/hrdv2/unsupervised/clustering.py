"""Step 2: over-cluster the per-pixel features with k-means.

The clusters are deliberately many (k = 80 by default): each is a small, feature-homogeneous
region that the later steps classify as foreground/background and merge into objects.
k-means is fitted on a seeded random sample of pixels (fitting on all ~200k pixels of a
448 px image buys nothing but time) and then every pixel is assigned to its nearest centre.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hrdv2.errors import ConfigError, ShapeError


@dataclass
class Clusters:
    """k-means result.

    ``labels``: (H, W) int32 cluster id of every pixel, ids 0..n-1 all non-empty.
    ``centroids``: (n, C) float32 mean (L2-normalised) feature of each cluster.
    ``k_used``: the k given to k-means (smaller than asked when the image has fewer distinct
    feature vectors than k); ``n`` may be smaller still when a centre won no pixel.
    """

    labels: np.ndarray
    centroids: np.ndarray
    k_used: int

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])


def pixel_matrix(features: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(C, H, W) features -> (H*W, C) float32 rows and the (H, W) grid they came from."""
    arr = np.asarray(features)
    if arr.ndim != 3:
        raise ShapeError(f"features must be (C, H, W); got shape {arr.shape}.")
    c, h, w = arr.shape
    return np.ascontiguousarray(arr.reshape(c, h * w).T, dtype=np.float32), (h, w)


def l2_normalise(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Rows scaled to unit length, so Euclidean k-means groups by cosine similarity."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, eps)


def cluster_means(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n, C) mean row of ``x`` (N, C) per label 0..n-1 (a sparse one-hot product: fast)."""
    from scipy.sparse import csr_matrix

    labels = np.asarray(labels).ravel()
    onehot = csr_matrix((np.ones(labels.size), (labels, np.arange(labels.size))), shape=(n, labels.size))
    counts = np.asarray(onehot.sum(axis=1)).ravel()
    sums = onehot @ x.astype(np.float64)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def kmeans_clusters(
    features: np.ndarray,
    k: int = 80,
    n_samples: int = 50_000,
    seed: int = 0,
    normalise: bool = True,
    max_iter: int = 300,
) -> Clusters:
    """k-means over-segmentation of (C, H, W) features.

    ``k`` larger than the number of distinct feature vectors (tiny or single-colour images)
    is lowered to that number with a warning, so the call never fails on such inputs.
    """
    from sklearn.cluster import KMeans

    if k < 1:
        raise ConfigError(f"k (number of k-means clusters) must be >= 1; got {k}.")
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1; got {n_samples}.")
    x, (h, w) = pixel_matrix(features)
    if not np.all(np.isfinite(x)):
        raise ShapeError("features contain NaN or infinite values; check the feature extractor's output.")
    if normalise:
        x = l2_normalise(x)
    n_pix = x.shape[0]
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(n_pix, size=min(n_samples, n_pix), replace=False)]
    n_distinct = np.unique(sample, axis=0).shape[0]
    k_used = min(k, n_distinct)
    if k_used < k:
        warnings.warn(
            f"k={k} is more than the {n_distinct} distinct feature vectors of this "
            f"{w}x{h} image (sample of {sample.shape[0]} pixels); using k={k_used}.",
            stacklevel=2,
        )
    km = KMeans(n_clusters=k_used, n_init=1, max_iter=max_iter, random_state=seed)
    km.fit(sample)
    raw = km.predict(x)
    # Renumber so ids are contiguous over non-empty clusters; recompute centres on all pixels.
    used, labels = np.unique(raw, return_inverse=True)
    centroids = cluster_means(x, labels, used.size)
    return Clusters(labels=labels.reshape(h, w).astype(np.int32), centroids=centroids, k_used=k_used)
