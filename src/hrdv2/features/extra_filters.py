"""The rest of the Trainable-Weka-style bank: higher-order derivatives, neighbours, bilateral means.

Kept apart from :mod:`hrdv2.features.classical` (which schedules them on its pyramid and thread
pool) so each filter is a small function with a definition a test can check by hand:

* ``deriv{n}_s`` (n = 3, 4): the rotation-invariant size of the n-th derivative of the image
  blurred at ``s``, ``sqrt(sum_k C(n, k) (d^n f / dx^k dy^(n-k))^2)`` (for n = 2 this would be the
  Frobenius norm of the Hessian). On ``f = x^3`` it is 6 everywhere, on ``f = x^4`` it is 24 for
  n = 4. Weka's "Derivatives" are orders 4..10 of FeatureJ; orders above 4 of a blur at sigma 1
  are mostly quantisation noise, so hrdv2 keeps 3 and 4 (the Hessian covers 2).
* ``neighbour_{dir}_s``: the image shifted by ``round(s)`` px towards each of the 8 compass
  directions (``neighbour_e_s`` at (y, x) is the value at (y, x + round(s))), edge value
  repeated outside: the classifier sees the pixels around the one it labels.
* ``bilateral_r{r}_t{t}``: mean of the pixels within the (2r + 1)^2 square around a pixel whose
  value differs from its own by at most ``t``/255 (r = 5, 10; t = 50, 100 grey levels of 255, as
  Weka): an edge-preserving blur. Values are compared in ``BILATERAL_BINS`` grey bins (a
  pixel's bin +- round(t/255 * bins)), which costs 2 box filters per occupied bin instead of one
  pass per window offset, in O(H W) memory.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

DERIVATIVE_ORDERS: tuple[int, ...] = (3, 4)
NEIGHBOUR_DIRECTIONS: tuple[tuple[str, int, int], ...] = (
    ("n", -1, 0), ("ne", -1, 1), ("e", 0, 1), ("se", 1, 1), ("s", 1, 0), ("sw", 1, -1), ("w", 0, -1), ("nw", -1, -1),
)
BILATERAL_SETTINGS: tuple[tuple[int, int], ...] = ((5, 50), (5, 100), (10, 50), (10, 100))  # (radius px, grey levels)
BILATERAL_BINS = 32
# kernel radius in sigmas: a 3rd / 4th derivative kernel cut at 4 sigma is 4 % / 30 % off on a cubic /
# quartic (its moments drift); at 6 sigma under 0.2 % (measured)
DERIV_TRUNCATE = 6.0


def derivative_names() -> tuple[str, ...]:
    return tuple(f"deriv{n}" for n in DERIVATIVE_ORDERS)


def neighbour_names() -> tuple[str, ...]:
    return tuple(f"neighbour_{d}" for d, _, _ in NEIGHBOUR_DIRECTIONS)


def bilateral_names() -> tuple[str, ...]:
    return tuple(f"bilateral_r{r}_t{t}" for r, t in BILATERAL_SETTINGS)


def derivatives(x: np.ndarray, s_lvl: float, f: int) -> dict[str, np.ndarray]:
    """``deriv{n}`` of ``x`` (a level-``f`` image, sigma ``s_lvl`` in level pixels), in
    full-resolution pixel units (each derivative order divides by ``f``)."""
    out: dict[str, np.ndarray] = {}
    for n in DERIVATIVE_ORDERS:
        acc = np.zeros(x.shape, np.float32)
        for k in range(n + 1):
            d = ndi.gaussian_filter(x, max(s_lvl, 0.5), order=(n - k, k), mode="reflect", truncate=DERIV_TRUNCATE)
            acc += np.float32(math.comb(n, k)) * d * d
        np.sqrt(acc, out=acc)
        acc *= np.float32(1.0 / f**n)
        out[f"deriv{n}"] = acc
    return out


def neighbours(x: np.ndarray, sigma: float) -> dict[str, np.ndarray]:
    """The 8 copies of ``x`` shifted by ``round(sigma)`` px (edge values repeated)."""
    d = max(1, int(round(sigma)))
    p = np.pad(x, d, mode="edge")
    h, w = x.shape
    return {f"neighbour_{name}": np.ascontiguousarray(p[d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
            for name, dy, dx in NEIGHBOUR_DIRECTIONS}


def bilateral(x: np.ndarray, bins: int = BILATERAL_BINS) -> dict[str, np.ndarray]:
    """Range-limited window means of a [0, 1] image (see the module docstring)."""
    q = np.minimum((np.clip(x, 0.0, 1.0) * bins).astype(np.int16), bins - 1)
    out: dict[str, np.ndarray] = {}
    for r in sorted({r for r, _ in BILATERAL_SETTINGS}):
        size = 2 * r + 1
        settings = [(t, int(round(t / 255 * bins))) for rr, t in BILATERAL_SETTINGS if rr == r]
        cnt = {t: np.zeros(x.shape, np.float32) for t, _ in settings}
        tot = {t: np.zeros(x.shape, np.float32) for t, _ in settings}
        for b in range(bins):  # window fraction (and value sum) of bin b, added where b is in range
            ind = (q == b).astype(np.float32)
            if not ind.any():
                continue
            frac = ndi.uniform_filter(ind, size, mode="reflect")
            val = ndi.uniform_filter(ind * x, size, mode="reflect")
            dist = np.abs(q - b)
            for t, m in settings:
                near = dist <= m
                np.add(cnt[t], frac, out=cnt[t], where=near)
                np.add(tot[t], val, out=tot[t], where=near)
        for t, _ in settings:
            # the pixel's own bin is always in range, so the count is > 0 up to box-filter rounding
            c = cnt[t]
            out[f"bilateral_r{r}_t{t}"] = np.where(c > 1e-6, tot[t] / np.maximum(c, 1e-6), x).astype(np.float32)
    return out
