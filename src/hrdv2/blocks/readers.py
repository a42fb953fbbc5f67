"""Lazy readers: one :func:`open_array` for every input format, returning only the region asked for.

Every reader presents the same axes: ``(Y, X)`` or ``(Z, Y, X)`` spatial axes (pages of a
multi-page TIFF and the first axis of a 3D zarr / npy become Z), then an optional trailing channel
axis (colour is a trailing 3; RGBA drops alpha, grey + alpha keeps grey, as ``hrdv2.io`` does).
Regions are read from disk where the format allows it: tiled or striped TIFF / BigTIFF (only the
tiles / strips that meet the region: :mod:`hrdv2.blocks.tiff_regions`, else tifffile's zarr
interface), zarr and OME-Zarr
(level 0 of a multiscale group), ``.npy`` as a memory map. PNG, JPEG and other formats that
cannot be read in part are decoded whole once (``hrdv2.io.read_image``) and sliced.

Unlike ``hrdv2.io.read_image``, an RGB TIFF or zarr whose three channels happen to be equal stays
RGB here: telling would need every pixel read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hrdv2.errors import ImageReadError
from hrdv2.io import TIFF_SUFFIXES

ZARR_SUFFIXES = (".zarr", ".ome.zarr")


class LazyArray:
    """A read-only N-d array read region by region: ``.shape``, ``.dtype``, ``arr[slices]``.

    Wraps any array-like ``source`` that supports basic slicing (zarr array, numpy memmap,
    ndarray), with a fixed map from output axes to source axes: ``axes`` lists, per output axis,
    the source axis it comes from; source axes not listed are read at index 0 (squeezed);
    ``channel_take`` keeps only the first n channels of the last output axis (drops alpha).
    """

    def __init__(
        self,
        source: Any,
        axes: Sequence[int] | None = None,
        *,
        has_channels: bool = False,
        channel_take: int | None = None,
        name: str = "array",
        closer: Any = None,
    ) -> None:
        self._src = source
        src_shape = tuple(int(n) for n in source.shape)
        self._axes = tuple(range(len(src_shape))) if axes is None else tuple(axes)
        self._take = channel_take
        shape = [src_shape[a] for a in self._axes]
        if channel_take is not None:
            shape[-1] = min(shape[-1], channel_take)
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(source.dtype)
        self.has_channels = has_channels
        self.name = name
        self._closer = closer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis: what a :class:`~hrdv2.blocks.plan.BlockPlan` covers."""
        return self.shape[:-1] if self.has_channels else self.shape

    @property
    def channels(self) -> int | None:
        """Number of channels of the trailing channel axis, or None for grey."""
        return self.shape[-1] if self.has_channels else None

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read a region as a numpy array; ``key`` is slices (steps allowed) for leading axes."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = tuple(key) + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"{self.name}: {len(key)} indices for a {self.ndim}-d array")
        if self._take is not None and isinstance(key[-1], slice):  # never reach the dropped alpha
            key = key[:-1] + (slice(*key[-1].indices(self.shape[-1])),)
        src_key: list[Any] = [0] * len(self._src.shape)
        for out_axis, src_axis in enumerate(self._axes):
            src_key[src_axis] = key[out_axis]
        try:
            data = np.asarray(self._src[tuple(src_key)])
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a truncated or corrupt file fails only when its region is read
            raise ImageReadError(f"{self.name}: cannot read the region {tuple(src_key)} ({type(exc).__name__}: "
                                 f"{exc}); the file is damaged or truncated: re-copy or re-export it.") from exc
        kept = [a for a, k in zip(self._axes, key) if not isinstance(k, (int, np.integer))]
        order = sorted(kept)  # numpy returns kept source axes in source order
        perm = [order.index(a) for a in kept]
        if perm != list(range(len(perm))):
            data = np.transpose(data, perm)
        return data

    def read(self) -> np.ndarray:
        """The whole array (only for arrays known to fit in memory)."""
        return self[tuple(slice(None) for _ in self.shape)]

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> "LazyArray":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyArray({self.name}, shape={self.shape}, dtype={self.dtype}, channels={self.channels})"


def _channel_info(n: int) -> tuple[bool, int | None, bool]:
    """(has channels, channels to keep, squeeze to grey) for a trailing axis of n colour samples."""
    if n == 1:
        return False, None, True
    if n == 2:  # grey + alpha: keep grey
        return False, None, True
    if n == 4:  # RGBA: keep RGB
        return True, 3, False
    return True, None, False


def _from_numpy_like(src: Any, name: str, closer: Any = None) -> LazyArray:
    """(Y, X), (Y, X, 3|4), (Z, Y, X) or (Z, Y, X, 3|4) by the ndarray conventions."""
    shape = tuple(src.shape)
    nd = len(shape)
    if nd == 2:
        return LazyArray(src, name=name, closer=closer)
    if nd in (3, 4) and shape[-1] in (3, 4):
        take = 3 if shape[-1] == 4 else None
        return LazyArray(src, has_channels=True, channel_take=take, name=name, closer=closer)
    if nd == 3:
        return LazyArray(src, name=name, closer=closer)
    raise ImageReadError(
        f"{name}: array of shape {shape} is not an image or a volume; expected (Y, X), (Y, X, 3), (Z, Y, X) or (Z, Y, X, 3)."
    )


