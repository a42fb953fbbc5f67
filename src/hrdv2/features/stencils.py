"""Finite-difference stencils shared by the 2-D and 3-D classical filters (edge sample repeated,
as ``mode="nearest"``), written as slice arithmetic: several times faster than ``ndimage``
correlations on the images these filters see."""

from __future__ import annotations

import numpy as np


def central_difference(x: np.ndarray, axis: int) -> np.ndarray:
    """Central difference (x[i+1] - x[i-1]) / 2 with the edge sample repeated (zero on a 1-sample axis)."""
    d = np.empty_like(x)
    src, dst = np.moveaxis(x, axis, 0), np.moveaxis(d, axis, 0)
    if src.shape[0] < 2:
        d[...] = 0
        return d
    np.subtract(src[2:], src[:-2], out=dst[1:-1])
    np.subtract(src[1], src[0], out=dst[0])
    np.subtract(src[-1], src[-2], out=dst[-1])
    d *= np.float32(0.5)
    return d


def second_difference(x: np.ndarray, axis: int) -> np.ndarray:
    """Second difference x[i+1] - 2 x[i] + x[i-1] with the edge sample repeated (zero on a 1-sample axis)."""
    d = np.empty_like(x)
    src, dst = np.moveaxis(x, axis, 0), np.moveaxis(d, axis, 0)
    if src.shape[0] < 2:
        d[...] = 0
        return d
    np.add(src[2:], src[:-2], out=dst[1:-1])
    dst[1:-1] -= 2 * src[1:-1]
    np.subtract(src[1], src[0], out=dst[0])
    np.subtract(src[-2], src[-1], out=dst[-1])
    return d
