"""Classical (Trainable-Weka-style) multi-scale filter bank, fast enough for interactive use.

Why a pyramid: the filters at scale sigma only carry detail down to about sigma pixels, so for
sigma >= 2 * ``base_sigma`` they are computed on a block-averaged copy of the image (block side
``f``, a power of two, at which the filter's sigma is ``sigma / f ~ base_sigma``) and brought back
with bilinear interpolation. For the band-limited filters (Gaussian, derivatives, DoG, structure
tensor) this changes values by a few percent of their range; for the neighbourhood statistics the
disk of radius sigma is approximated by a disk of radius ``sigma / f`` over blocks (min / max use
block minima / maxima, so they stay true bounds; entropy uses block histograms). Full-resolution
filters only run at sigma < 2 * ``base_sigma``. Set ``pyramid=False`` for exact full-resolution
filters (several times slower at sigma 16).

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

Derivatives are in full-resolution pixel units. All outputs are float32.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.io import to_float01

DEFAULT_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
ALL_FILTERS: tuple[str, ...] = (
    "intensity", "gaussian", "gradient", "hessian", "laplacian", "dog", "structure",
    "mean", "variance", "min", "max", "median", "entropy", "membrane",
)
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
}
MEMBRANE_STATS = ("mean", "std", "median", "max", "min")

Progress = Callable[[int, int], None] | None


def _fmt_sigma(s: float) -> str:
    return f"{s:g}"


def feature_names(
    n_channels: int = 1,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: Sequence[str] = ALL_FILTERS,
) -> list[str]:
    """The name of every output channel, in order (``c{i}:`` prefix for multi-channel images)."""
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
    if n_channels == 1:
        return base
    return [f"c{c}:{n}" for c in range(n_channels) for n in base]


def _check_filters(filters: Sequence[str], sigmas: Sequence[float]) -> None:
    unknown = [f for f in filters if f not in ALL_FILTERS]
    if unknown:
        raise ConfigError(f"unknown classical filter(s) {unknown}; choose from {list(ALL_FILTERS)}.")
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
    """Sigma to use at block side f so that block averaging (variance f^2/12) + filter + bilinear
    upsampling (about f^2/6) add up to a Gaussian of ``sigma`` at full resolution."""
    if f == 1 or sigma <= 0:
        return sigma
    return math.sqrt(max(sigma * sigma - f * f / 4.0, (0.5 * f) ** 2)) / f


def _disk(radius: float) -> np.ndarray:
    r = max(1, int(round(radius)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + 1e-9


def _eig2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (max, min) of the symmetric 2x2 matrices [[a, b], [b, c]], elementwise."""
    half_tr = (a + c) * 0.5
    disc = np.sqrt(((a - c) * 0.5) ** 2 + b * b)
    return half_tr + disc, half_tr - disc


def _sobel(x: np.ndarray, axis: int) -> np.ndarray:
    return ndi.sobel(x, axis=axis, mode="reflect") * np.float32(0.125)


def _diff(x: np.ndarray, axis: int) -> np.ndarray:
    """Central difference (one pass; edges replicate their neighbour): cheaper than Sobel on a blurred image."""
    d = np.empty_like(x)
    if axis == 1:
        np.subtract(x[:, 2:], x[:, :-2], out=d[:, 1:-1])
        d[:, 0], d[:, -1] = d[:, 1], d[:, -2]
    else:
        np.subtract(x[2:], x[:-2], out=d[1:-1])
        d[0], d[-1] = d[1], d[-2]
    d *= np.float32(0.5)
    return d


def _diff2(x: np.ndarray, axis: int) -> np.ndarray:
    """Second difference x[i+1] - 2 x[i] + x[i-1]."""
    d = np.empty_like(x)
    if axis == 1:
        np.add(x[:, 2:], x[:, :-2], out=d[:, 1:-1])
        d[:, 1:-1] -= 2 * x[:, 1:-1]
        d[:, 0], d[:, -1] = d[:, 1], d[:, -2]
    else:
        np.add(x[2:], x[:-2], out=d[1:-1])
        d[1:-1] -= 2 * x[1:-1]
        d[0], d[-1] = d[1], d[-2]
    return d


# --------------------------------------------------------------------------- per-level filters

def _gauss_group(
    x: np.ndarray, s_lvl: float, prev_lvl: float, f: int, filters: Sequence[str], jac: tuple | None = None
) -> dict:
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
    if "structure" in filters and jac is not None:
        # jac: block means of the full-resolution gradient products, so the inner scale stays 1 px
        jxx, jyy, jxy = (ndi.gaussian_filter(j, s_lvl, truncate=3.0) for j in jac)
        out["structure_max"], out["structure_min"] = _eig2(jxx, jxy, jyy)
    return out


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


def _rank_group(mean_img, min_img, max_img, hist, r_lvl: float, filters: Sequence[str]) -> dict:
    """Disk statistics at one level; ``hist`` is (bins, h, w) block histograms, or at full
    resolution the (h, w) uint8 grey-bin image."""
    out: dict[str, np.ndarray] = {}
    fp = _disk(r_lvl)
    w = (fp / fp.sum()).astype(np.float32)
    if "mean" in filters or "variance" in filters:
        m = ndi.correlate(mean_img, w, mode="reflect")
        if "mean" in filters:
            out["mean"] = m
        if "variance" in filters:
            out["variance"] = np.maximum(ndi.correlate(mean_img * mean_img, w, mode="reflect") - m * m, 0)
    if "min" in filters:
        out["min"] = ndi.grey_erosion(min_img, footprint=fp, mode="reflect")
    if "max" in filters:
        out["max"] = ndi.grey_dilation(max_img, footprint=fp, mode="reflect")
    if "median" in filters:
        out["median"] = ndi.median_filter(mean_img, footprint=fp, mode="reflect")
    if "entropy" in filters and hist is not None and hist.ndim == 2:
        if fp.sum() == 5:
            out["entropy"] = _cross_entropy_r1(hist, int(hist.max()) + 1)
        else:  # larger disk at full resolution (pyramid off): one-hot maps, averaged over the disk
            hist = np.stack([(hist == b).astype(np.float32) for b in range(int(hist.max()) + 1)])
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


