"""Exact, fast ``predict_proba`` of scikit-learn random forests (and extra-trees) on many rows.

Why: applying a classical model to a large image is dominated by the forest (sklearn: ~1 s per
Mpx for 40 trees of depth 10 on 2 cores). sklearn walks one tree over *all* rows at a time,
streaming the feature matrix through memory once per tree and accumulating float64 arrays per
tree. Here every tree is packed once per model into flat arrays, and a compiled kernel (numba,
imported only when predicting) takes a small group of rows through all trees while they stay in
L1 cache:

* nodes: 4 words each (feature, threshold, left, right child) in one buffer, so a step touches one
  cache line; a leaf points to itself, so each tree is walked a fixed ``max_depth`` steps without
  a data-dependent branch. Thresholds become the largest float32 <= sklearn's float64 threshold,
  which decides ``x <= thr`` identically for float32 ``x``; NaN follows ``missing_go_to_left``;
* leaves: class probabilities of each tree normalised exactly like sklearn's
  ``DecisionTreeClassifier.predict_proba``, summed in float64 in tree order and divided by the
  number of trees (the forest's own averaging), so results equal sklearn's to float rounding and
  labels (argmax) are identical.

Rows are split over ``threads`` Python threads running the ``nogil`` kernel (not numba's
``parallel=True``: its default threading layer may not be called from several threads at once,
and the web app predicts from worker threads). Without numba, :func:`fast_forest` returns None
(after one warning) and the caller keeps sklearn.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# rows walked through the trees together: their features (group x F float32) stay in L1; ~18 KB
# (128 rows of the default 36 features) was 4-5 % faster than 64 or 256 rows here (measured)
GROUP_BYTES = 18 * 1024
MIN_ROWS_PER_THREAD = 16_384  # below this, one thread (thread start-up would cost more than it saves)
# importing numba and loading the cached kernel costs ~1 s per process (more on a busy machine), what
# the kernel saves on ~1-2 Mpx: smaller calls keep sklearn until the kernel is loaded anyway
FAST_MIN_ROWS = 1 << 20
KERNEL_MODULE = "hrdv2.segmentation._forest_kernel"


def group_rows(n_features: int) -> int:
    """Rows per group for rows of ``n_features`` float32 values (16..256)."""
    return max(16, min(256, GROUP_BYTES // (4 * max(1, n_features))))


@dataclass(frozen=True)
class PackedForest:
    """Every tree of a fitted forest in flat arrays (node ids are global over the forest)."""

    nodes: np.ndarray  # (4 * nodes,) uint32: feature, threshold (float32 bits), left, right (leaf: 0, +inf, self, self)
    missing_right: np.ndarray  # (nodes,) uint8: 1 where NaN goes to the right child
    value: np.ndarray  # (nodes, K) float64: each node's normalised class probabilities
    roots: np.ndarray  # (trees,) int64
    depths: np.ndarray  # (trees,) int64: steps from the root to the deepest leaf
    n_features: int

    @property
    def n_classes(self) -> int:
        return int(self.value.shape[1])

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])


def supports(model: Any) -> bool:
    """True for fitted single-output RandomForestClassifier / ExtraTreesClassifier models."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return (isinstance(model, (RandomForestClassifier, ExtraTreesClassifier)) and hasattr(model, "estimators_")
            and getattr(model, "n_outputs_", 1) == 1 and len(model.estimators_) > 0)


