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

Memory: :func:`plane_features` holds the whole (Z, Y, X, C) float32 result (accumulated slice by
slice in place, no per-axis copy) and is refused above :data:`MAX_PLANES_BYTES` (or the available
memory). Block-wise runs above that use :class:`DiskPlanes`: the same sums in two float32 files in
a scratch folder (``8 * C`` bytes per voxel of disk, ``tempfile.gettempdir()`` by default, so
``TMPDIR`` moves it), written slice by slice and read back window by window (pread / pwrite, no
memory map), so memory holds one slice's features or one window's; the values are bit for bit
those of the in-memory mean.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from hrdv2.errors import ConfigError, ResourceLimitError, ShapeError

MAX_PLANES_BYTES = 4 << 30  # e.g. 128^3 voxels of ViT-S features (384 float32 channels) = 3.2 GB
MIN_SIDE = 4  # the ViT's smallest image side (as hrdv2.engine.core.check_image)

SliceFeatures = Callable[[np.ndarray], np.ndarray]  # (h, w) float [0, 1] -> (h, w, C) float32


def planes_bytes(shape: tuple[int, int, int], channels: int) -> int:
    """Bytes of the (Z, Y, X, C) float32 features that :func:`plane_features` holds."""
    z, y, x = (int(v) for v in shape)
    return 4 * z * y * x * int(channels)


def check_planes_size(shape: tuple[int, int, int], channels: int, name: str = "volume") -> None:
    """Refuse, in one line, volumes whose whole-volume features cannot be held in memory."""
    from hrdv2.io import require_memory

    need = planes_bytes(shape, channels)
    if need > MAX_PLANES_BYTES:
        raise ShapeError(f"{name}: deep features of a {'x'.join(map(str, shape))} volume over planes need "
                         f"{need / 1e9:.1f} GB ({channels} channels, whole volume held); the limit in memory is "
                         f"{MAX_PLANES_BYTES / 1e9:.1f} GB. Run it block-wise (hrdv2 apply / features, or "
                         "BlockFeatures), which keeps them on scratch disk, or crop the volume.")
    require_memory(need, f"deep features over planes of {name}")


def planes_fit_in_memory(shape: tuple[int, int, int], channels: int, limit: int | None = None) -> bool:
    """Whether the whole (Z, Y, X, C) features are at most ``limit`` bytes (None:
    :data:`MAX_PLANES_BYTES`) and fit in the available memory."""
    from hrdv2.io.limits import available_memory_bytes

    limit = MAX_PLANES_BYTES if limit is None else int(limit)
    need = planes_bytes(shape, channels)
    return need <= limit and need <= available_memory_bytes()


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


