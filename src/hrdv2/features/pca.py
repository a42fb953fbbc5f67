"""PCA of dense features, for pictures (3 components -> RGB) and compression (k components).

Fitted with scikit-learn on a seeded sample of pixels (dense maps have millions of pixels
and PCA needs only a few thousand to find the leading directions); applied to whole maps
with one matrix product. A fitted PCA is reusable on other images and can be saved.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA as _SkPCA

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.io import atomic_path


def _as_pixels(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(C, H, W) map or (N, C) rows -> (N, C) float32 rows."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3:
        arr = arr.reshape(arr.shape[0], -1).T
    if arr.ndim != 2:
        raise ShapeError(f"PCA expects a (C, H, W) feature map or (N, C) rows, got shape {arr.shape}.")
    return np.ascontiguousarray(arr, dtype=np.float32)


class PCA:
    """k-component PCA over feature channels. ``fit`` on (C, H, W) or (N, C); ``transform`` keeps
    the input's layout: (C, H, W) -> (k, H, W), (N, C) -> (N, k)."""

    def __init__(self, n_components: int = 3, max_samples: int = 20000, random_state: int = 0):
        if n_components < 1:
            raise ConfigError(f"n_components must be >= 1, got {n_components}.")
        self.n_components = int(n_components)
        self.max_samples = int(max_samples)
        self.random_state = random_state
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.low_: np.ndarray | None = None  # 1st / 99th percentiles of each component, for display
        self.high_: np.ndarray | None = None

    def fit(self, x: np.ndarray | torch.Tensor) -> "PCA":
        rows = _as_pixels(x)
        if self.n_components > min(rows.shape):
            raise ConfigError(
                f"n_components={self.n_components} exceeds what {rows.shape[0]} samples of {rows.shape[1]} "
                "channels allow; choose fewer components."
            )
        rng = np.random.default_rng(self.random_state)
        if len(rows) > self.max_samples:
            rows = rows[rng.choice(len(rows), self.max_samples, replace=False)]
        sk = _SkPCA(self.n_components, random_state=self.random_state).fit(rows)
        self.mean_ = sk.mean_.astype(np.float32)
        self.components_ = sk.components_.astype(np.float32)
        proj = (rows - self.mean_) @ self.components_.T
        self.low_, self.high_ = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
        return self

    def _check(self, channels: int) -> None:
        if self.components_ is None:
            raise ConfigError("this PCA is not fitted yet; call fit() first.")
        if channels != self.components_.shape[1]:
            raise ShapeError(f"PCA was fitted on {self.components_.shape[1]} channels but got {channels}.")

    def transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        if arr.ndim == 3:
            C, H, W = arr.shape
            self._check(C)
            flat = torch.from_numpy(np.ascontiguousarray(arr.reshape(C, -1), dtype=np.float32))
            comp = torch.from_numpy(self.components_)
            out = comp @ (flat - torch.from_numpy(self.mean_)[:, None])
            return out.reshape(self.n_components, H, W).numpy()
        rows = _as_pixels(arr)
        self._check(rows.shape[1])
        return (rows - self.mean_) @ self.components_.T

    def fit_transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.fit(x).transform(x)

    def to_rgb(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """(C, H, W) features -> (H, W, 3) uint8 picture of the first three components."""
        if self.n_components < 3:
            raise ConfigError("to_rgb needs a PCA with at least 3 components.")
        proj = self.transform(x)[:3]
        lo, hi = self.low_[:3, None, None], self.high_[:3, None, None]
        scaled = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
        return (scaled.transpose(1, 2, 0) * 255).round().astype(np.uint8)

    def save(self, path: str | os.PathLike) -> Path:
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mean=self.mean_, components=self.components_, low=self.low_, high=self.high_)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCA":
        with np.load(path, allow_pickle=False) as z:
            pca = cls(n_components=z["components"].shape[0])
            pca.mean_, pca.components_, pca.low_, pca.high_ = z["mean"], z["components"], z["low"], z["high"]
        return pca


def pca_rgb(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """One-call picture of a feature map: PCA(3) fitted on the map itself."""
    return PCA(3).fit(features).to_rgb(features)


def heatmap_rgb(values: np.ndarray | torch.Tensor, cmap: str = "inferno") -> np.ndarray:
    """(H, W) scalar map -> (H, W, 3) uint8 through a matplotlib colour map (1-99 % range)."""
    import matplotlib

    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    lo, hi = np.percentile(arr, 1), np.percentile(arr, 99)
    scaled = np.clip((arr - lo) / max(hi - lo, 1e-12), 0, 1)
    return (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)
