"""Classical (Trainable-Weka-style) multi-scale filter bank, fast enough for interactive use.

Why a pyramid: the filters at scale sigma only carry detail down to about sigma pixels, so for
sigma >= 2 * ``base_sigma`` they are computed on a block-averaged copy of the image (block side
``f``, a power of two, at which the filter's sigma is ``sigma / f ~ base_sigma``) and brought back
by a cascade of 2x bilinear steps (coarsest level first, each level joining on the way; only the
last step touches full resolution, in bands of rows). For the band-limited filters (Gaussian,
derivatives, DoG, structure tensor) this changes values by a few percent of their range; for the
neighbourhood statistics the disk of radius sigma is approximated by a disk of radius ``sigma / f``
over blocks (mean / variance use block means of x and x^2, min / max block minima / maxima, so
they stay true bounds; entropy uses block histograms). Full-resolution filters only run at
sigma < 2 * ``base_sigma`` (the structure tensor even then integrates on 2x2 blocks). Set
``pyramid=False`` for exact full-resolution filters (several times slower at sigma 16).
The default selection (:data:`DEFAULT_FILTERS`) is part of the bank; ``filters="weka"`` is the
published HR-Dv2 code's default (:data:`WEKA_FILTERS`); ``filters="all"`` gives all.

Feature list (per image channel; names come from :func:`feature_names`):

* ``intensity``: the raw value in [0, 1].
* per sigma ``s``: ``gaussian_s``, ``gradient_s`` (Sobel magnitude of the blurred image),
  ``hessian_max_s`` / ``hessian_min_s`` / ``hessian_det_s`` (eigenvalues and determinant of the
  Hessian of the blurred image), ``laplacian_s`` (the Hessian trace, i.e. Laplacian of Gaussian;
  one channel serves as both), ``dog_s`` (blur at ``s`` minus blur at the previous sigma, or minus
  the raw image for the first), ``structure_max_s`` / ``structure_min_s`` (eigenvalues of the
  structure tensor integrated at ``s``), and over a disk of radius ``s``: ``mean_s``,
  ``variance_s``, ``min_s``, ``max_s``, ``median_s``, ``entropy_s`` (bits, ``entropy_bins`` grey
  bins).
* ``membrane_{mean,std,median,max,min}``: projections over ``membrane_angles`` orientations of
  a 1-px line kernel ``membrane_size`` px long (Weka's membrane projections; the sum is left out
  because it is the mean times a constant).
* ``deriv3_s`` / ``deriv4_s``, ``neighbour_{dir}_s``, ``bilateral_r{r}_t{t}``: higher-order
  derivatives, shifted copies and range-limited means (:mod:`hrdv2.features.extra_filters`).

Derivatives are in full-resolution pixel units. All outputs are float32.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features import extra_filters as _extra
from hrdv2.features.extra_filters import bilateral_names, derivative_names, neighbour_names
from hrdv2.features.stencils import central_difference as _diff
from hrdv2.features.stencils import second_difference as _diff2
from hrdv2.io import to_float01

# Bumped whenever the values of existing channels change, so that models trained before can say so
# (2: variance from block means of x^2, cascaded 2x return of the pyramid levels, nearest-edge Sobel).
CLASSICAL_VERSION = 2
DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
ALL_FILTERS: tuple[str, ...] = (
    "intensity", "gaussian", "gradient", "hessian", "laplacian", "dog", "structure",
    "mean", "variance", "min", "max", "median", "entropy", "membrane", "derivatives", "neighbours", "bilateral",
)
# The default selection, chosen by measurement (benchmarks/wss.py; table in docs/segmentation.md):
# with it both a random forest and logistic regression beat the scikit-image reference on all six
# labelled sets in ../shared/data, where the full bank lost with a random forest on two (tcell,
# sofc), and it is 36 channels per image channel instead of 81. The rest (membrane projections,
# mean / min / max / median, entropy, Laplacian, structure tensor) is opt-in: ``filters="all"``
# or a list. Trainable Weka Segmentation, too, switches on only part of its bank by default.
DEFAULT_FILTERS: tuple[str, ...] = ("intensity", "gaussian", "gradient", "hessian", "dog", "variance")
# The default of the published HR-Dv2 code's Weka-style bank (hr_dv2/wss/features.py,
# DEAFAULT_WEKA_FEATURES, tldr-group/HR-Dv2 @ 107a1ad): Gaussian blur, Sobel, Hessian (eigenvalues,
# trace, determinant), differences of Gaussians and membrane projections, plus the raw image.
# Differences kept by hrdv2 (docs/segmentation.md): true sigmas (the published code blurs at
# 0.4 sigma, as Weka), DoG between neighbouring scales only, 8 membrane orientations instead of 30.
WEKA_FILTERS: tuple[str, ...] = ("intensity", "gaussian", "gradient", "hessian", "laplacian", "dog", "membrane")
FILTER_PRESETS: dict[str, tuple[str, ...]] = {"default": DEFAULT_FILTERS, "weka": WEKA_FILTERS, "all": ALL_FILTERS}
_PER_SIGMA: dict[str, tuple[str, ...]] = {
    "gaussian": ("gaussian",),
    "gradient": ("gradient",),
    "hessian": ("hessian_max", "hessian_min", "hessian_det"),
    "laplacian": ("laplacian",),
    "dog": ("dog",),
    "structure": ("structure_max", "structure_min"),
    "mean": ("mean",),
    "variance": ("variance",),
    "min": ("min",),
    "max": ("max",),
    "median": ("median",),
    "entropy": ("entropy",),
    "derivatives": derivative_names(),
    "neighbours": neighbour_names(),
}
MEMBRANE_STATS = ("mean", "std", "median", "max", "min")

Progress = Callable[[int, int], None] | None


def _fmt_sigma(s: float) -> str:
    return f"{s:g}"


def resolve_filters(filters: str | Sequence[str]) -> tuple[str, ...]:
    """Filter names from a preset (``"default"``, ``"weka"``, ``"all"``), a comma-separated string or a list;
    presets inside a list expand, so ``"default,structure"`` is the default set plus the
    structure tensor. Returned in canonical (output-channel) order without duplicates, so equal
    selections give equal configs and cache keys; unknown names are kept for the error message."""
    items = filters.split(",") if isinstance(filters, str) else list(filters)
    chosen: set[str] = set()
    for item in (str(i).strip() for i in items):
        chosen.update(FILTER_PRESETS.get(item, (item,) if item else ()))
    unknown = sorted(chosen.difference(ALL_FILTERS))
    return tuple(f for f in ALL_FILTERS if f in chosen) + tuple(unknown)


def feature_names(
    n_channels: int = 1,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: str | Sequence[str] = DEFAULT_FILTERS,
) -> list[str]:
    """The name of every output channel, in order (``c{i}:`` prefix for multi-channel images)."""
    filters = resolve_filters(filters)
    _check_filters(filters, sigmas)
    base: list[str] = []
    if "intensity" in filters:
        base.append("intensity")
    for s in sigmas:
        for f in ALL_FILTERS:
            if f in filters and f in _PER_SIGMA:
                base.extend(f"{n}_s{_fmt_sigma(s)}" for n in _PER_SIGMA[f])
    if "membrane" in filters:
        base.extend(f"membrane_{st}" for st in MEMBRANE_STATS)
    if "bilateral" in filters:
        base.extend(bilateral_names())
    if n_channels == 1:
        return base
    return [f"c{c}:{n}" for c in range(n_channels) for n in base]


def _check_filters(filters: Sequence[str], sigmas: Sequence[float]) -> None:
    unknown = [f for f in filters if f not in ALL_FILTERS]
    if unknown:
        raise ConfigError(
            f"unknown classical filter(s) {unknown}; choose from {list(ALL_FILTERS)} or a preset {list(FILTER_PRESETS)}."
        )
    if not filters:
        raise ConfigError("classical feature set is empty; give at least one filter.")
    if any(not (float(s) > 0) for s in sigmas) or list(sigmas) != sorted(sigmas):
        raise ConfigError(f"sigmas must be positive and increasing, got {list(sigmas)}.")


# --------------------------------------------------------------------------- pyramid helpers

def _level_of(sigma: float, base_sigma: float, pyramid: bool) -> int:
    """Block side f (power of two) at which a filter of this sigma is computed."""
    if not pyramid:
        return 1
    return 2 ** max(0, int(math.floor(math.log2(max(sigma / base_sigma, 1.0)))))


def _block(x: np.ndarray, reduce: str) -> np.ndarray:
    """2x2 block mean / min / max (x has even sides)."""
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    if reduce == "mean":
        return (a + b + c + d) * np.float32(0.25)
    op = np.minimum if reduce == "min" else np.maximum
    return op(op(a, b), op(c, d))


def _level_sigma(sigma: float, f: int) -> float:
    """Sigma to use at block side f so that block averaging (variance (f^2 - 1) / 12), the filter
    and the return to full resolution by repeated 2x bilinear steps (a triangle of half-width p
    adds p^2 / 6 at each step p = f, f/2, ..., 2: (f^2 - 1) * 2 / 9 in all) add up to a Gaussian
    of ``sigma`` at full resolution."""
    if f == 1 or sigma <= 0:
        return sigma
    added = (f * f - 1) * (1.0 / 12 + 2.0 / 9)
    return math.sqrt(max(sigma * sigma - added, (0.5 * f) ** 2)) / f


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + 1e-9


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (max, min) of the symmetric 2x2 matrices [[a, b], [b, c]], elementwise."""
    half_tr = (a + c) * 0.5
    disc = np.sqrt(((a - c) * 0.5) ** 2 + b * b)
    return half_tr + disc, half_tr - disc


