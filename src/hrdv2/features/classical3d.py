"""Classical filters on volumes: Gaussian, gradient, Hessian, DoG and structure tensor in 3D.

Why a separate module: a (Z, Y, X) stack can be featurised slice by slice with the 2D bank
(:mod:`hrdv2.features.classical`), but membranes and organelles cut obliquely by the slices are
only seen for what they are by filters that look across slices too (ilastik's 3D mode). These
filters run at full resolution with exact separable Gaussians (``scipy.ndimage``), so that a
brick computed with :func:`classical3d_halo` voxels of context equals the whole volume.

Anisotropic voxels (``spacing = (z, y, x)``, any unit): lengths are measured in voxels of the
*finest* axis. With ``rel = spacing / min(spacing)`` the Gaussian of ``sigma`` uses
``sigma / rel[a]`` voxels along axis ``a`` and derivatives along ``a`` are divided by ``rel[a]``
(per finest voxel). For the usual FIB-SEM / CT case (z coarsest, y = x) this is: sigmas in xy
pixels, ``--spacing 4,1,1`` blurs 4x fewer slices than pixels. Only spacing ratios matter:
``(8, 2, 2)`` gives the same features as ``(4, 1, 1)``.

Feature list (names from :func:`feature_names_3d`; eigenvalues sorted max, mid, min):

* ``intensity``: the voxel value.
* per sigma ``s``: ``gaussian_s``; ``gradient_s`` (magnitude of the central-difference gradient
  of the blurred volume); ``hessian_{max,mid,min}_s`` (eigenvalues of the second differences of
  the blurred volume); ``dog_s`` (blur at ``s`` minus blur at the previous sigma, or minus the
  volume for the first); ``structure_{max,mid,min}_s`` (eigenvalues of the structure tensor: the
  outer product of the gradient at ``s``, integrated by a Gaussian of ``s / 2``: reusing the
  gradient that ``gradient_s`` needs anyway makes the inner scale free; the six integration
  blurs still make the whole bank ~4x slower than the default, hence opt-in).

Boundaries: ``mode="reflect"`` (scipy's: ``d c b a | a b c d``) for every Gaussian, and the
difference stencils repeat the edge voxel, which for a 1-voxel reach is the same rule. Gaussians
are truncated at ``TRUNCATE = 4`` sigma (scipy's default). All outputs are float32.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage as ndi

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.stencils import central_difference as _diff
from hrdv2.features.stencils import second_difference as _diff2
from hrdv2.features.classical import DEFAULT_SIGMAS, crop_window, grow_window

VOLUME_FILTERS: tuple[str, ...] = ("intensity", "gaussian", "gradient", "hessian", "dog", "structure")
# The 2D default selection minus what has no 3D counterpart here (the disk variance); the structure
# tensor is opt-in as in 2D: six extra blurs per sigma (128^3: 5 s default, 23 s with it, measured).
DEFAULT_FILTERS_3D: tuple[str, ...] = ("intensity", "gaussian", "gradient", "hessian", "dog")
FILTER_PRESETS_3D: dict[str, tuple[str, ...]] = {"default": DEFAULT_FILTERS_3D, "all": VOLUME_FILTERS}
TRUNCATE = 4.0  # Gaussian support in sigmas (scipy's default); the halo follows from it
MODE = "reflect"
SPACING_HELP = "--spacing takes three positive numbers z,y,x, e.g. 4,1,1"
_PER_SIGMA: dict[str, tuple[str, ...]] = {
    "gaussian": ("gaussian",),
    "gradient": ("gradient",),
    "hessian": ("hessian_max", "hessian_mid", "hessian_min"),
    "dog": ("dog",),
    "structure": ("structure_max", "structure_mid", "structure_min"),
}
_EIG_CHUNK = 1 << 15  # voxels per float64 eigenvalue pass: its ~20 temporaries stay in cache (5 MB)

Progress = Callable[[int, int], None] | None


# --------------------------------------------------------------------------- configuration

def check_spacing(spacing: str | Sequence[float]) -> tuple[float, float, float]:
    """``(z, y, x)`` voxel spacing as three positive finite floats, from a sequence or ``"4,1,1"``."""
    try:
        items = spacing.split(",") if isinstance(spacing, str) else list(spacing)
        values = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing {spacing!r} is not three numbers; {SPACING_HELP}.") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"spacing {spacing!r} is not valid; {SPACING_HELP}.")
    return values  # type: ignore[return-value]


def relative_spacing(spacing: str | Sequence[float]) -> tuple[float, float, float]:
    """Spacing in units of the finest axis (its smallest value is 1): what sigmas are measured in."""
    values = check_spacing(spacing)
    low = min(values)
    return tuple(v / low for v in values)  # type: ignore[return-value]


def resolve_filters_3d(filters: str | Sequence[str]) -> tuple[str, ...]:
    """Filter names from a preset (``"default"``, ``"all"``), a comma-separated string or a list,
    in canonical (output-channel) order without duplicates; unknown names raise ConfigError."""
    items = filters.split(",") if isinstance(filters, str) else list(filters)
    chosen: set[str] = set()
    for item in (str(i).strip() for i in items):
        chosen.update(FILTER_PRESETS_3D.get(item, (item,) if item else ()))
    unknown = sorted(chosen.difference(VOLUME_FILTERS))
    if unknown:
        raise ConfigError(
            f"unknown 3D filter(s) {unknown}; choose from {list(VOLUME_FILTERS)} or a preset {list(FILTER_PRESETS_3D)}."
        )
    if not chosen:
        raise ConfigError("the 3D feature set is empty; give at least one filter, e.g. 'default'.")
    return tuple(f for f in VOLUME_FILTERS if f in chosen)


def _check_sigmas(sigmas: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in sigmas)
    if not values or any(not (math.isfinite(s) and s > 0) for s in values) or list(values) != sorted(set(values)):
        raise ConfigError(f"sigmas must be positive and increasing, got {list(sigmas)}; e.g. 1,2,4,8,16.")
    return values


def feature_names_3d(
    sigmas: Sequence[float] = DEFAULT_SIGMAS, filters: str | Sequence[str] = DEFAULT_FILTERS_3D
) -> list[str]:
    """The name of every output channel of :func:`classical_features_3d`, in order."""
    chosen = resolve_filters_3d(filters)
    names = ["intensity"] if "intensity" in chosen else []
    for s in _check_sigmas(sigmas):
        for f in VOLUME_FILTERS:
            if f in chosen and f in _PER_SIGMA:
                names.extend(f"{n}_s{s:g}" for n in _PER_SIGMA[f])
    return names


def _radius(sigma_vox: float) -> int:
    """Half-width of scipy's Gaussian kernel for this sigma (``int(truncate * sigma + 0.5)``)."""
    return int(TRUNCATE * sigma_vox + 0.5)


