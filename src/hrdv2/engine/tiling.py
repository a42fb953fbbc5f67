"""Deep features of large images: the ViT sees one tile at a time, tiles overlap and are blended.

Tiles lie on one *global* grid (origins every ``tile - overlap`` px; see :func:`tile_starts` for
the last one) and each tile's features are weighted by a linear ramp over the overlap (weight 1
inside, falling towards an edge that has a neighbour; no ramp at the image border). A pixel's
features are the weighted mean over the tiles covering it. Because the grid and the weights are
global, any window of the image (one block of a block-wise run) gets exactly the values a
whole-image tiled run gives it: blocks have no seams of their own, and the tiles' seams are
blended away.

Trade-off: the ViT's attention spans one tile, not the whole image, so tiled features differ
from whole-image features; bigger tiles are closer (and need more memory); the overlap hides
the tile edges. ``benchmarks/blockwise.py`` reports the tiled-vs-whole cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hrdv2.errors import ConfigError

DEFAULT_TILE = 448  # 32 patches of 14 px: ~0.3 GB of ViT-S features per tile
DEFAULT_OVERLAP = 56  # 4 patches


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Origins of the tiles along one axis of ``length`` px, every ``tile - overlap`` px.

    The last tile is cut at the image end when at least half a tile remains (so blocks of two
    tile steps touch few tiles); a shorter remainder instead ends a full tile flush with the image.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = [0]
    while starts[-1] + tile < length:
        nxt = starts[-1] + step
        if length - nxt < tile // 2:
            nxt = length - tile
        starts.append(nxt)
    return starts


def ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D blending weights of one tile: 1 inside, linear over ``overlap`` px at ramped ends (> 0)."""
    w = np.ones(length, np.float32)
    if overlap > 0:
        r = (np.arange(min(overlap, length), dtype=np.float32) + 0.5) / overlap
        if ramp_start:
            w[: len(r)] = np.minimum(w[: len(r)], r)
        if ramp_end:
            w[length - len(r):] = np.minimum(w[length - len(r):], r[::-1])
    return w


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of an (H, W) image."""

    shape: tuple[int, int]
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if self.tile < 2 * max(self.overlap, 1) or self.overlap < 0:
            raise ConfigError(f"tile {self.tile} px with overlap {self.overlap} px: the tile must be at least twice the "
                              "overlap and the overlap >= 0 (e.g. --tile 448 with overlap 56).")

    def tiles_touching(self, window: tuple[slice, slice]) -> list[tuple[slice, slice, np.ndarray]]:
        """(rows, cols, weights) of every tile overlapping ``window``, in one fixed global order."""
        out = []
        axes = []
        for n, sl in zip(self.shape, window):
            starts = tile_starts(n, self.tile, self.overlap)
            spans = [(s, min(n, s + self.tile)) for s in starts]
            axes.append([(i, a, b) for i, (a, b) in enumerate(spans) if a < sl.stop and b > sl.start])
        ny = len(tile_starts(self.shape[0], self.tile, self.overlap))
        nx = len(tile_starts(self.shape[1], self.tile, self.overlap))
        for iy, y0, y1 in axes[0]:
            wy = ramp(y1 - y0, self.overlap, iy > 0, iy < ny - 1)
            for ix, x0, x1 in axes[1]:
                wx = ramp(x1 - x0, self.overlap, ix > 0, ix < nx - 1)
                out.append((slice(y0, y1), slice(x0, x1), wy[:, None] * wx[None, :]))
        return out


def blended_features(
    image01: np.ndarray,
    origin: tuple[int, int],
    window: tuple[slice, slice],
    grid: TileGrid,
    tile_features: Callable[[slice, slice, np.ndarray], np.ndarray],
) -> np.ndarray:
    """(h, w, C) features of ``window`` (image coordinates) blended from the grid's tiles.

    ``image01`` holds the normalised pixels of a region starting at ``origin`` that contains
    every tile touching ``window``; ``tile_features(rows, cols, pixels)`` gives a tile's (th, tw, C)
    features (it may return them from a cache: neighbouring windows share tiles).
    """
    acc: np.ndarray | None = None
    wsum = np.zeros((window[0].stop - window[0].start, window[1].stop - window[1].start), np.float32)
    for rows, cols, weight in grid.tiles_touching(window):
        local = (slice(rows.start - origin[0], rows.stop - origin[0]), slice(cols.start - origin[1], cols.stop - origin[1]))
        if local[0].start < 0 or local[1].start < 0 or local[0].stop > image01.shape[0] or local[1].stop > image01.shape[1]:
            raise ConfigError("internal: the read window does not contain a tile; the block halo must be >= the tile size.")
        feats = tile_features(rows, cols, image01[local])
        # the part of this tile inside the window
        ys, ye = max(rows.start, window[0].start), min(rows.stop, window[0].stop)
        xs, xe = max(cols.start, window[1].start), min(cols.stop, window[1].stop)
        part = (slice(ys - rows.start, ye - rows.start), slice(xs - cols.start, xe - cols.start))
        dst = (slice(ys - window[0].start, ye - window[0].start), slice(xs - window[1].start, xe - window[1].start))
        w = weight[part]
        if acc is None:
            acc = np.zeros(wsum.shape + (feats.shape[-1],), np.float32)
        src = feats[part]
        for r in range(0, w.shape[0], 32):  # row bands: the weighted copy stays small (not a tile-sized temporary)
            e = min(r + 32, w.shape[0])
            acc[dst[0].start + r: dst[0].start + e, dst[1]] += src[r:e] * w[r:e, :, None]
        wsum[dst] += w
        del feats, src
    assert acc is not None
    acc /= wsum[..., None]
    return acc
