"""The compiled kernel of :mod:`hrdv2.segmentation.forest` (imports numba: import this module only
to predict; ``cache=True`` keeps the machine code on disk, so only the first run ever compiles).

Indices are unsigned on purpose: numba adds a negative-index wrap-around to every signed index,
which more than doubled the instructions of the inner step (measured: 2.4x slower)."""

from __future__ import annotations

import numba
import numpy as np

_U = np.uint64


@numba.njit(cache=True, nogil=True, boundscheck=False)
def predict_rows(x, n_features, nodes_i, nodes_f, missing_right, value, roots, depths, group, nan_aware,
                 out):  # pragma: no cover (compiled)
    """out[i] = mean over trees of the leaf class probabilities that row i reaches.

    ``x``: the (N * F) float32 rows, flat. ``nodes_i``/``nodes_f``: one buffer seen as uint32 and
    float32, 4 words per node: feature, threshold, left child, right child. Rows go through the
    trees ``group`` at a time; within a tree the group advances one level per step (independent
    walks, so the CPU overlaps their loads); leaves point to themselves, so ``depths[t]`` steps
    end every walk at a leaf. Sums are float64 in tree order, like sklearn's."""
    n = x.shape[0] // n_features
    k = value.shape[1]
    n_trees = roots.shape[0]
    stride = _U(n_features)
    node = np.empty(group, np.uint32)
    acc = np.empty((group, k), np.float64)
    for start in range(0, n, group):
        g = min(group, n - start)
        acc[:g] = 0.0
        for t in range(n_trees):
            root = np.uint32(roots[t])
            for r in range(g):
                node[r] = root
            for _ in range(depths[t]):
                base = _U(start) * stride
                for r in range(g):
                    nd = _U(node[r])
                    i = nd << _U(2)
                    v = x[base + _U(nodes_i[i])]
                    go = _U(1) if v > nodes_f[i + _U(1)] else _U(0)
                    if nan_aware and v != v:  # NaN: sklearn's missing_go_to_left
                        go = _U(missing_right[nd])
                    node[r] = nodes_i[i + _U(2) + go]
                    base += stride
            for r in range(g):
                nd = _U(node[r])
                for c in range(k):
                    acc[r, c] += value[nd, c]
        for r in range(g):
            for c in range(k):
                out[start + r, c] = acc[r, c] / n_trees


@numba.njit(cache=True, nogil=True, boundscheck=False)
def argmax_rows(probs, classes, out):  # pragma: no cover (compiled)
    """out[i] = classes[first c with the largest probs[i, c]] (np.argmax's rule for rows without
    NaN), in one pass: numpy's argmax along a 4-wide last axis took ~30 ms per Mpx (measured)."""
    k = probs.shape[1]
    for i in range(probs.shape[0]):
        best = probs[i, 0]
        arg = 0
        for c in range(1, k):
            v = probs[i, c]
            if v > best:
                best = v
                arg = c
        out[i] = classes[arg]