def float32_threshold(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: for every float32 ``x``, ``x <= t64`` exactly
    when ``x <= t32`` (sklearn compares float32 features with float64 thresholds)."""
    with np.errstate(over="ignore"):  # beyond float32's range: +-inf, then the largest finite below
        t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def pack_forest(model: Any) -> PackedForest:
    """Flatten a fitted forest (see :func:`supports`) once; cheap (vectorised per tree)."""
    trees = [est.tree_ for est in model.estimators_]
    k = int(model.n_classes_)
    sizes = np.array([t.node_count for t in trees], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n = int(sizes.sum())
    if n >= 2**32:
        raise ValueError(f"forest of {n} nodes is too large to pack (limit 2^32).")
    nodes = np.zeros((n, 4), np.uint32)
    thresholds = nodes.view(np.float32)
    missing_right = np.zeros(n, np.uint8)
    value = np.empty((n, k), np.float64)
    for t, off in zip(trees, offsets):
        m = t.node_count
        ids = np.arange(off, off + m, dtype=np.int64)
        left, right = t.children_left.astype(np.int64), t.children_right.astype(np.int64)
        leaf = left == -1
        block = nodes[off:off + m]
        block[:, 0] = np.where(leaf, 0, t.feature)
        thresholds[off:off + m, 1] = np.where(leaf, np.inf, float32_threshold(t.threshold))
        block[:, 2] = np.where(leaf, ids, left + off)
        block[:, 3] = np.where(leaf, ids, right + off)
        go_left = getattr(t, "missing_go_to_left", None)
        if go_left is not None:
            missing_right[off:off + m] = np.where(leaf, 0, np.asarray(go_left) == 0)
        # DecisionTreeClassifier.predict_proba: value[:, 0, :n_classes] / its row sum (0 -> 1)
        v = np.asarray(t.value[:, 0, :k], np.float64)
        norm = v.sum(axis=1, keepdims=True)
        norm[norm == 0.0] = 1.0
        value[off:off + m] = v / norm
    return PackedForest(nodes.ravel(), missing_right, value, offsets,
                        np.array([t.max_depth for t in trees], np.int64), int(model.n_features_in_))


def _kernel_module() -> Any:
    """The compiled kernels' module (numba imported here, never at module import; compiled once,
    cached on disk)."""
    import importlib

    return importlib.import_module(KERNEL_MODULE)


def _kernel() -> Callable[..., None]:
    """The compiled forest kernel (see :func:`_kernel_module`)."""
    return _kernel_module().predict_rows


def predict_proba(packed: PackedForest, x: np.ndarray, threads: int = 1,
                  out: np.ndarray | None = None) -> np.ndarray:
    """(N, K) class probabilities of (N, F) rows: float64, or written into ``out`` (e.g. float32,
    rounded once from the float64 mean, as casting sklearn's result would)."""
    if x.ndim != 2 or x.shape[1] != packed.n_features:
        raise ValueError(f"rows of shape {x.shape}; the forest needs (N, {packed.n_features}).")
    x = np.ascontiguousarray(x, dtype=np.float32)  # sklearn predicts on float32 rows too
    if out is None:
        out = np.empty((x.shape[0], packed.n_classes), np.float64)
    kernel = _kernel()
    p = packed
    nan_aware = bool(p.missing_right.any()) and bool(np.isnan(x).any())
    args = (p.n_features, p.nodes, p.nodes.view(np.float32), p.missing_right, p.value, p.roots, p.depths,
            group_rows(p.n_features), nan_aware)
    n = x.shape[0]
    parts = max(1, min(int(threads), n // MIN_ROWS_PER_THREAD))
    if parts == 1:
        kernel(x.ravel(), *args, out)
        return out
    edges = np.linspace(0, n, parts + 1).astype(np.int64)
    with ThreadPoolExecutor(parts) as pool:
        futures = [pool.submit(kernel, x[a:b].ravel(), *args, out[a:b]) for a, b in zip(edges[:-1], edges[1:])]
        for f in futures:
            f.result()
    return out


def labels_of(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``classes[np.argmax(probs, axis=-1)]`` for (..., K) probabilities without NaN; compiled when
    the forest kernel is loaded anyway (~15x faster), else numpy's (the same labels)."""
    import sys

    if KERNEL_MODULE not in sys.modules or probs.ndim < 2:
        return classes[np.argmax(probs, axis=-1)]
    rows = probs.reshape(-1, probs.shape[-1])
    out = np.empty(rows.shape[0], classes.dtype)
    _kernel_module().argmax_rows(rows, classes, out)
    return out.reshape(probs.shape[:-1])


def forest_threads(model: Any) -> int:
    """The thread count sklearn itself would use for this model (its ``n_jobs``, joblib's rules)."""
    from joblib import effective_n_jobs

    return max(1, int(effective_n_jobs(getattr(model, "n_jobs", None))))


@dataclass(frozen=True)
class FastForest:
    """A packed forest and its thread count; called like ``predict_proba`` (picklable, no closure)."""

    packed: PackedForest
    threads: int

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        """``threads``: overrides the model's own count (1 when blocks already run side by side)."""
        return predict_proba(self.packed, x, self.threads if threads is None else threads, out)


class _Owner:
    """A throwaway cache holder: a blend's forest is packed once, inside the blend's own entry."""


@dataclass(frozen=True)
class FastBlend:
    """``auto``'s blend (:func:`hrdv2.features.auto.blend`): the compiled forest's probabilities
    weighted with the logistic regression's, as the soft-voting classifier computes them. The
    pipeline's scaler is folded into the coefficients (one float32 matrix product: ~10x less time
    than the pipeline's float64 path on a 1024² block; equal to it within float32 rounding)."""

    forest: FastForest
    weights: np.ndarray  # (k, F) float32: coefficients / scale; k = 1 for two classes
    bias: np.ndarray  # (k,) float32: intercept - coefficients . (mean / scale)
    share: float

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
        out = self.forest(x, out, threads)
        d = x @ self.weights.T
        d += self.bias
        if d.shape[1] == 1:  # binary: sklearn's expit of the one decision, as [1 - p, p]
            p = 1.0 / (1.0 + np.exp(-d[:, 0]))
            linear = np.stack([1.0 - p, p], axis=1)
        else:  # multinomial: softmax
            d -= d.max(axis=1, keepdims=True)
            np.exp(d, out=d)
            linear = d / d.sum(axis=1, keepdims=True)
        out *= np.float32(1.0 - self.share)
        out += np.float32(self.share) * linear
        return out


def folded_linear(pipe: Any) -> tuple[np.ndarray, np.ndarray]:
    """(weights, bias) in float32 of a StandardScaler + LogisticRegression pipeline: its decision
    function as one affine map, ``x @ weights.T + bias``."""
    scaler, lr = pipe[0], pipe[-1]
    coef = np.asarray(lr.coef_, np.float64) / np.asarray(scaler.scale_, np.float64)
    bias = np.asarray(lr.intercept_, np.float64) - coef @ np.asarray(scaler.mean_, np.float64)
    return coef.astype(np.float32), bias.astype(np.float32)


def is_linear_pipeline(model: Any) -> bool:
    """Exactly a StandardScaler + LogisticRegression pipeline (``make_classifier("logistic")``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = getattr(model, "steps", None) if type(model) is Pipeline else None
    return isinstance(steps, list) and [type(s[1]) if isinstance(s, tuple) and len(s) == 2 else None
                                        for s in steps] == [StandardScaler, LogisticRegression]


def blend_parts(model: Any) -> tuple[Any, Any, float] | None:
    """(forest, linear, linear share) of ``auto``'s blend (:func:`hrdv2.features.auto.blend`), else
    None. The one recogniser of its shape, which the model-file checks allow and the compiled apply
    runs: a soft-voting VotingClassifier of exactly one RandomForestClassifier and one
    :func:`is_linear_pipeline`, with two finite non-negative float weights."""
    from sklearn.ensemble import RandomForestClassifier, VotingClassifier

    if type(model) is not VotingClassifier or model.voting != "soft":
        return None
    members, weights = getattr(model, "estimators_", None), model.weights
    if not (isinstance(members, list) and len(members) == 2 and type(members[0]) is RandomForestClassifier
            and is_linear_pipeline(members[1]) and isinstance(weights, list) and len(weights) == 2
            and all(isinstance(w, float) and np.isfinite(w) and w >= 0 for w in weights) and sum(weights) > 0):
        return None
    return members[0], members[1], weights[1] / sum(weights)


def fast_forest(owner: Any, model: Any, rows: int | None = None) -> FastForest | FastBlend | None:
    """A callable ``fn(rows, out=None)`` equal to ``model.predict_proba(rows)`` (None: keep
    sklearn's), packed once and cached on ``owner`` (the Segmenter) for as long as its ``model`` is
    the same object; it runs on as many threads as sklearn would (the model's ``n_jobs``).
    ``rows``: the size of the call; below ``FAST_MIN_ROWS`` numba is not imported for it."""
    import sys

    if rows is not None and rows < FAST_MIN_ROWS and KERNEL_MODULE not in sys.modules:
        return None
    cached = getattr(owner, "_fast_forest", None)
    if cached is not None and cached[0] is model:
        return cached[1]
    fn = None
    parts = blend_parts(model)
    if parts is not None:  # the forest part compiled, the linear part folded into one affine map
        forest = fast_forest(_Owner(), parts[0], rows)
        fn = None if forest is None else FastBlend(forest, *folded_linear(parts[1]), parts[2])
    elif supports(model):
        try:
            _kernel()
        except ImportError as exc:
            warnings.warn(f"numba is not importable ({exc}); random-forest prediction falls back to scikit-learn, "
                          "which is 2-4x slower. Install it: pip install numba", stacklevel=3)
        else:
            fn = FastForest(pack_forest(model), forest_threads(model))
    owner._fast_forest = (model, fn)
    return fn
