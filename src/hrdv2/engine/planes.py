"""Deep features of a (Z, Y, X) volume from its 2-D slices, optionally along all three axes.

A ViT sees 2-D images, so a volume's deep features come from its slices. ``planes="xy"``
featurises every xy slice (one per z). ``planes="xyz"`` also featurises every xz slice (one per
y) and every yz slice (one per x), brings each stack of slice features back to (Z, Y, X, C) and
averages the three: each voxel then sees context along all three axes (the tri-planar idea of
3-D uses of 2-D networks), at three times the ViT work.

Anisotropic voxels (``spacing = (z, y, x)``): an xz (yz) slice has pixels of z by x (z by y), so
its z axis is first resampled linearly to pixels as long as the in-plane ones (``round(Z * z /
x)`` rows), featurised, and the features resampled back to Z rows (linear, pixel centres
aligned). xy slices are featurised as they are.

Memory: the whole (Z, Y, X, C) float32 result is held (accumulated slice by slice in place, no
per-axis copy); volumes whose features exceed :data:`MAX_PLANES_BYTES` (or the available memory)
are refused up front. Bounded-memory (brick-wise) tri-planar features are not implemented.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from hrdv2.errors import ConfigError, ShapeError

MAX_PLANES_BYTES = 4 << 30  # e.g. 128^3 voxels of ViT-S features (384 float32 channels) = 3.2 GB
MIN_SIDE = 4  # the ViT's smallest image side (as hrdv2.engine.core.check_image)

SliceFeatures = Callable[[np.ndarray], np.ndarray]  # (h, w) float [0, 1] -> (h, w, C) float32


def planes_bytes(shape: tuple[int, int, int], channels: int) -> int:
    """Bytes of the (Z, Y, X, C) float32 features that :func:`plane_features` holds."""
    z, y, x = (int(v) for v in shape)
    return 4 * z * y * x * int(channels)


def check_planes_size(shape: tuple[int, int, int], channels: int, name: str = "volume") -> None:
    """Refuse, in one line, volumes whose whole-volume features cannot be held."""
    from hrdv2.io import require_memory

    need = planes_bytes(shape, channels)
    if need > MAX_PLANES_BYTES:
        raise ShapeError(f"{name}: deep features of a {'x'.join(map(str, shape))} volume over planes need "
                         f"{need / 1e9:.1f} GB ({channels} channels, whole volume held); the limit is "
                         f"{MAX_PLANES_BYTES / 1e9:.1f} GB. Crop the volume, or use per-slice deep features "
                         "(planes xy without --volume, block-wise) or classical 3-D features.")
    require_memory(need, f"deep features over planes of {name}")


def resample_axis0(a: np.ndarray, n: int) -> np.ndarray:
    """Linear resampling of ``a`` along axis 0 to ``n`` rows, pixel centres aligned (edge rows
    repeated beyond the ends); ``n == len(a)`` returns ``a`` unchanged."""
    m = a.shape[0]
    if n == m:
        return a
    pos = (np.arange(n, dtype=np.float64) + 0.5) * (m / n) - 0.5
    pos = np.clip(pos, 0.0, m - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    w = (pos - lo).astype(np.float32).reshape((n,) + (1,) * (a.ndim - 1))
    return (a[lo] * (1 - w) + a[hi] * w).astype(np.float32, copy=False)


def _iso_rows(nz: int, dz: float, d_in: float) -> int:
    return max(MIN_SIDE, int(round(nz * dz / d_in)))


def plane_features(volume01: np.ndarray, featurise: SliceFeatures, planes: str = "xyz",
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), progress: Any = None) -> np.ndarray:
    """(Z, Y, X, C) float32 deep features of a normalised (Z, Y, X) volume, averaged over ``planes``.

    ``featurise`` maps one 2-D slice to its (h, w, C) features (the engine's HR-Dv2 featurizer).
    ``progress``: an optional tqdm-like object (``update(n)``), advanced once per slice.
    """
    if planes not in ("xy", "xyz"):
        raise ConfigError(f"unknown planes {planes!r}; choose xy or xyz.")
    if volume01.ndim != 3:
        raise ShapeError(f"planes need a grey (Z, Y, X) volume, got shape {volume01.shape}.")
    nz, ny, nx = volume01.shape
    dz, dy, dx = (float(v) for v in spacing)
    if min(ny, nx) < MIN_SIDE or (planes == "xyz" and nz < 2):
        raise ShapeError(f"volume {nz}x{ny}x{nx} (ZxYxX) is too small for deep features over planes {planes}: "
                         f"Y and X need at least {MIN_SIDE} px, Z at least 2 slices.")
    out: np.ndarray | None = None

    def step() -> None:
        if progress is not None:
            progress.update(1)

    for z in range(nz):
        f = featurise(volume01[z])
        if out is None:
            out = np.empty((nz, ny, nx, f.shape[-1]), np.float32)
        out[z] = f
        step()
    assert out is not None
    if planes == "xy":
        return out
    rows_xz, rows_yz = _iso_rows(nz, dz, dx), _iso_rows(nz, dz, dy)
    for y in range(ny):  # xz slices: (Z, X) -> isotropic rows -> features -> back to Z rows
        f = featurise(resample_axis0(volume01[:, y, :], rows_xz))
        out[:, y] += resample_axis0(f, nz)
        step()
    for x in range(nx):  # yz slices: (Z, Y)
        f = featurise(resample_axis0(volume01[:, :, x], rows_yz))
        out[:, :, x] += resample_axis0(f, nz)
        step()
    out /= np.float32(3.0)
    return out


def n_slices(shape: tuple[int, int, int], planes: str) -> int:
    """How many 2-D slices :func:`plane_features` featurises (for progress bars)."""
    z, y, x = shape
    return z if planes == "xy" else z + y + x