def _smooth121(x: np.ndarray, axis: int) -> np.ndarray:
    """[1, 2, 1] / 4 along ``axis`` with ``nearest`` edges (same as ``reflect`` for 3 taps)."""
    out = x * np.float32(2)
    src, dst = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    dst[1:] += src[:-1]
    dst[:-1] += src[1:]
    dst[0] += src[0]
    dst[-1] += src[-1]
    out *= np.float32(0.25)
    return out


def _sobel(x: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative normalised to unit gain: a [1, 2, 1] / 4 smoothing across ``axis``, then
    a central difference along it (slice arithmetic, ~10x faster than ``ndi.sobel`` on a 1024^2
    image, measured; it runs at every sigma). Equals ``ndi.sobel(x, axis, mode="nearest") / 8``."""
    return _diff(_smooth121(x, 1 - axis), axis)


# --------------------------------------------------------------------------- per-level filters

def _gauss_group(x: np.ndarray, s_lvl: float, prev_lvl: float, f: int, filters: Sequence[str]) -> dict:
    """Filters derived from the Gaussian blur at one level (sigma in level pixels)."""
    out: dict[str, np.ndarray] = {}
    g = ndi.gaussian_filter(x, s_lvl, mode="reflect", truncate=3.0)
    if "gaussian" in filters:
        out["gaussian"] = g
    if "dog" in filters:
        prev = ndi.gaussian_filter(x, prev_lvl, mode="reflect", truncate=3.0) if prev_lvl >= 0.3 else x
        out["dog"] = g - prev
    if any(k in filters for k in ("gradient", "hessian", "laplacian")):
        gx, gy = _sobel(g, 1), _sobel(g, 0)
        if "gradient" in filters:
            out["gradient"] = np.hypot(gx, gy) / np.float32(f)
        if "hessian" in filters or "laplacian" in filters:
            inv = np.float32(1.0 / (f * f))
            hxx, hyy, hxy = _diff2(g, 1) * inv, _diff2(g, 0) * inv, _diff(gx, 0) * inv
            if "hessian" in filters:
                out["hessian_max"], out["hessian_min"] = _eig2(hxx, hxy, hyy)
                out["hessian_det"] = hxx * hyy - hxy * hxy
            if "laplacian" in filters:
                out["laplacian"] = hxx + hyy
    return out


def _structure_group(jac: tuple, s_lvl: float) -> dict:
    """Structure-tensor eigenvalues; ``jac`` holds block means of the full-resolution gradient
    products (so the inner scale stays 1 px whatever the level), integrated at ``s_lvl``."""
    jxx, jyy, jxy = (ndi.gaussian_filter(j, s_lvl, truncate=3.0) for j in jac)
    smax, smin = _eig2(jxx, jxy, jyy)
    return {"structure_max": smax, "structure_min": smin}


def _cross_entropy_r1(q: np.ndarray, bins: int) -> np.ndarray:
    """Entropy (bits) of the grey-bin histogram over the 5-px cross, by pairwise equality counts:
    H = log2(5) - mean_i log2(c_i), c_i = how many of the 5 share pixel i's bin (uint8 work only)."""
    p = np.pad(q, 1, mode="reflect")
    h, w = q.shape
    nb = [p[1:-1, 1:-1], p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]
    cnt = [np.ones((h, w), np.uint8) for _ in nb]
    for i in range(5):
        for j in range(i + 1, 5):
            eq = (nb[i] == nb[j]).view(np.uint8)
            cnt[i] += eq
            cnt[j] += eq
    prod = cnt[0].astype(np.uint16)
    for c in cnt[1:]:
        prod *= c
    lut = (np.log2(5.0) - np.log2(np.maximum(np.arange(3126), 1)) / 5.0).astype(np.float32)
    return lut[prod]


def _rank_group(mean_img, sq_img, min_img, max_img, hist, r_lvl: float, filters: Sequence[str], bins: int) -> dict:
    """Disk statistics at one level. ``mean_img`` / ``sq_img`` are block means of x and x^2 (so the
    variance over the disk keeps the within-block part that block averaging removes from x);
    ``hist`` is (bins, h, w) block histograms, or at full resolution the (h, w) uint8 grey-bin image
    (``bins`` grey bins: every bin counts, so a window's result never depends on which it holds)."""
    out: dict[str, np.ndarray] = {}
    fp = _disk(r_lvl)
    w = (fp / fp.sum()).astype(np.float32)
    if "mean" in filters or "variance" in filters:
        m = ndi.correlate(mean_img, w, mode="reflect")
        if "mean" in filters:
            out["mean"] = m
        if "variance" in filters:
            sq = mean_img * mean_img if sq_img is None else sq_img
            out["variance"] = np.maximum(ndi.correlate(sq, w, mode="reflect") - m * m, 0)
    if "min" in filters:
        out["min"] = ndi.grey_erosion(min_img, footprint=fp, mode="reflect")
    if "max" in filters:
        out["max"] = ndi.grey_dilation(max_img, footprint=fp, mode="reflect")
    if "median" in filters:
        out["median"] = ndi.median_filter(mean_img, footprint=fp, mode="reflect")
    if "entropy" in filters and hist is not None and hist.ndim == 2:
        if fp.sum() == 5:
            out["entropy"] = _cross_entropy_r1(hist, bins)
        else:  # larger disk at full resolution (pyramid off): one-hot maps, averaged over the disk
            hist = np.stack([(hist == b).astype(np.float32) for b in range(bins)])
    if "entropy" in filters and hist is not None and hist.ndim == 3:
        ent = np.zeros(mean_img.shape, np.float32)
        for b in range(hist.shape[0]):
            p = ndi.correlate(hist[b], w, mode="reflect")
            np.clip(p, 1e-12, 1.0, out=p)
            ent -= p * np.log2(p)
        out["entropy"] = np.maximum(ent, 0)
    return out


def _membrane(x: np.ndarray, size: int, n_angles: int) -> dict:
    """Projections of line-kernel responses over orientations (shifted adds: the kernel is sparse)."""
    half = size // 2
    pad = np.pad(x, half, mode="reflect")
    h, w = x.shape
    resp = np.empty((n_angles, h, w), np.float32)
    for a in range(n_angles):
        th = math.pi * a / n_angles
        acc = resp[a]
        acc[...] = 0
        offs = {(int(round(t * math.sin(th))), int(round(t * math.cos(th)))) for t in range(-half, half + 1)}
        for dy, dx in offs:
            acc += pad[half + dy : half + dy + h, half + dx : half + dx + w]
        acc /= np.float32(len(offs))
    srt = np.sort(resp, axis=0)
    return {
        "membrane_mean": resp.mean(axis=0),
        "membrane_std": resp.std(axis=0),
        "membrane_median": 0.5 * (srt[(n_angles - 1) // 2] + srt[n_angles // 2]),
        "membrane_max": srt[-1],
        "membrane_min": srt[0],
    }


def _upsample_axis0(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (2n, ...) = 2x linear interpolation of src (n, ...) along axis 0, pixel centres at
    half-pixel offsets, edge samples repeated (the same weights as torch's bilinear with
    ``align_corners=False``: 3/4 and 1/4). Two passes that write the output, one difference."""
    ev, od = dst[0::2], dst[1::2]
    d = np.subtract(src[:-1], src[1:])
    d *= np.float32(0.25)
    np.add(src[1:], d, out=ev[1:])
    np.subtract(src[:-1], d, out=od[:-1])
    ev[0] = src[0]
    od[-1] = src[-1]


COMPILED_MIN_PIXELS = 1 << 20  # images this large use the compiled kernels (numba: ~0.5 s to import)
_KERNEL_MODULE = "hrdv2.features._resample_kernel"


def _compiled(pixels: int):
    """The compiled resampling kernels for an image of ``pixels`` pixels, or None (numpy's). Small
    images never import numba (the classical train stays quick to start); both give the same bits."""
    import sys

    if pixels < COMPILED_MIN_PIXELS and _KERNEL_MODULE not in sys.modules:
        return None
    try:
        import importlib

        return importlib.import_module(_KERNEL_MODULE)
    except ImportError:  # numba missing: numpy's version, same values, slower
        return None


def _upsample2(x: np.ndarray) -> np.ndarray:
    """(h, w, K) -> (2h, 2w, K) bilinear, block-centre aligned, channels last.

    Channels-last keeps the K values of a pixel together, so each step works on contiguous runs
    of K values and the result goes to the (H, W, F) output with row-block copies instead of a
    transpose. Plain numpy (columns on the small array first, then rows), so the classical path
    never imports torch (2-3 s of start-up); within 1.6x of torch's kernel and faster on the
    few-channel levels (measured), equal to it to float32 rounding (~1e-7). The buffers are
    numpy's on purpose: numpy asks the kernel for huge pages on large arrays, and first-touch
    page faults on fresh buffers without them cost ~0.5 ms/MB here (measured)."""
    h, w, k = x.shape
    kernels = _compiled(4 * h * w)
    if kernels is not None:
        buf = np.empty((2 * h, 2 * w, k), np.float32)
        kernels.upsample2_into(np.ascontiguousarray(x, np.float32), buf, 0, 0, 0)
        return buf
    mid = np.empty((h, 2 * w, k), np.float32)
    _upsample_axis0(x.transpose(1, 0, 2), mid.transpose(1, 0, 2))
    buf = np.empty((2 * h, 2 * w, k), np.float32)
    _upsample_axis0(mid, buf)
    return buf


def _runs(idx: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of consecutive output channels: (position in idx, first channel, length)."""
    runs: list[tuple[int, int, int]] = []
    for j, i in enumerate(idx):
        if runs and runs[-1][1] + runs[-1][2] == i:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((j, i, 1))
    return runs


def _write_block(out: np.ndarray, start: int, planes: np.ndarray, origin: tuple[int, int] = (0, 0)) -> None:
    """out[:, :, start:start+C] = planes (C, H', W') from row/column ``origin`` on, cropped to
    out's size: one transposing copy (compiled for large images; else numpy's, single-threaded on
    purpose: torch's parallel copy of these few-channel blocks took 3x longer with 2 threads than
    with 1, measured; likely both threads writing the same lines)."""
    H, W = out.shape[:2]
    (y0, x0) = origin
    kernels = _compiled(H * W)
    if kernels is not None:
        kernels.planes_into(planes, out, start, y0, x0)
        return
    np.copyto(out[:, :, start : start + planes.shape[0]], planes[:, y0 : y0 + H, x0 : x0 + W].transpose(1, 2, 0))


_BAND = 64  # output rows per step of the last upsampling (even)


def _cascade(pending: dict[int, list[tuple[list[int], np.ndarray]]], out: np.ndarray,
             origin: tuple[int, int] = (0, 0)) -> None:
    """Bring every pyramid level back to full resolution in one chain: coarsest level up 2x, joined
    by the next level's channels, up 2x again, ... so each value is interpolated in a few cheap
    small steps and only one (H, W, K) upsample touches full resolution, and only inside ``out``,
    whose pixel (0, 0) is full-resolution pixel ``origin``."""
    H, W = out.shape[:2]
    oy, ox = origin
    acc: np.ndarray | None = None
    acc_idx: list[int] = []
    f = max(pending)
    while f >= 2:
        # a fixed channel order whatever order the threads finished in: the vectorised kernel
        # rounds a channel's value differently depending on its lane, and results must be repeatable
        parts = sorted(pending.get(f, []), key=lambda part: part[0][0])
        if parts:
            mine = np.concatenate([p for _, p in parts]).transpose(1, 2, 0)  # (h, w, k_f)
            idx = [i for ix, _ in parts for i in ix]
            acc = mine if acc is None else np.concatenate([mine, acc], axis=-1)
            acc_idx = idx + acc_idx
        if acc is not None and f > 2:
            acc = _upsample2(acc)
        f //= 2
    if acc is None:
        return
    runs = _runs(acc_idx)
    kernels = _compiled(H * W)
    if kernels is not None:  # the last 2x step computed straight into each run of output channels
        for j, start, n in runs:
            kernels.upsample2_into(np.ascontiguousarray(acc[:, :, j : j + n]), out, start, oy, ox)
        return
    # the last 2x step straight into the output, a band of rows at a time: no full-size
    # temporary, and each band is still in cache when it is copied
    h = acc.shape[0]
    for y0 in range(0, H, _BAND):
        y1 = min(y0 + _BAND, H)
        g0, g1 = oy + y0, oy + y1  # full-resolution rows
        r0, r1 = max(g0 // 2 - 1, 0), min((g1 + 1) // 2 + 1, h)  # source rows + 1-row halo
        up = _upsample2(acc[r0:r1])[g0 - 2 * r0 : g1 - 2 * r0, ox : ox + W]
        for j, start, n in runs:
            np.copyto(out[y0:y1, :, start : start + n], up[:, :, j : j + n])


# --------------------------------------------------------------------------- public entry point

def classical_features(
    image: np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: str | Sequence[str] = DEFAULT_FILTERS,
    *,
    base_sigma: float = 1.0,
    pyramid: bool = True,
    membrane_size: int = 19,
    membrane_angles: int = 8,
    entropy_bins: int = 8,
    n_threads: int | None = None,
    progress: Progress = None,
    crop: Sequence[slice] | None = None,
) -> np.ndarray:
    """(H, W, F) float32 filter responses; channel ``i`` is ``feature_names(...)[i]``.

    ``image``: (H, W) grey or (H, W, C) colour, any dtype (mapped to [0, 1] by ``to_float01``
    per channel for float/16-bit images, /255 for uint8). ``crop``: (rows, columns) slices with
    steps of 1: only that window of the result is returned (C-contiguous), with the values of the
    whole call there; the full-resolution output (most of the memory traffic) is only made there.
    """
    sigmas = tuple(float(s) for s in sigmas)
    filters = resolve_filters(filters)
    _check_filters(filters, sigmas)
    if image.ndim not in (2, 3):
        raise ShapeError(f"classical features need an (H, W) or (H, W, C) image, got shape {image.shape}.")
    chans = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    if image.dtype == np.uint8:
        chans = [c.astype(np.float32) / np.float32(255) for c in chans]
    elif image.dtype == np.float32 and image.size and 0.0 <= float(image.min()) and float(image.max()) <= 1.0:
        chans = [np.ascontiguousarray(c) for c in chans]  # already in [0, 1] (normalised upstream)
    else:
        chans = [to_float01(np.ascontiguousarray(c)) for c in chans]
    H, W = chans[0].shape
    names = feature_names(len(chans), sigmas, filters)
    index = {n: i for i, n in enumerate(names)}
    window = crop_window(crop, (H, W))
    origin = (window[0].start, window[1].start)
    out = np.empty((window[0].stop - origin[0], window[1].stop - origin[1], len(names)), np.float32)
    levels = sorted({_level_of(s, base_sigma, pyramid) for s in sigmas})
    fmax = levels[-1]
    Hp, Wp = -(-H // fmax) * fmax, -(-W // fmax) * fmax
    workers = n_threads or min(8, os.cpu_count() or 1)
    jobs: list[tuple[int, Callable[[], dict], int, str]] = []  # (channel, fn, level, sigma label)

    # full-resolution jobs only need the window plus their own support: cut there (same values)
    full_res = _fine_window(window, (Hp, Wp), sigmas, filters, base_sigma, pyramid, membrane_size)
    full_res_origin = (origin[0] - full_res[0].start, origin[1] - full_res[1].start)

    for ci, x in enumerate(chans):
        prefix = "" if len(chans) == 1 else f"c{ci}:"
        xf = x[full_res]
        if "intensity" in filters:
            jobs.append((ci, lambda x=xf: {"intensity": x}, 1, prefix + "{}"))
        # pyramids of block means / minima / maxima / histograms
        xp = np.pad(x, ((0, Hp - H), (0, Wp - W)), mode="edge") if (Hp, Wp) != (H, W) else x
        pyr = {1: (xp, xp, xp)}
        squares: dict[int, np.ndarray | None] = {1: None}  # block means of x^2, for the variance
        hists: dict[int, np.ndarray | None] = {1: None}
        if "entropy" in filters:
            hists[1] = np.minimum((xp * entropy_bins).astype(np.uint8), entropy_bins - 1)
        jacs: dict[int, tuple | None] = {1: None}
        if "structure" in filters:
            ix, iy = _diff(xp, 1), _diff(xp, 0)
            jacs[1] = (ix * ix, iy * iy, ix * iy)
        f = 1
        while f < fmax:
            m, mn, mx = pyr[f]
            pyr[2 * f] = (_block(m, "mean"), _block(mn, "min"), _block(mx, "max"))
            if "variance" in filters:
                squares[2 * f] = _block(m * m if squares[f] is None else squares[f], "mean")
            jacs[2 * f] = None if jacs[f] is None else tuple(_block(j, "mean") for j in jacs[f])
            h = hists[f]
            hists[2 * f] = None
            if h is not None and h.ndim == 2:  # grey bins -> fraction of each bin per 2x2 block
                hists[2 * f] = np.stack([_block((h == b).astype(np.float32), "mean") for b in range(entropy_bins)])
            elif h is not None:
                hists[2 * f] = np.stack([_block(hb, "mean") for hb in h])
            f *= 2
        # level 1 as the full-resolution jobs see it: cut to the fine window (pyramid levels above
        # were built from the whole image)
        xpf = xp[full_res]
        pyr[1] = (xpf, xpf, xpf)
        hists[1] = None if hists[1] is None else hists[1][full_res]
        jacs[1] = None if jacs[1] is None else tuple(j[full_res] for j in jacs[1])
        prev = 0.0
        for s in sigmas:
            lv = _level_of(s, base_sigma, pyramid)
            m, mn, mx = pyr[lv]
            lab = prefix + "{}_s" + _fmt_sigma(s)
            if any(k in filters for k in ("gaussian", "gradient", "hessian", "laplacian", "dog")):
                jobs.append((ci, lambda m=m, s=s, p=prev, lv=lv: _gauss_group(
                    m, _level_sigma(s, lv), _level_sigma(p, lv), lv, filters), lv, lab))
            if "structure" in filters:
                # the integration window is smooth by construction: even at sigma 1 it is computed on
                # 2x2 blocks (4x fewer pixels; 2x2 averaging + bilinear return is itself a ~1 px blur)
                slv = max(lv, 2) if 2 in jacs else lv
                jobs.append((ci, lambda s=s, slv=slv: _structure_group(jacs[slv], _level_sigma(s, slv)), slv, lab))
            if any(k in filters for k in ("mean", "variance", "min", "max", "median", "entropy")):
                jobs.append(
                    (ci, lambda m=m, mn=mn, mx=mx, lv=lv, s=s: _rank_group(
                        m, squares.get(lv), mn, mx, hists[lv], s / lv, filters, entropy_bins), lv, lab)
                )
            if "derivatives" in filters:
                jobs.append((ci, lambda m=m, s=s, lv=lv: _extra.derivatives(m, _level_sigma(s, lv), lv), lv, lab))
            if "neighbours" in filters:  # shifted copies of the raw image: full resolution, a copy each
                jobs.append((ci, lambda x=xf, s=s: _extra.neighbours(x, s), 1, lab))
            prev = s
        if "membrane" in filters:  # thin lines survive 2x2 averaging at half contrast: run at half size
            mlv = 2 if pyramid and fmax >= 2 else 1
            msize = membrane_size // mlv + 1 if mlv > 1 else membrane_size
            jobs.append((ci, lambda m=pyr[mlv][0], ms=msize: _membrane(m, ms, membrane_angles), mlv, prefix + "{}"))
        if "bilateral" in filters:
            jobs.append((ci, lambda x=xf: _extra.bilateral(x), 1, prefix + "{}"))

    total = len(jobs) + 1  # + the return of the pyramid levels to full resolution
    pending: dict[int, list[tuple[list[int], np.ndarray]]] = {}  # level -> (channel ids, (k, h, w))

    def run(job) -> int:
        _, fn, lv, lab = job
        res = fn()
        keys = sorted(res, key=lambda k: index[lab.format(k)])  # name order: contiguous channels
        idx = [index[lab.format(k)] for k in keys]
        planes = np.stack([res[k] for k in keys])
        if lv > 1:
            pending.setdefault(lv, []).append((idx, planes))  # upsampled together by _cascade
        else:
            for j, start, n in _runs(idx):
                _write_block(out, start, planes[j : j + n], full_res_origin)
        return 1

    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    coarse = [j for j in jobs if j[2] > 1]
    fine = [j for j in jobs if j[2] == 1]
    if workers <= 1:
        for job in coarse + fine:
            run(job)
            tick()
        if pending:
            _cascade(pending, out, origin)
        tick()
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # the small pyramid jobs first, then the cascade (one worker) beside the
            # full-resolution jobs (the other): two busy threads, not three (~15 % faster, measured)
            coarse_done = [pool.submit(run, j) for j in coarse]

            def cascade() -> None:
                for fut in coarse_done:
                    fut.result()
                if pending:
                    _cascade(pending, out, origin)

            cascade_done = pool.submit(cascade)
            fine_done = [pool.submit(run, j) for j in fine]
            for fut in coarse_done + [cascade_done] + fine_done:
                fut.result()
                tick()
    return out


def crop_window(crop: Sequence[slice] | None, shape: Sequence[int]) -> tuple[slice, ...]:
    """``crop`` as plain ``slice(start, stop)`` per axis of ``shape`` (the whole array for None);
    a one-line ShapeError for a wrong axis count, a step other than 1 or an empty window. Shared by
    the 2-D and 3-D filter banks."""
    if crop is None:
        return tuple(slice(0, n) for n in shape)
    crop = tuple(crop)
    if len(crop) != len(shape):
        raise ShapeError(f"crop {crop} needs one slice per axis of shape {tuple(shape)}.")
    out = []
    for sl, n in zip(crop, shape):
        start, stop, step = sl.indices(n)
        if step != 1 or stop <= start:
            raise ShapeError(f"crop {crop} must be non-empty windows with step 1 inside shape {tuple(shape)}.")
        out.append(slice(start, stop))
    return tuple(out)


def grow_window(window: Sequence[slice], margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """``window`` grown by ``margin`` px per axis, clipped to ``shape``."""
    return tuple(slice(max(0, w.start - m), min(n, w.stop + m)) for w, m, n in zip(window, margin, shape))


def _fine_window(window: tuple[slice, slice], padded: tuple[int, int], sigmas: Sequence[float],
                 filters: Sequence[str], base_sigma: float, pyramid: bool, membrane_size: int) -> tuple[slice, slice]:
    """The part of the (padded) image the full-resolution jobs need for ``window``: the window
    grown by their largest support (a :func:`classical_halo` of the level-1 sigmas, which also
    counts the level-1 form of the structure tensor and membranes, so it errs on the large side;
    neighbours shift by every sigma), clipped to the image. Filters see the same pixels around each
    output pixel as on the whole image, so the values are identical (a test holds that); the
    bilateral filter's running box sums are not position-free, so with it nothing is cut."""
    if "bilateral" in filters:  # its box sums run along each line: values depend on where a line starts
        return tuple(slice(0, n) for n in padded)  # type: ignore[return-value]
    fine_sigmas = [s for s in sigmas if _level_of(s, base_sigma, pyramid) == 1]
    margin = classical_halo(fine_sigmas, filters, base_sigma=base_sigma, pyramid=pyramid,
                            membrane_size=membrane_size) if fine_sigmas else 0
    if "membrane" in filters:
        margin = max(margin, classical_halo(sigmas[:1], ["membrane"], base_sigma=1.0, pyramid=False,
                                            membrane_size=membrane_size))
    if "neighbours" in filters and sigmas:
        margin = max(margin, max(1, int(round(max(sigmas)))))
    return grow_window(window, (margin, margin), padded)  # type: ignore[return-value]


# --------------------------------------------------------------------------- block-wise support

def classical_alignment(sigmas: Sequence[float] = DEFAULT_SIGMAS, *, base_sigma: float = 1.0, pyramid: bool = True) -> int:
    """Largest pyramid block side used for these sigmas: a block read window that starts on a
    multiple of it sees the same block means as the whole image (the structure tensor and the
    membrane projections use level 2 at most, which divides it)."""
    return max(_level_of(float(s), base_sigma, pyramid) for s in sigmas) if len(sigmas) else 1


def classical_halo(
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: str | Sequence[str] = DEFAULT_FILTERS,
    *,
    base_sigma: float = 1.0,
    pyramid: bool = True,
    membrane_size: int = 19,
    truncate: float = 3.0,
) -> int:
    """Full-resolution pixels a block must read beyond its write window so that
    :func:`classical_features` of the block equals the whole image's there (read windows aligned
    to :func:`classical_alignment`).

    Per job at level ``f`` with support ``r`` level pixels, a wrong value at a read-window edge
    spreads ``r * f`` px through the filter and less than ``f`` px through the cascade of 2x
    bilinear steps back to full resolution (``f/2 + f/4 + ... + 1``), so ``f * (r + 1)`` covers it.
    The supports mirror the filters above: Gaussian radius ``int(truncate * s + 0.5)`` (scipy's)
    plus 2 for the Sobel / Hessian differences; structure tensor: its Gaussian plus the 1-px
    full-resolution difference; disk statistics: the disk radius; membrane: half the line length.
    """
    sigmas = tuple(float(s) for s in sigmas)
    filters = resolve_filters(filters)
    _check_filters(filters, sigmas)

    def radius(s_lvl: float) -> int:
        return int(truncate * s_lvl + 0.5)

    fmax = classical_alignment(sigmas, base_sigma=base_sigma, pyramid=pyramid)
    halo = 0
    prev = 0.0
    for s in sigmas:
        lv = _level_of(s, base_sigma, pyramid)
        if any(k in filters for k in ("gaussian", "gradient", "hessian", "laplacian", "dog")):
            r = radius(_level_sigma(s, lv)) + 2
            p_lvl = _level_sigma(prev, lv)
            if "dog" in filters and p_lvl >= 0.3:
                r = max(r, radius(p_lvl))
            halo = max(halo, lv * (r + 1) if lv > 1 else r)
        if "structure" in filters:
            slv = max(lv, 2) if fmax >= 2 else lv
            r = radius(_level_sigma(s, slv)) + 1
            halo = max(halo, slv * (r + 1) if slv > 1 else r)
        if any(k in filters for k in ("mean", "variance", "min", "max", "median", "entropy")):
            r = max(1, int(round(s / lv)))
            halo = max(halo, lv * (r + 1) if lv > 1 else r)
        if "derivatives" in filters:
            r = int(_extra.DERIV_TRUNCATE * max(_level_sigma(s, lv), 0.5) + 0.5)
            halo = max(halo, lv * (r + 1) if lv > 1 else r)
        if "neighbours" in filters:
            halo = max(halo, max(1, int(round(s))))
        prev = s
    if "membrane" in filters:
        mlv = 2 if pyramid and fmax >= 2 else 1
        msize = membrane_size // mlv + 1 if mlv > 1 else membrane_size
        r = msize // 2
        halo = max(halo, mlv * (r + 1) if mlv > 1 else r)
    if "bilateral" in filters:
        halo = max(halo, max(r for r, _ in _extra.BILATERAL_SETTINGS))
    return halo
