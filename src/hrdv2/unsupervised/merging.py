"""Step 5: merge the k-means clusters into class-agnostic classes.

Two clusters belong to the same object class when their features are closer than a typical
foreground-background pair (the semantic distance, step 4) scaled by ``factor``. Complete
linkage makes that hold for *every* pair inside a merged class, so a chain of gradually
changing clusters cannot bridge object and background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.unsupervised.foreground import above_mean, cosine_distances, region_densities

DEFAULT_MERGE_FACTOR = 1.0
PAPER_FACTOR_RANGE = (0.9, 1.2)


def merge_clusters(centroids: np.ndarray, threshold: float) -> np.ndarray:
    """Class id (0..m-1) of each centroid after complete-linkage cosine merging.

    Clusters are joined while the largest cosine distance between their members is below
    ``threshold`` (sklearn ``AgglomerativeClustering``, distance_threshold semantics). A NaN or
    non-positive threshold merges nothing. Class ids are numbered by first appearance.
    """
    from sklearn.cluster import AgglomerativeClustering

    centroids = np.asarray(centroids, dtype=np.float64)
    if centroids.ndim != 2:
        raise ShapeError(f"centroids must be (n, C); got shape {centroids.shape}.")
    n = centroids.shape[0]
    if n < 2 or not np.isfinite(threshold) or threshold <= 0:
        return np.arange(n, dtype=np.int32)
    dist = cosine_distances(centroids, centroids)
    np.fill_diagonal(dist, 0.0)
    model = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="complete", distance_threshold=float(threshold)
    )
    raw = model.fit_predict(dist)
    _, first = np.unique(raw, return_index=True)  # sklearn ids are 0..m-1
    rank = np.argsort(np.argsort(first))  # rank of each id by first appearance
    return rank[raw].astype(np.int32)


@dataclass
class Merged:
    """Class-agnostic segmentation.

    ``classes``: (H, W) int32, class id 1..m of every pixel (0 is never used, so it can mean
    "unlabelled" in files). ``cluster_to_class``: (n_clusters,) class id of each k-means cluster.
    ``foreground``: sorted class ids whose attention density exceeds the mean class density.
    ``densities``: (m + 1,) attention density per class id (index 0 unused, NaN).
    """

    classes: np.ndarray
    cluster_to_class: np.ndarray
    foreground: list[int]
    densities: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(self.cluster_to_class.max()) if self.cluster_to_class.size else 0

    def foreground_mask(self) -> np.ndarray:
        return np.isin(self.classes, self.foreground)


def foreground_classes(classes: np.ndarray, attention: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Class ids (1..m) denser in attention than the mean class density, and all densities."""
    dens = region_densities(classes, attention)
    dens[0] = np.nan  # id 0 is never a class
    fg = above_mean(dens)
    return [int(i) for i in np.flatnonzero(fg)], dens


def merge_segmentation(
    cluster_labels: np.ndarray,
    centroids: np.ndarray,
    attention: np.ndarray,
    semantic_dist: float,
    factor: float = DEFAULT_MERGE_FACTOR,
) -> Merged:
    """Merge clusters closer than ``factor * semantic_dist``, paint the classes, pick foreground."""
    if not np.isfinite(factor) or factor <= 0:
        raise ConfigError(f"merge factor must be > 0 (the paper uses {PAPER_FACTOR_RANGE[0]}-{PAPER_FACTOR_RANGE[1]}); got {factor}.")
    cluster_to_class = merge_clusters(centroids, factor * semantic_dist) + 1
    classes = cluster_to_class[np.asarray(cluster_labels)].astype(np.int32)
    fg, dens = foreground_classes(classes, attention)
    return Merged(classes=classes, cluster_to_class=cluster_to_class, foreground=fg, densities=dens)


def relabel_foreground(classes: np.ndarray, attention: np.ndarray) -> Merged:
    """Re-derive a ``Merged`` for an edited class map (e.g. after CRF): densities and foreground."""
    classes = np.asarray(classes).astype(np.int32)
    fg, dens = foreground_classes(classes, attention)
    m = int(classes.max())
    return Merged(classes=classes, cluster_to_class=np.arange(1, m + 1, dtype=np.int32), foreground=fg, densities=dens)
