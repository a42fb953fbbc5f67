"""Compiled kernels of :mod:`hrdv2.features.classical`'s return to full resolution (imports numba:
import this module only for large images; ``cache=True`` keeps the machine code on disk).

Why: the numpy version of a 2x bilinear step writes a half-size and a full-size temporary and then
copies the result into the channel-last output, five passes over full-resolution memory; on a
1024^2 block these passes were ~40 % of the classical features (measured). Here each output value
is computed once, only inside the requested window, and stored straight into its output channels.
The float32 operations and their order are exactly numpy's
(:func:`hrdv2.features.classical._upsample_axis0`: columns first, then rows), so the results are
bit-identical; a test holds that.
"""

from __future__ import annotations

import numba
import numpy as np

_QUARTER = np.float32(0.25)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _mid_row(src, i, mid, x0):  # pragma: no cover (compiled)
    """mid[xo] = row ``i`` of ``src`` (h, w, k) upsampled 2x along columns, at column ``x0 + xo``."""
    w, k = src.shape[1], src.shape[2]
    for xo in range(mid.shape[0]):
        gx = x0 + xo
        j = gx >> 1
        if gx & 1 == 0:
            if j == 0:
                for c in range(k):
                    mid[xo, c] = src[i, 0, c]
            else:
                for c in range(k):
                    a, b = src[i, j - 1, c], src[i, j, c]
                    mid[xo, c] = b + (a - b) * _QUARTER
        else:
            if j == w - 1:
                for c in range(k):
                    mid[xo, c] = src[i, w - 1, c]
            else:
                for c in range(k):
                    a, b = src[i, j, c], src[i, j + 1, c]
                    mid[xo, c] = a - (a - b) * _QUARTER


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _slot(src, i, ring, ids, x0):  # pragma: no cover (compiled)
    """Ring slot holding the column-upsampled row ``i`` (computed on first use)."""
    s = i % 3
    if ids[s] != i:
        _mid_row(src, i, ring[s], x0)
        ids[s] = i
    return s


@numba.njit(cache=True, nogil=True, boundscheck=False)
def upsample2_into(src, out, start, y0, x0):  # pragma: no cover (compiled)
    """out[y, x, start + c] = the 2x bilinear upsample of ``src`` (h, w, k) at full-resolution
    pixel (y0 + y, x0 + x), channel c, for every (y, x) of ``out`` (nothing outside is computed)."""
    h, k = src.shape[0], src.shape[2]
    height, width = out.shape[0], out.shape[1]
    ring = np.empty((3, width, k), np.float32)
    ids = np.full(3, -1, np.int64)
    for y in range(height):
        gy = y0 + y
        i = gy >> 1
        if gy & 1 == 0:  # even row: rows i - 1 and i (the first: row 0 alone)
            a_row, b_row, lone = i - 1, i, i == 0
        else:  # odd row: rows i and i + 1 (the last: row h - 1 alone)
            a_row, b_row, lone = i, i + 1, i == h - 1
        if lone:
            cur = ring[_slot(src, i, ring, ids, x0)]
            for x in range(width):
                for c in range(k):
                    out[y, x, start + c] = cur[x, c]
            continue
        sa = _slot(src, a_row, ring, ids, x0)
        sb = _slot(src, b_row, ring, ids, x0)
        ra, rb = ring[sa], ring[sb]
        if gy & 1 == 0:
            for x in range(width):
                for c in range(k):
                    a, b = ra[x, c], rb[x, c]
                    out[y, x, start + c] = b + (a - b) * _QUARTER
        else:
            for x in range(width):
                for c in range(k):
                    a, b = ra[x, c], rb[x, c]
                    out[y, x, start + c] = a - (a - b) * _QUARTER


@numba.njit(cache=True, nogil=True, boundscheck=False)
def planes_into(planes, out, start, y0, x0):  # pragma: no cover (compiled)
    """out[y, x, start + c] = planes[c, y0 + y, x0 + x] over out's rows and columns."""
    k = planes.shape[0]
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            for c in range(k):
                out[y, x, start + c] = planes[c, y0 + y, x0 + x]
