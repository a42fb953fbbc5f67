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


def l2_normalise(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Rows scaled to unit length, so Euclidean k-means groups by cosine similarity."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, eps)


def distinct_pixels(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct feature vectors (U, C) float32, index of each pixel's vector (H*W,)).

    HR-Dv2 maps repeat each vector over many pixels (a whole 14 x 14 patch at stride 14), so
    the later steps work on the distinct vectors only. Sorting whole rows (``np.unique(axis=0)``)
    takes seconds on such maps; instead each pixel is keyed by two fixed random projections
    (equal vectors get equal keys; two different vectors share both keys with negligible
    probability, and would then only be treated as one vector).
    """
    arr = np.asarray(features)
    if arr.ndim != 3:
        raise ShapeError(f"features must be (C, H, W); got shape {arr.shape}.")
    flat = arr.reshape(arr.shape[0], -1).astype(np.float32, copy=False)
    proj = np.random.default_rng(12345).standard_normal((2, flat.shape[0])).astype(np.float32)
    keys = np.ascontiguousarray((proj @ flat).T).view(np.int64).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return np.ascontiguousarray(flat[:, first].T), inverse.ravel()


def cluster_means(x: np.ndarray, labels: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """(n, C) (weighted) mean row of ``x`` (N, C) per label 0..n-1, via a sparse one-hot product."""
    from scipy.sparse import csr_matrix

    labels = np.asarray(labels).ravel()
    wts = np.ones(labels.size) if weights is None else np.asarray(weights, dtype=np.float64)
    onehot = csr_matrix((wts, (labels, np.arange(labels.size))), shape=(n, labels.size))
    totals = np.asarray(onehot.sum(axis=1)).ravel()
    sums = onehot @ x.astype(np.float64)
    return (sums / np.maximum(totals, 1e-12)[:, None]).astype(np.float32)


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
    from threadpoolctl import threadpool_limits

    if k < 1:
        raise ConfigError(f"k (number of k-means clusters) must be >= 1; got {k}.")
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1; got {n_samples}.")
    uniq, inverse = distinct_pixels(features)
    h, w = np.asarray(features).shape[1:]
    if not np.all(np.isfinite(uniq)):
        raise ShapeError("features contain NaN or infinite values; check the feature extractor's output.")
    if normalise:
        uniq = l2_normalise(uniq)
    n_pix = inverse.size
    rng = np.random.default_rng(seed)
    sample_ids = inverse[rng.choice(n_pix, size=min(n_samples, n_pix), replace=False)]
    weights = np.bincount(sample_ids, minlength=uniq.shape[0]).astype(np.float64)
    in_sample = np.flatnonzero(weights)
    k_used = min(k, in_sample.size)
    if k_used < k:
        warnings.warn(
            f"k={k} is more than the {in_sample.size} distinct feature vectors of this "
            f"{w}x{h} image (sample of {min(n_samples, n_pix)} pixels); using k={k_used}.",
            stacklevel=2,
        )
    km = KMeans(n_clusters=k_used, n_init=1, max_iter=max_iter, random_state=seed)
    # k-means++ seeding makes k small BLAS calls; multi-threaded OpenBLAS spins badly on them
    # when cores are shared (1.5 s vs 0.1 s measured). Lloyd iterations keep their OpenMP threads.
    with threadpool_limits(limits=1, user_api="blas"):
        km.fit(uniq[in_sample], sample_weight=weights[in_sample])
        predicted = km.predict(uniq)
    # Renumber so ids are contiguous over non-empty clusters; centres = mean over all pixels.
    used, uniq_labels = np.unique(predicted, return_inverse=True)
    uniq_labels = uniq_labels.ravel()
    pixel_counts = np.bincount(inverse, minlength=uniq.shape[0])
    centroids = cluster_means(uniq, uniq_labels, used.size, pixel_counts)
    labels = uniq_labels[inverse]
    return Clusters(labels=labels.reshape(h, w).astype(np.int32), centroids=centroids, k_used=k_used)