def classical3d_halo(
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: str | Sequence[str] = DEFAULT_FILTERS_3D,
    spacing: str | Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[int, int, int]:
    """Per-axis (z, y, x) context in voxels that makes brick-wise features equal whole-volume ones.

    An interior edge of a brick's read window corrupts a filter's output up to its reach: the
    Gaussian kernel radius, + 1 for the difference stencils (gradient, Hessian; the mixed second
    difference reaches 1 along each of its two axes), and for the structure tensor + the radius of
    its ``s / 2`` integration blur as well. DoG's second blur is at a smaller sigma."""
    chosen = resolve_filters_3d(filters)
    rel = relative_spacing(spacing)
    halo = [0, 0, 0]
    for s in _check_sigmas(sigmas):
        for a in range(3):
            r = _radius(s / rel[a])
            reach = 0
            if "gaussian" in chosen or "dog" in chosen:
                reach = r
            if "gradient" in chosen or "hessian" in chosen:
                reach = max(reach, r + 1)
            if "structure" in chosen:
                reach = max(reach, r + 1 + _radius(0.5 * s / rel[a]))
            halo[a] = max(halo[a], reach)
    return (halo[0], halo[1], halo[2])


# --------------------------------------------------------------------------- numerics

def _eigvalsh3(a11, a22, a33, a12, a13, a23) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (max, mid, min) of symmetric 3x3 matrices given by their six entries (1-d arrays).

    Closed form (trigonometric solution of the characteristic cubic) in float64, in place where
    it can: ~5x faster than ``np.linalg.eigvalsh`` on stacked matrices (measured); near a double
    eigenvalue its error is about ``1e-8`` of the matrix norm, far below float32 resolution."""
    a11, a22, a33, a12, a13, a23 = (np.array(v, np.float64) for v in (a11, a22, a33, a12, a13, a23))
    q = a11 + a22
    q += a33
    q *= 1.0 / 3.0
    a11 -= q  # from here on the diagonal of A - q I
    a22 -= q
    a33 -= q
    t = a23 * a23
    p = a12 * a12
    p += a13 * a13
    p += t
    p *= 2.0
    p += a11 * a11
    p += a22 * a22
    p += a33 * a33
    p *= 1.0 / 6.0
    np.sqrt(p, out=p)
    r = a22 * a33  # r: det(A - q I) / (2 p^3), then the angle
    r -= t
    r *= a11
    u = a12 * a33
    u -= a23 * a13
    u *= a12
    r -= u
    np.multiply(a12, a23, out=u)
    u -= a22 * a13
    u *= a13
    r += u
    np.maximum(p, 1e-30, out=u)  # p == 0: a multiple of the identity, r = 0 and every eigenvalue is q
    u **= 3
    u *= 2.0
    r /= u
    np.clip(r, -1.0, 1.0, out=r)
    np.arccos(r, out=r)
    r *= 1.0 / 3.0
    c, s = np.cos(r), np.sin(r)
    e_max = c * (2.0 * p)
    e_max += q
    e_min = c * -1.0  # 2 cos(phi + 2 pi / 3) = -cos(phi) - sqrt(3) sin(phi)
    e_min -= math.sqrt(3.0) * s
    e_min *= p
    e_min += q
    e_mid = q * 3.0
    e_mid -= e_max
    e_mid -= e_min
    return e_max, e_mid, e_min


def _eig_into(planes: np.ndarray, entries: Sequence[np.ndarray]) -> None:
    """planes[0:3] = eigenvalues (max, mid, min) of the six same-shape ``entries``, in chunks
    small enough for the float64 temporaries to stay in cache."""
    flat = [np.ascontiguousarray(e).reshape(-1) for e in entries]
    dst = planes.reshape(3, -1)
    n = dst.shape[1]
    for i in range(0, n, _EIG_CHUNK):
        for j, e in enumerate(_eigvalsh3(*(v[i : i + _EIG_CHUNK] for v in flat))):
            dst[j, i : i + _EIG_CHUNK] = e


def _as_volume(volume01: np.ndarray) -> np.ndarray:
    """The (Z, Y, X) float32 volume to filter; refuses colour and other shapes with the fix."""
    vol = np.asarray(volume01)
    if vol.ndim == 4 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim == 4 and vol.shape[-1] in (3, 4):
        raise ConfigError(
            f"the 3D filters take grey volumes, got shape {vol.shape} (colour); convert it to grey first, "
            "or featurise it slice by slice in 2D."
        )
    if vol.ndim != 3:
        raise ShapeError(f"3D classical features need a (Z, Y, X) volume, got shape {vol.shape}.")
    if vol.dtype == np.uint8:
        return vol.astype(np.float32) / np.float32(255)
    if vol.dtype.kind != "f":
        raise ConfigError(
            f"3D classical features take float volumes in [0, 1] or uint8, got {vol.dtype}; normalise it first "
            "(hrdv2.features.blockwise.image_normalisation + normalise_block)."
        )
    return np.ascontiguousarray(vol, dtype=np.float32)


Window = tuple[slice, slice, slice]


def _within(inner: Window, outer: Window) -> Window:
    """``inner`` in the coordinates of ``outer`` (which contains it)."""
    r = [slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer)]
    return (r[0], r[1], r[2])


def _gauss_window(x: np.ndarray, sigmas: Sequence[float], window: Window) -> np.ndarray:
    """``ndi.gaussian_filter(x, sigmas)[window]``, computed only where later passes need it.

    The separable passes run in scipy's order (z, y, x); after each pass the array is cut to the
    window along that axis, so the y pass skips the z halo and the x pass the y halo too (for a
    brick with a halo as wide as itself, ~1.7x less work). Each kept voxel sees exactly the lines
    it sees in ``gaussian_filter``: the values are the same."""
    for a in range(3):
        x = ndi.gaussian_filter1d(x, sigmas[a], axis=a, mode=MODE, truncate=TRUNCATE)
        cut: list[slice] = [slice(None)] * 3
        cut[a] = window[a]
        x = x[tuple(cut)]
    return x


# --------------------------------------------------------------------------- entry point

def classical_features_3d(
    volume01: np.ndarray,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    filters: str | Sequence[str] = DEFAULT_FILTERS_3D,
    spacing: str | Sequence[float] = (1.0, 1.0, 1.0),
    progress: Progress = None,
    *,
    crop: Sequence[slice] | None = None,
) -> np.ndarray:
    """(Z, Y, X, F) float32 filter responses of a grey (Z, Y, X) volume; channel ``i`` is
    ``feature_names_3d(sigmas, filters)[i]``.

    ``volume01``: float in [0, 1] (used as given) or uint8 (/ 255). ``spacing``: (z, y, x) voxel
    size (see the module docstring for the units). ``progress``: ``(done, total)`` callable, one
    step per sigma. ``crop``: return only this window of the result (e.g. a brick's
    :attr:`~hrdv2.blocks.Block.crop`), with the values the whole call would have there; the
    filters then skip most of the halo (see :func:`_gauss_window`) and the output costs F floats
    per written voxel, not per read voxel.
    """
    sig = _check_sigmas(sigmas)
    chosen = resolve_filters_3d(filters)
    rel = relative_spacing(spacing)
    vol = _as_volume(volume01)
    names = feature_names_3d(sig, chosen)
    index = {n: i for i, n in enumerate(names)}
    win = crop_window(crop, vol.shape)
    out_shape = tuple(w.stop - w.start for w in win)
    out = np.empty(out_shape + (len(names),), np.float32)
    n_int = int("intensity" in chosen)
    per_sigma = (len(names) - n_int) // len(sig)  # one sigma's channels, contiguous in ``out``
    planes = np.empty((per_sigma,) + out_shape, np.float32)  # ... computed channel-first
    derivs = any(f in chosen for f in ("gradient", "hessian", "structure"))

    if n_int:
        out[..., 0] = vol[win]
    prev = vol[win]
    for k, s in enumerate(sig):
        label = f"_s{s:g}"
        first = n_int + k * per_sigma

        def plane(name: str) -> np.ndarray:
            return planes[index[name + label] - first]

        # g is needed on the output window grown by the reach of what is computed from it
        margin = [0, 0, 0]
        if derivs:
            margin = [1 + (_radius(0.5 * s / r) if "structure" in chosen else 0) for r in rel]
        gwin = grow_window(win, margin, vol.shape)
        inner = _within(win, gwin)
        g = _gauss_window(vol, [s / r for r in rel], gwin)
        if "gaussian" in chosen:
            plane("gaussian")[...] = g[inner]
        if "dog" in chosen:
            np.subtract(g[inner], prev, out=plane("dog"))
            prev = g[inner].copy()  # the blur at s on the window, for the next sigma
        grads: list[np.ndarray] = []
        if derivs:
            grads = [_diff(g, a) for a in range(3)]
            for a in range(3):
                if rel[a] != 1.0:
                    grads[a] *= np.float32(1.0 / rel[a])
        if "gradient" in chosen:
            mag = plane("gradient")
            np.square(grads[0][inner], out=mag)
            mag += np.square(grads[1][inner])
            mag += np.square(grads[2][inner])
            np.sqrt(mag, out=mag)
        if "hessian" in chosen:
            inv = [np.float32(1.0 / r) for r in rel]
            hessian = (
                _diff2(g, 0)[inner] * (inv[0] * inv[0]),
                _diff2(g, 1)[inner] * (inv[1] * inv[1]),
                _diff2(g, 2)[inner] * (inv[2] * inv[2]),
                _diff(grads[0], 1)[inner] * inv[1],
                _diff(grads[0], 2)[inner] * inv[2],
                _diff(grads[1], 2)[inner] * inv[2],
            )
            i0 = index["hessian_max" + label] - first
            _eig_into(planes[i0 : i0 + 3], hessian)
            del hessian
        if "structure" in chosen:
            outer = [0.5 * s / r for r in rel]
            pairs = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
            tensor = [_gauss_window(grads[i] * grads[j], outer, inner) for i, j in pairs]
            i0 = index["structure_max" + label] - first
            _eig_into(planes[i0 : i0 + 3], tensor)
            del tensor
        del grads, g
        # one transposing copy per sigma: writing channel by channel into the channel-last output
        # would sweep all of its memory once per channel
        np.copyto(out[..., first : first + per_sigma], np.moveaxis(planes, 0, -1))
        if progress is not None:
            progress(k + 1, len(sig))
    return out