def as_lazy(array: np.ndarray | LazyArray, *, channels: bool | None = None, name: str = "array") -> LazyArray:
    """Wrap an in-memory array (or pass a LazyArray through). ``channels``: whether the last axis
    is a channel axis (default: a trailing 3 or 4 on a 3-d or 4-d array)."""
    if isinstance(array, LazyArray):
        return array
    if channels is None:
        return _from_numpy_like(array, name)
    return LazyArray(array, has_channels=channels, name=name)


def _open_tiff(path: Path) -> LazyArray:
    import tifffile

    from hrdv2.blocks.tiff_regions import TiffRegions

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable TIFF ({exc}).") from exc
    src: Any = None
    try:
        if not tif.series:
            raise ImageReadError(f"{path}: TIFF holds no image series.")
        axes = tif.series[0].axes
        try:  # tiled / striped pages: segments read directly (no zarr; ~8x faster per window)
            src = store = TiffRegions(tif)
        except Exception:  # any other layout: tifffile's zarr store
            import zarr

            store = tifffile.imread(path, aszarr=True, series=0, level=0)
            src = zarr.open(store, mode="r")
    except ImageReadError:
        tif.close()
        raise
    except Exception as exc:  # tifffile / zarr raise many types for corrupt files
        tif.close()
        raise ImageReadError(f"{path}: not a readable TIFF ({exc}).") from exc
    if store is not src:
        tif.close()
    shape = tuple(src.shape)
    if "Y" not in axes or "X" not in axes:
        store.close()
        raise ImageReadError(f"{path}: TIFF axes {axes!r} have no Y and X; expected an image or a stack of images.")
    lead = [i for i, a in enumerate(axes) if a not in "YXS" and shape[i] > 1]
    if len(lead) > 1:
        store.close()
        raise ImageReadError(
            f"{path}: TIFF with axes {axes!r} and shape {shape} has more than one stack axis; save it as one Z stack."
        )
    out = lead + [axes.index("Y"), axes.index("X")]
    has_ch, take = False, None
    if "S" in axes:
        s = axes.index("S")
        has_ch, take, grey = _channel_info(shape[s])
        if not grey:
            out.append(s)
    return LazyArray(src, out, has_channels=has_ch, channel_take=take, name=str(path), closer=store)


def _open_zarr(path: Path) -> LazyArray:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable zarr store ({exc}).") from exc
    if isinstance(node, zarr.Array):
        return _from_numpy_like(node, str(path))
    attrs = dict(node.attrs)
    ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if not ms:
        arrays = sorted(name for name, _ in node.arrays())
        raise ImageReadError(
            f"{path}: zarr group without OME-Zarr multiscales metadata (arrays: {arrays}); give the path of one array."
        )
    meta = ms[0]
    src = node[meta["datasets"][0]["path"]]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in meta.get("axes", [])]
    if len(names) != len(src.shape):
        return _from_numpy_like(src, str(path))
    spatial = [i for i, a in enumerate(names) if a in ("z", "y", "x") and (a != "z" or src.shape[i] > 1)]
    others = [i for i, a in enumerate(names) if a not in ("z", "y", "x", "c") and src.shape[i] > 1]
    if others:
        raise ImageReadError(f"{path}: OME-Zarr axes {names} with shape {tuple(src.shape)} carry time points; give one.")
    out, has_ch, take = list(spatial), False, None
    if "c" in names:
        c = names.index("c")
        has_ch, take, grey = _channel_info(src.shape[c])
        if not grey:
            out.append(c)
    return LazyArray(src, out, has_channels=has_ch, channel_take=take, name=str(path))


def open_array(path: str | os.PathLike) -> LazyArray:
    """Open an image, stack or volume for reading by region (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder. Check the path (relative paths start at {Path.cwd()}).")
    name = path.name.lower()
    if path.is_dir():
        if name.endswith(ZARR_SUFFIXES) or (path / ".zgroup").exists() or (path / "zarr.json").exists() or (path / ".zarray").exists():
            return _open_zarr(path)
        raise ImageReadError(f"{path}: is a folder but not a zarr store; give an image file or a .zarr folder.")
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES or name.endswith((".btf", ".tf8")):
        return _open_tiff(path)
    if suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ImageReadError(f"{path}: not a readable .npy array ({exc}).") from exc
        return _from_numpy_like(arr, str(path))
    from hrdv2.io import read_image

    img = read_image(path)  # PNG, JPEG, BMP, WebP: decoded whole, then sliced
    return LazyArray(img, has_channels=img.ndim == 3, name=str(path))