def iter_slice_features(volume01: Any, featurise: SliceFeatures, planes: str = "xyz",
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   progress: Any = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Every slice's features, in Z rows: ``(axis, index, f)`` with axis 0 for xy slice ``z``
    (``f``: (Y, X, C)), then axis 1 for xz slice ``y`` ((Z, X, C)), then axis 2 for yz slice ``x``
    ((Z, Y, C)). ``volume01``: a normalised (Z, Y, X) array, or anything that slices like one.
    ``progress``: an optional tqdm-like object (``update(n)``), advanced once per slice."""
    if planes not in ("xy", "xyz"):
        raise ConfigError(f"unknown planes {planes!r}; choose xy or xyz.")
    if volume01.ndim != 3:
        raise ShapeError(f"planes need a grey (Z, Y, X) volume, got shape {volume01.shape}.")
    nz, ny, nx = volume01.shape
    dz, dy, dx = (float(v) for v in spacing)
    if min(ny, nx) < MIN_SIDE or (planes == "xyz" and nz < 2):
        raise ShapeError(f"volume {nz}x{ny}x{nx} (ZxYxX) is too small for deep features over planes {planes}: "
                         f"Y and X need at least {MIN_SIDE} px, Z at least 2 slices.")

    def done(item: tuple[int, int, np.ndarray]) -> tuple[int, int, np.ndarray]:
        if progress is not None:
            progress.update(1)
        return item

    for z in range(nz):
        yield done((0, z, featurise(volume01[z])))
    if planes == "xy":
        return
    rows_xz, rows_yz = _iso_rows(nz, dz, dx), _iso_rows(nz, dz, dy)
    for y in range(ny):  # xz slices: (Z, X) -> isotropic rows -> features -> back to Z rows
        yield done((1, y, resample_axis0(featurise(resample_axis0(volume01[:, y, :], rows_xz)), nz)))
    for x in range(nx):  # yz slices: (Z, Y)
        yield done((2, x, resample_axis0(featurise(resample_axis0(volume01[:, :, x], rows_yz)), nz)))


def plane_features(volume01: np.ndarray, featurise: SliceFeatures, planes: str = "xyz",
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), progress: Any = None) -> np.ndarray:
    """(Z, Y, X, C) float32 deep features of a normalised (Z, Y, X) volume, averaged over ``planes``.

    ``featurise`` maps one 2-D slice to its (h, w, C) features (the engine's HR-Dv2 featurizer).
    ``progress``: an optional tqdm-like object (``update(n)``), advanced once per slice.
    """
    out: np.ndarray | None = None
    for axis, i, f in iter_slice_features(volume01, featurise, planes, spacing, progress):
        if out is None:
            out = np.empty(tuple(volume01.shape) + (f.shape[-1],), np.float32)
        if axis == 0:
            out[i] = f
        elif axis == 1:
            out[:, i] += f
        else:
            out[:, :, i] += f
    assert out is not None
    if planes == "xyz":
        out /= np.float32(3.0)
    return out


class HeldPlanes:
    """Plane features held in memory (:func:`plane_features`), read by window like :class:`DiskPlanes`."""

    def __init__(self, features: np.ndarray):
        self.features = features

    def read(self, window: tuple[slice, slice, slice]) -> np.ndarray:
        return self.features[window]

    def close(self) -> None:
        self.features = np.empty((0, 0, 0, 0), np.float32)


def _write_at(fd: int, arr: np.ndarray, offset: int) -> None:
    """Write a C-contiguous array's bytes at ``offset`` (pwrite may write less than asked)."""
    view = memoryview(np.ascontiguousarray(arr)).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_at(fd: int, out: np.ndarray, offset: int) -> None:
    """Fill the C-contiguous array ``out`` with the bytes at ``offset``."""
    view = memoryview(out).cast("B")
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(f"unexpected end of a plane-features file at byte {offset}")
        view, offset = view[n:], offset + n


def _remove_store(fds: list[int], folder: str) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    shutil.rmtree(folder, ignore_errors=True)


class DiskPlanes:
    """Plane features of a volume on disk, for volumes whose features do not fit in memory.

    Two raw float32 files in a fresh folder under ``directory``: ``xy_xz`` in (Z, Y, X, C) order
    holds the xy slices' features plus the xz slices' (each xz slice adds to Z runs of X * C
    contiguous values), ``yz`` in (X, Z, Y, C) order holds the yz slices' (each one contiguous
    write). A window is the sum of the two, divided by 3, in the order :func:`plane_features`
    sums them, so the values are the same bit for bit. The files are read and written with
    pread / pwrite into the process's own buffers, never memory-mapped: a mapping would count the
    page cache's large folios around every strided run as this process's memory (measured: 0.4-0.8
    GB for one 57 MB xz slice), where buffers hold one slice or one window. The folder is removed
    by :meth:`close`, when the object is collected, or at exit.
    """

    def __init__(self, shape: tuple[int, int, int], channels: int, planes: str = "xyz",
                 directory: str | os.PathLike | None = None, name: str = "volume"):
        if planes not in ("xy", "xyz"):
            raise ConfigError(f"unknown planes {planes!r}; choose xy or xyz.")
        self.shape = tuple(int(v) for v in shape)
        self.channels, self.planes = int(channels), planes
        parent = scratch_folder(directory)
        check_scratch(parent, disk_planes_bytes(self.shape, self.channels, planes), self.shape, self.channels, name)
        self.folder = Path(tempfile.mkdtemp(prefix="hrdv2-planes-", dir=parent))
        fds: list[int] = []
        self._cleanup = weakref.finalize(self, _remove_store, fds, str(self.folder))
        names = ("xy_xz", "yz") if planes == "xyz" else ("xy_xz",)
        self._fd: dict[str, int] = {}
        for which in names:
            fd = os.open(self.folder / f"{which}.f32", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fds.append(fd)
            os.ftruncate(fd, planes_bytes(self.shape, self.channels))  # sparse until written
            self._fd[which] = fd

    def _offset(self, a: int, b: int, c: int, dims: tuple[int, int]) -> int:
        """Byte offset of element (a, b, c, 0) in a file of (., dims[0], dims[1], C) float32."""
        return 4 * self.channels * ((a * dims[0] + b) * dims[1] + c)

    def add(self, axis: int, index: int, f: np.ndarray) -> None:
        """Store one slice's features (``axis``/``index``/``f`` as :func:`iter_slice_features` yields)."""
        z, y, x = self.shape
        f = np.asarray(f, dtype=np.float32)
        if axis == 0:  # xy slice z: one contiguous (Y, X, C) write
            _write_at(self._fd["xy_xz"], f, self._offset(index, 0, 0, (y, x)))
        elif axis == 2:  # yz slice x: one contiguous (Z, Y, C) write in the (X, Z, Y, C) file
            _write_at(self._fd["yz"], f, self._offset(index, 0, 0, (z, y)))
        else:  # xz slice y: read, add and write back Z runs of (X, C)
            fd, run = self._fd["xy_xz"], np.empty((x, self.channels), np.float32)
            for k in range(z):
                offset = self._offset(k, index, 0, (y, x))
                _read_at(fd, run, offset)
                run += f[k]
                _write_at(fd, run, offset)

    def fill(self, volume01: Any, featurise: SliceFeatures, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
             progress: Any = None) -> "DiskPlanes":
        """Featurise every slice of ``volume01`` into the files (see :func:`iter_slice_features`)."""
        if tuple(volume01.shape) != self.shape:
            raise ShapeError(f"volume of shape {tuple(volume01.shape)} does not match the store's {self.shape}.")
        for axis, i, f in iter_slice_features(volume01, featurise, self.planes, spacing, progress):
            if f.shape[-1] != self.channels:
                raise ShapeError(f"slice features have {f.shape[-1]} channels, the store was made for {self.channels}.")
            self.add(axis, i, f)
        return self

    def read(self, window: tuple[slice, slice, slice]) -> np.ndarray:
        """(z, y, x, C) float32 features of ``window`` (three slices with explicit bounds)."""
        (z0, z1), (y0, y1), (x0, x1) = ((w.indices(n)[0], w.indices(n)[1]) for w, n in zip(window, self.shape))
        nz, ny, nx = self.shape
        out = np.empty((z1 - z0, y1 - y0, x1 - x0, self.channels), np.float32)
        for k in range(z1 - z0):
            for j in range(y1 - y0):
                _read_at(self._fd["xy_xz"], out[k, j], self._offset(z0 + k, y0 + j, x0, (ny, nx)))
        if self.planes == "xyz":
            yz = np.empty((x1 - x0, z1 - z0, y1 - y0, self.channels), np.float32)
            for i in range(x1 - x0):
                for k in range(z1 - z0):
                    _read_at(self._fd["yz"], yz[i, k], self._offset(x0 + i, z0 + k, y0, (nz, ny)))
            out += yz.transpose(1, 2, 0, 3)
            out /= np.float32(3.0)
        return out

    def close(self) -> None:
        """Delete the files now."""
        self._cleanup()


def disk_planes_bytes(shape: tuple[int, int, int], channels: int, planes: str = "xyz") -> int:
    """Scratch bytes :class:`DiskPlanes` writes: one (Z, Y, X, C) float32 file per sum it keeps."""
    return planes_bytes(shape, channels) * (2 if planes == "xyz" else 1)


def scratch_folder(directory: str | os.PathLike | None) -> Path:
    """Where plane-feature files go: ``directory``, or the system's temporary folder (``TMPDIR``)."""
    return Path(directory) if directory is not None else Path(tempfile.gettempdir())


def check_scratch(folder: Path, need: int, shape: tuple[int, int, int], channels: int, name: str) -> None:
    """Refuse, in one line, a scratch folder that is missing or has too little free disk."""
    if not folder.is_dir():
        raise ConfigError(f"scratch folder {folder} for the deep plane features of {name} does not exist; create "
                          "it, or set TMPDIR to a folder that does.")
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ResourceLimitError(
            f"{name}: deep features over planes of a {'x'.join(map(str, shape))} volume ({channels} channels) need "
            f"{need / 1e9:.1f} GB of scratch disk in {folder}, which has {free / 1e9:.1f} GB free; set TMPDIR to a "
            "folder on a disk with room, crop the volume, or use --planes xy (no scratch needed).")


def n_slices(shape: tuple[int, int, int], planes: str) -> int:
    """How many 2-D slices :func:`plane_features` featurises (for progress bars)."""
    z, y, x = shape
    return z if planes == "xy" else z + y + x
