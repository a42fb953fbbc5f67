"""Regions of a tiled or striped TIFF read straight from its segments, without zarr.

Why: a block-wise run reads every pixel twice (the statistics pass, then each block's window
with its halo), on the thread that also feeds the workers. Through tifffile's zarr store each
256² tile costs ~0.6 ms of zarr's per-chunk machinery, so the 64 windows of an 8192² image took
0.63 s alone and ~2.3 s beside the workers; reading the same segments with tifffile's own
``FileHandle.read_segments`` and ``TiffPage.decode`` (every compression tifffile decodes) took
0.08 s (measured on this machine, uncompressed 256² tiles). Only the segments that meet a
window are read and decoded.

Used for series whose pages are all alike: tiled, or striped with more than one strip, samples
interleaved, one image plane deep, axes ``...YX`` or ``...YXS`` with the leading axes flattening
to the pages. Anything else (and any file this class does not recognise) keeps the zarr reader.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class TiffRegions:
    """An array-like over a TIFF series (``shape``, ``dtype``, ``arr[key]`` with ints and slices,
    steps allowed) that decodes only the segments a region needs. Thread-safe reads; owns the
    open ``tif`` (:meth:`close`); pickles as its path (a Dask worker reopens the file)."""

    def __init__(self, tif: Any, series_index: int = 0):
        self._tif, self._series_index = tif, int(series_index)
        series = tif.series[series_index]
        key = series.keyframe
        pages = list(series.pages)
        axes = series.axes
        self.shape: tuple[int, ...] = tuple(int(n) for n in series.shape)
        self.dtype = np.dtype(series.dtype)
        samples = int(key.samplesperpixel)
        spatial = 3 if axes.endswith("YXS") else 2
        if not (axes.endswith("YX") or (axes.endswith("YXS") and self.shape[-1] == samples)):
            raise ValueError(f"axes {axes!r}: not ...YX or ...YXS")
        if samples > 1 and (key.planarconfig != 1 or spatial != 3):
            raise ValueError("samples stored in separate planes")
        if int(getattr(key, "imagedepth", 1)) != 1:
            raise ValueError("volumetric tiles")
        self._lead = self.shape[:-spatial]
        if any(p is None for p in pages) or len(pages) != int(np.prod(self._lead, dtype=np.int64)):
            raise ValueError("pages do not map onto the leading axes")
        height, width = self.shape[len(self._lead): len(self._lead) + 2]
        if key.is_tiled:
            self._tile = (int(key.tilelength), int(key.tilewidth))
        else:
            rows = int(key.rowsperstrip or height)
            if rows >= height:
                raise ValueError("one strip: a window would decode the whole page")
            self._tile = (rows, width)
        if any(tuple(p.shape) != tuple(key.shape) for p in pages):
            raise ValueError("pages of different shapes")
        self._hw = (height, width)
        self._samples = samples if spatial == 3 else None
        self._pages = pages
        self._decode = key.decode
        self._jpegtables = getattr(key, "jpegtables", None)
        self._fh = tif.filehandle
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str, series_index: int = 0) -> "TiffRegions":
        import tifffile

        tif = tifffile.TiffFile(path)
        try:
            return cls(tif, series_index)
        except BaseException:
            tif.close()
            raise

    def __reduce__(self) -> tuple:
        return (TiffRegions.open, (self._tif.filehandle.path, self._series_index))

    def close(self) -> None:
        self._tif.close()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _segments(self, rows: tuple[int, int], cols: tuple[int, int]) -> list[int]:
        """Indices of a page's segments meeting rows x cols (half-open ranges)."""
        th, tw = self._tile
        across = -(-self._hw[1] // tw)
        return [ty * across + tx for ty in range(rows[0] // th, (rows[1] - 1) // th + 1)
                for tx in range(cols[0] // tw, (cols[1] - 1) // tw + 1)]

    def _window(self, page: Any, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """The page's pixels in rows x cols: (h, w) or (h, w, S)."""
        extra = () if self._samples is None else (self._samples,)
        out = np.zeros((rows[1] - rows[0], cols[1] - cols[0]) + extra, self.dtype)
        wanted = self._segments(rows, cols)
        offsets, counts = page.dataoffsets, page.databytecounts
        with self._lock:  # seeks and reads only; decoding below runs outside the lock
            raw = list(self._fh.read_segments([offsets[i] for i in wanted], [counts[i] for i in wanted],
                                              indices=wanted, sort=True))
        for data, index in raw:
            segment, position, shape = self._decode(data, index, jpegtables=self._jpegtables)
            if segment is None:  # an empty segment: tifffile's fill value, 0
                continue
            seg = segment.reshape(shape)[0]  # (length, width, samples)
            y0, x0 = int(position[2]), int(position[3])
            a0, a1 = max(rows[0], y0), min(rows[1], y0 + seg.shape[0], self._hw[0])
            b0, b1 = max(cols[0], x0), min(cols[1], x0 + seg.shape[1], self._hw[1])
            if a0 >= a1 or b0 >= b1:
                continue
            part = seg[a0 - y0: a1 - y0, b0 - x0: b1 - x0]
            out[a0 - rows[0]: a1 - rows[0], b0 - cols[0]: b1 - cols[0]] = part if extra else part[..., 0]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim or any(k is Ellipsis or k is None for k in key):
            raise IndexError(f"index {key!r} for a {self.ndim}-d TIFF series")
        picks = [range(n)[k] for k, n in zip(key, self.shape)]  # ints stay ints, slices become ranges
        squeeze = tuple(i for i, p in enumerate(picks) if not isinstance(p, range))
        picks = [p if isinstance(p, range) else range(p, p + 1) for p in picks]
        nlead = len(self._lead)
        ys, xs = picks[nlead], picks[nlead + 1]
        sizes = tuple(len(r) for r in picks[:nlead + 2])
        extra = () if self._samples is None else (self._samples,)
        out = np.empty(sizes + extra, self.dtype)
        if 0 not in sizes:
            rows, cols = (min(ys), max(ys) + 1), (min(xs), max(xs) + 1)
            for pos in np.ndindex(*sizes[:nlead]):
                page = self._pages[int(np.ravel_multi_index(tuple(r[i] for r, i in zip(picks, pos)), self._lead))
                                   if nlead else 0]
                win = self._window(page, rows, cols)
                out[pos] = win[_index(ys, rows[0])][:, _index(xs, cols[0])]
        if self._samples is not None:
            out = out[..., _index(picks[-1], 0)]
        return out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in squeeze)) if squeeze else out


def _index(r: range, origin: int) -> slice | np.ndarray:
    """``r`` relative to ``origin``: a slice for positive steps (a view), else an index array."""
    if r.step > 0:
        return slice(r.start - origin, r.stop - origin, r.step)
    return np.asarray(r) - origin

