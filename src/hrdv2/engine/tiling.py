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

import bisect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hrdv2.errors import ConfigError

DEFAULT_TILE = 448  # 32 patches of 14 px: ~0.3 GB of ViT-S features per tile
DEFAULT_OVERLAP = 56  # 4 patches


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Origins of the tiles along one axis of ``length`` px, every ``tile - overlap`` px.

    The last tile is cut at the image end when the remainder is at least ``max(2 * overlap,
    tile // 8)`` px (so a block row only holds ``overlap`` px of the tiles above it for the next
    row); a shorter remainder instead ends a full tile flush with the image (no sliver tiles).
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    shortest = max(2 * overlap, tile // 8, 1)
    starts = [0]
    while starts[-1] + tile < length:
        nxt = starts[-1] + step
        if length - nxt < shortest:
            nxt = length - tile
        starts.append(nxt)
    return starts


def held_extent(length: int, block: int, tile: int, overlap: int) -> int:
    """Tile px that tiles computed up to a block edge reach past it, summed over those tiles (the
    most over all edges) along one axis.

    Blocks of ``block`` px visited in order compute each tile at the first block it touches, so
    after the blocks ending at edge ``e`` every tile starting before ``e`` is done; their parts
    beyond ``e`` must be kept for the blocks that follow. With blocks of one tile step on tile
    starts this is ``overlap`` (one tile reaches past each edge; more at a flush last tile).
    """
    starts = tile_starts(length, tile, overlap)
    worst = 0
    for edge in range(block, length, block):
        i = bisect.bisect_left(starts, edge) - 1  # the last tile starting before the edge
        held = 0
        while i >= 0 and min(length, starts[i] + tile) > edge:
            held += min(length, starts[i] + tile) - edge
            i -= 1
        worst = max(worst, held)
    return worst


def tile_coverage(length: int, block: int, tile: int, overlap: int) -> tuple[int, int]:
    """(sum of all tile lengths, most tile px inside one block) along one axis: how many times
    overlapping tiles count a line of pixels, in total and within one block."""
    spans = [(s, min(length, s + tile)) for s in tile_starts(length, tile, overlap)]
    per_block = max(sum(max(0, min(b, e + block) - max(a, e)) for a, b in spans) for e in range(0, length, block))
    return sum(b - a for a, b in spans), per_block


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
    features, or only the part of them inside ``window`` (a piece held by :class:`TileStore`:
    neighbouring windows share tiles). The sums run in one global tile order, so a window gets
    bit for bit what a larger window (the whole image) gives it.
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
        if feats.shape[:2] == (rows.stop - rows.start, cols.stop - cols.start):
            src = feats[part]
        elif feats.shape[:2] == w.shape:  # a held piece: exactly the part inside the window
            src = feats
        else:
            raise ConfigError(f"internal: tile features of shape {feats.shape[:2]} fit neither the tile nor its part "
                              f"{w.shape} inside the window.")
        for r in range(0, w.shape[0], 32):  # row bands: the weighted copy stays small (not a tile-sized temporary)
            e = min(r + 32, w.shape[0])
            acc[dst[0].start + r: dst[0].start + e, dst[1]] += src[r:e] * w[r:e, :, None]
        wsum[dst] += w
        del feats, src
    assert acc is not None
    acc /= wsum[..., None]
    return acc


Pos = tuple[int, int, int]  # (page, block row, block column): blocks are visited in this (raster) order


@dataclass
class TileStore:
    """Every tile computed once: the parts of a tile that later blocks need are kept until used.

    A block asks :meth:`get` for each tile touching its write window. A tile not held is computed
    (``compute()``), and the parts of it inside the write windows of blocks that come *later* in
    raster order (``(page, block row, block column)``) are copied out and held; the full tile is
    dropped. In raster order every tile is therefore computed exactly once, and what is held is
    the strip of the next block row (``held_extent`` rows across the image width) plus the column
    for the next block of the row. Blocks visited in another order (a resumed run that skips done
    blocks, workers of a cluster) stay exact: a tile part that is not held is simply recomputed.
    Pieces for blocks already passed are dropped by :meth:`done`; if the held bytes ever pass
    ``limit_bytes`` (only out of raster order), the pieces for the farthest blocks go first.
    """

    shape: tuple[int, int]  # page (H, W)
    block: tuple[int, int]  # write-window side (rows, cols)
    limit_bytes: int
    computed: int = 0  # tile passes so far
    held_bytes: int = 0
    peak_held_bytes: int = 0
    _held: dict[tuple[int, int, int], dict[Pos, np.ndarray]] = field(default_factory=dict)

    def _blocks(self, rows: slice, cols: slice) -> list[tuple[int, int]]:
        bh, bw = self.block
        return [(gy, gx) for gy in range(rows.start // bh, (rows.stop - 1) // bh + 1)
                for gx in range(cols.start // bw, (cols.stop - 1) // bw + 1)]

    def get(self, z: int, rows: slice, cols: slice, pos: Pos, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Tile (rows, cols) of page ``z`` for the block at ``pos``: the held piece (the tile's part
        inside that block) or, if none is held, the whole computed tile."""
        pieces = self._held.get((z, rows.start, cols.start))
        if pieces is not None and pos in pieces:
            piece = pieces.pop(pos)
            self.held_bytes -= piece.nbytes
            if not pieces:
                del self._held[(z, rows.start, cols.start)]
            return piece
        feats = compute()
        self.computed += 1
        bh, bw = self.block
        held = self._held.setdefault((z, rows.start, cols.start), {})
        for gy, gx in self._blocks(rows, cols):
            if (z, gy, gx) <= pos or (z, gy, gx) in held:  # passed, or held already (blocks out of order)
                continue
            ys, ye = max(rows.start, gy * bh), min(rows.stop, (gy + 1) * bh, self.shape[0])
            xs, xe = max(cols.start, gx * bw), min(cols.stop, (gx + 1) * bw, self.shape[1])
            piece = feats[ys - rows.start: ye - rows.start, xs - cols.start: xe - cols.start].copy()  # not a view
            held[(z, gy, gx)] = piece
            self.held_bytes += piece.nbytes
        if not held:
            del self._held[(z, rows.start, cols.start)]
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self._enforce_limit()
        return feats

    def done(self, pos: Pos) -> None:
        """The block at ``pos`` is finished: drop pieces held for it or for blocks before it."""
        for key in list(self._held):
            pieces = self._held[key]
            for target in [t for t in pieces if t <= pos]:
                self.held_bytes -= pieces.pop(target).nbytes
            if not pieces:
                del self._held[key]

    def _enforce_limit(self) -> None:
        while self.held_bytes > self.limit_bytes and self._held:
            key, target = max(((k, t) for k, p in self._held.items() for t in p), key=lambda kt: kt[1])
            self.held_bytes -= self._held[key].pop(target).nbytes
            if not self._held[key]:
                del self._held[key]
