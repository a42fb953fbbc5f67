"""Dense (fully connected) CRF clean-up of per-pixel class probabilities, image as guide.

Uses ``pydensecrf2`` (maintained fork of Kraehenbuehl & Koltun's permutohedral-lattice mean
field). Two pairwise terms: a Gaussian smoothness kernel (``sxy_gaussian``) and a bilateral
appearance kernel (``sxy_bilateral`` px, ``srgb`` grey levels on a 0..255 scale): pixels that are
close and look alike are pushed towards the same class, so speckle disappears and boundaries
snap to image edges.
"""

from __future__ import annotations

import numpy as np

from hrdv2.errors import ShapeError
from hrdv2.io import to_float01


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    n_iter: int = 5,
    *,
    sxy_gaussian: float = 3.0,
    compat_gaussian: float = 3.0,
    sxy_bilateral: float = 40.0,
    srgb: float = 13.0,
    compat_bilateral: float = 10.0,
) -> np.ndarray:
    """Refined (H, W, K) float32 probabilities (rows sum to 1) after ``n_iter`` mean-field steps."""
    import pydensecrf.densecrf as dcrf

    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[-1] < 2:
        raise ShapeError(f"dense_crf needs (H, W, K>=2) probabilities, got {probs.shape}.")
    h, w, k = probs.shape
    if image.shape[:2] != (h, w):
        raise ShapeError(f"dense_crf: image is {image.shape[:2]} but probabilities are {(h, w)}; they must match.")
    if image.ndim == 3 and image.shape[-1] not in (1, 3):
        raise ShapeError(f"dense_crf: guide image must be grey or RGB, got {image.shape}.")
    if n_iter < 1:
        return probs.copy()
    g = to_float01(image)
    if g.ndim == 2 or g.shape[-1] == 1:
        g = np.repeat(g.reshape(h, w, 1), 3, axis=-1)
    rgb = np.ascontiguousarray(np.round(g * 255).astype(np.uint8))
    p = np.clip(probs, 1e-6, None)
    p /= p.sum(axis=-1, keepdims=True)
    unary = np.ascontiguousarray(-np.log(p).reshape(-1, k).T)
    d = dcrf.DenseCRF2D(w, h, k)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    d.addPairwiseBilateral(sxy=sxy_bilateral, srgb=srgb, rgbim=rgb, compat=compat_bilateral)
    q = np.asarray(d.inference(int(n_iter)), dtype=np.float32)
    return np.ascontiguousarray(q.T.reshape(h, w, k))
