"""A training-free click segmenter: the same fixed model for every upsampler, so only the
features differ between probe runs.

Per image, once:
  1. the (C, H, W) features become one row per pixel, each channel z-scored over the image
     (so backbones, upsamplers and classical filters with different scales compare fairly);
  2. PCA to ``n_components`` dimensions (fitted on a seeded pixel subsample) keeps the
     per-click fit small and fast.

Per click (``predict``):
  3. training pixels: a disk of ``radius`` px around every click, labelled by its sign, each
     click weighing 1 in total (so disk size does not matter);
  4. the previous mask is a weak prior: ``prior_samples`` seeded pixels, half inside it (label
     1) and half outside (label 0), weighing ``prior_weight`` in total. Before any mask exists
     the whole image is the "outside", so click 1 means "like this, unlike the image at large";
  5. an L2-regularised logistic regression (scikit-learn, Newton-Cholesky) on those pixels, evaluated
     on every pixel, thresholded at p = 0.5;
  6. the click disks are then forced to their labels, and (``keep_connected``) only foreground
     components that touch a positive click are kept, as objects are connected to their clicks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.linalg import LinAlgWarning
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from threadpoolctl import ThreadpoolController

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.probe.clicks import Click, Predictor


@dataclass(frozen=True)
class SegmenterConfig:
    radius: int = 5
    n_components: int | None = 32
    prior_samples: int = 1000
    prior_weight: float = 1.0
    C: float = 1.0
    keep_connected: bool = True
    pca_fit_pixels: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.radius < 0:
            raise ConfigError(f"click disk radius must be >= 0 px, got {self.radius}.")
        if self.n_components is not None and self.n_components < 1:
            raise ConfigError(f"n_components must be >= 1 or None, got {self.n_components}.")
        if self.prior_samples < 2 or self.prior_weight < 0 or self.C <= 0:
            raise ConfigError(
                f"need prior_samples >= 2, prior_weight >= 0 and C > 0; got {self.prior_samples}, "
                f"{self.prior_weight}, {self.C}."
            )


_THREADS: ThreadpoolController | None = None


def _one_thread():
    """BLAS limited to one thread: these problems are small and extra threads only add contention."""
    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadpoolController()
    return _THREADS.limit(limits=1)


def _features_to_rows(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    arr = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if arr.ndim != 3:
        raise ShapeError(f"features must be (C, H, W), got shape {arr.shape}.")
    c, h, w = arr.shape
    rows = arr.reshape(c, h * w).T.astype(np.float32, copy=False)
    if not np.all(np.isfinite(rows)):
        raise ShapeError("features hold NaN or infinite values; check the upsampler output.")
    return rows, (h, w)


class ClickSegmenter:
    """Predict an object mask from per-pixel features and clicks (see module docstring)."""

    def __init__(self, features: torch.Tensor | np.ndarray, config: SegmenterConfig | None = None):
        with _one_thread():
            self._prepare(features, config)

    def _prepare(self, features: torch.Tensor | np.ndarray, config: SegmenterConfig | None) -> None:
        self.config = config or SegmenterConfig()
        rows, self.shape = _features_to_rows(features)
        rows = rows - rows.mean(axis=0)
        rows /= rows.std(axis=0) + 1e-6
        rng = np.random.default_rng(self.config.seed)
        k = self.config.n_components
        if k is not None and k < rows.shape[1]:
            n_fit = min(len(rows), self.config.pca_fit_pixels)
            fit_idx = rng.choice(len(rows), size=n_fit, replace=False)
            pca = PCA(n_components=min(k, n_fit), svd_solver="covariance_eigh", random_state=self.config.seed).fit(rows[fit_idx])
            rows = pca.transform(rows).astype(np.float32)
        self.rows = rows
        r = self.config.radius
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = (yy**2 + xx**2) <= r**2
        self._dy, self._dx = yy[disk], xx[disk]

    def _disk_pixels(self, click: Click) -> np.ndarray:
        """Flat indices of the pixels within ``radius`` of the click (clipped to the image)."""
        h, w = self.shape
        if not (0 <= click.y < h and 0 <= click.x < w):
            raise ShapeError(f"click ({click.y}, {click.x}) lies outside the {h}x{w} image.")
        ys, xs = click.y + self._dy, click.x + self._dx
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        return ys[inside] * w + xs[inside]

    def _training_set(
        self, clicks: Sequence[Click], prev_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx, lab, wts = [], [], []
        for c in clicks:
            pix = self._disk_pixels(c)
            idx.append(pix)
            lab.append(np.full(pix.size, int(c.positive)))
            wts.append(np.full(pix.size, 1.0 / pix.size))
        n_pix = self.shape[0] * self.shape[1]
        prev = np.zeros(n_pix, bool) if prev_mask is None else np.asarray(prev_mask, bool).ravel()
        inside, outside = np.flatnonzero(prev), np.flatnonzero(~prev)
        groups = [(g, y) for g, y in ((inside, 1), (outside, 0)) if g.size]
        if not any(y == 0 for _, y in groups) and not any(not c.positive for c in clicks):
            groups.append((np.arange(n_pix), 0))  # everything predicted: the image at large is the negative
        per_group = self.config.prior_samples // max(len(groups), 1)
        for g, y in groups:
            pick = rng.choice(g, size=min(per_group, g.size), replace=False)
            idx.append(pick)
            lab.append(np.full(pick.size, y))
            wts.append(np.full(pick.size, self.config.prior_weight / len(groups) / pick.size))
        return np.concatenate(idx), np.concatenate(lab), np.concatenate(wts)

    def predict_proba(self, clicks: Sequence[Click], prev_mask: np.ndarray | None = None) -> np.ndarray:
        """Foreground probability (H, W) from the logistic model alone (before steps 6)."""
        if not clicks:
            raise ConfigError("predict needs at least one click.")
        if prev_mask is not None and np.shape(prev_mask) != self.shape:
            raise ShapeError(f"previous mask has shape {np.shape(prev_mask)}, expected {self.shape}.")
        rng = np.random.default_rng(self.config.seed + len(clicks))
        idx, lab, wts = self._training_set(clicks, prev_mask, rng)
        if np.unique(lab).size < 2:  # only one class: nothing to discriminate
            return np.full(self.shape, float(lab[0]), np.float32)
        model = LogisticRegression(C=self.config.C, solver="newton-cholesky", max_iter=100)
        with _one_thread(), warnings.catch_warnings():
            # near-duplicate rows (blocky features) can make the Hessian singular; sklearn then
            # falls back to lbfgs on its own and says so: that notice is not the user's problem
            warnings.simplefilter("ignore", LinAlgWarning)
            model.fit(self.rows[idx], lab, sample_weight=wts * len(wts) / wts.sum())
        logits = self.rows @ model.coef_[0].astype(np.float32) + np.float32(model.intercept_[0])
        return (1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))).reshape(self.shape)

    def predict(self, clicks: Sequence[Click], prev_mask: np.ndarray | None = None) -> np.ndarray:
        """Boolean object mask (H, W) after ``clicks``, given the previous mask."""
        mask = self.predict_proba(clicks, prev_mask) >= 0.5
        pos_seed = np.zeros(self.shape, bool)
        flat, seed_flat = mask.reshape(-1), pos_seed.reshape(-1)
        for c in clicks:
            disk = self._disk_pixels(c)
            flat[disk] = c.positive
            seed_flat[disk] = c.positive
        if self.config.keep_connected and pos_seed.any():
            labels, _ = ndimage.label(mask)
            keep = np.unique(labels[pos_seed & mask])
            mask = np.isin(labels, keep[keep > 0])
        return mask

    def as_predictor(self) -> Predictor:
        """The ``predictor(clicks, prev_mask)`` callable that ``simulate`` expects."""
        return lambda clicks, prev: self.predict(clicks, prev)