def _upsample(stack: np.ndarray, f: int) -> np.ndarray:
    """(C, h, w) -> (h*f, w*f, C) bilinear, block-centre aligned (torch is multi-threaded here)."""
    t = torch.from_numpy(stack)[None].contiguous(memory_format=torch.channels_last)
    up = F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1)[0].numpy()


# --------------------------------------------------------------------------- public entry point

def classical_features(
    image: np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: Sequence[str] = ALL_FILTERS,
    *,
    base_sigma: float = 1.0,
    pyramid: bool = True,
    membrane_size: int = 19,
    membrane_angles: int = 8,
    entropy_bins: int = 8,
    n_threads: int | None = None,
    progress: Progress = None,
) -> np.ndarray:
    """(H, W, F) float32 filter responses; channel ``i`` is ``feature_names(...)[i]``.

    ``image``: (H, W) grey or (H, W, C) colour, any dtype (mapped to [0, 1] by ``to_float01``
    per channel for float/16-bit images, /255 for uint8).
    """
    sigmas = tuple(float(s) for s in sigmas)
    filters = tuple(filters)
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
    out = np.empty((H, W, len(names)), np.float32)
    levels = sorted({_level_of(s, base_sigma, pyramid) for s in sigmas})
    fmax = levels[-1]
    Hp, Wp = -(-H // fmax) * fmax, -(-W // fmax) * fmax
    workers = n_threads or min(8, os.cpu_count() or 1)
    jobs: list[tuple[int, Callable[[], dict], int, str]] = []  # (channel, fn, level, sigma label)

    for ci, x in enumerate(chans):
        prefix = "" if len(chans) == 1 else f"c{ci}:"
        if "intensity" in filters:
            out[..., index[prefix + "intensity"]] = x
        # pyramids of block means / minima / maxima / histograms
        xp = np.pad(x, ((0, Hp - H), (0, Wp - W)), mode="edge") if (Hp, Wp) != (H, W) else x
        pyr = {1: (xp, xp, xp)}
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
            jacs[2 * f] = None if jacs[f] is None else tuple(_block(j, "mean") for j in jacs[f])
            h = hists[f]
            hists[2 * f] = None
            if h is not None and h.ndim == 2:  # grey bins -> fraction of each bin per 2x2 block
                hists[2 * f] = np.stack([_block((h == b).astype(np.float32), "mean") for b in range(entropy_bins)])
            elif h is not None:
                hists[2 * f] = np.stack([_block(hb, "mean") for hb in h])
            f *= 2
        prev = 0.0
        for s in sigmas:
            lv = _level_of(s, base_sigma, pyramid)
            m, mn, mx = pyr[lv]
            lab = prefix + "{}_s" + _fmt_sigma(s)
            if any(k in filters for k in ("gaussian", "gradient", "hessian", "laplacian", "dog", "structure")):
                jobs.append((ci, lambda m=m, s=s, p=prev, lv=lv: _gauss_group(
                    m, _level_sigma(s, lv), _level_sigma(p, lv), lv, filters, jacs[lv]), lv, lab))
            if any(k in filters for k in ("mean", "variance", "min", "max", "median", "entropy")):
                jobs.append(
                    (ci, lambda m=m, mn=mn, mx=mx, lv=lv, s=s: _rank_group(m, mn, mx, hists[lv], s / lv, filters), lv, lab)
                )
            prev = s
        if "membrane" in filters:  # thin lines survive 2x2 averaging at half contrast: run at half size
            mlv = 2 if pyramid and fmax >= 2 else 1
            msize = membrane_size // mlv + 1 if mlv > 1 else membrane_size
            jobs.append((ci, lambda m=pyr[mlv][0], ms=msize: _membrane(m, ms, membrane_angles), mlv, prefix + "{}"))

    total = len(jobs)

    def run(job) -> int:
        _, fn, lv, lab = job
        res = fn()
        keys = sorted(res, key=lambda k: index[lab.format(k)])  # name order: one block copy
        if lv == 1:
            for k in keys:
                out[..., index[lab.format(k)]] = res[k][:H, :W]
        else:
            up = _upsample(np.stack([res[k] for k in keys]), lv)
            idx = [index[lab.format(k)] for k in keys]
            if idx == list(range(idx[0], idx[0] + len(idx))):
                out[..., idx[0] : idx[0] + len(idx)] = up[:H, :W]
            else:
                for j, i in enumerate(idx):
                    out[..., i] = up[:H, :W, j]
        return 1

    done = 0
    if workers <= 1:
        for job in jobs:
            done += run(job)
            if progress:
                progress(done, total)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # big (full-resolution) jobs first so the small ones fill the gaps
            order = sorted(jobs, key=lambda j: j[2])
            for r in pool.map(run, order):
                done += r
                if progress:
                    progress(done, total)
    return out
