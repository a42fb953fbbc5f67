"""Strokes to label maps, in a time bounded by the area a stroke covers.

A stroke paints every pixel whose centre lies within ``radius`` of its polyline (what the
browser's round-capped canvas line of width 2*radius shows). Drawing it segment by segment
costs points x radius^2: 20000 points of radius 512 took minutes. Two methods keep the cost
linear instead, and each stroke is drawn with the cheaper one:

* row spans (exact): each segment's capsule meets a pixel row in one interval, so the work is
  one interval per (segment, row it reaches), then one pass over the stroke's bounding box;
* dilation (within about a pixel of exact, at the stroke's edge only): mark the cells the
  polyline passes through and keep the pixels within ``radius`` of a marked cell, with running
  maxima along rows and columns; the work is the bounding box widened by the radius plus the
  polyline's length inside it.

Only strokes with many points *and* a large radius take the second path (ordinary browser
strokes stay exact). ``stroke_work`` gives the cost before a stroke is accepted, so the
server refuses the rare stroke that would still take over about a second (a huge, dense stroke
on a large image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# row-span intervals always drawn exactly (about 0.15 s)
EXACT_PAIRS = 1 << 20
# work units (about 50 ns each on one core: a pixel of the dilation's window; a row-span interval
# costs 3, a pixel of its bounding box 1/4, a polyline sample 2/3) one stroke may cost: about 1 s
MAX_STROKE_WORK = 20_000_000
_CHUNK = 1 << 14  # intervals / samples per numpy pass: arrays that stay in cache (3x faster than 2^19)
_STEP = 0.5  # polyline sampling step in pixels for the dilation
_BAND_PIXELS = 1 << 22  # row spans are counted in bands of this many pixels (bounds memory)
_FAR = 1e30  # "no chord": far beyond any coordinate a stroke may have (|x|, |y| <= 1e6)


@dataclass(frozen=True)
class _Plan:
    """One stroke on one image, and what each method would cost."""

    pts: np.ndarray  # (n, 2) x, y; a single point is repeated so there is one segment
    radius: float
    pairs: int  # row spans: (segment, row) intervals inside the image
    span_area: int  # row spans: pixels of the image the capsules' bounding box covers
    # dilation window r0, r1, c0, c1 (reaches past the image by up to the radius); None: paints nothing
    grid: tuple[int, int, int, int] | None
    samples: int  # dilation: polyline samples inside the window

    @property
    def dilation_work(self) -> int:
        if self.grid is None:
            return 0
        r0, r1, c0, c1 = self.grid
        return (r1 - r0) * (c1 - c0) + self.samples * 2 // 3

    @property
    def exact(self) -> bool:
        return self.pairs <= EXACT_PAIRS or self.row_span_work <= self.dilation_work

    @property
    def row_span_work(self) -> int:
        return 3 * self.pairs + self.span_area // 4

    @property
    def work(self) -> int:
        return self.row_span_work if self.exact else self.dilation_work


def _plan(points, radius: float, shape: tuple[int, int]) -> _Plan:
    h, w = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    r = max(float(radius), 0.5)
    p0, p1 = pts[:-1], pts[1:]
    j0, j1 = _row_range(p0, p1, r, h)
    live = _touches_columns(p0, p1, r, w) & (j1 > j0)
    if not live.any():
        return _Plan(pts, r, 0, 0, None, 0)
    pairs = int((j1 - j0)[live].sum())
    xs = np.concatenate([p0[live, 0], p1[live, 0]])
    span_cols = min(math.ceil(xs.max() + r), w) - max(math.floor(xs.min() - r), 0)
    span_area = (int(j1[live].max()) - int(j0[live].min())) * max(span_cols, 1)
    margin = math.ceil(r) + 1  # seeds further outside the image cannot reach it
    grid = (
        max(math.floor(pts[:, 1].min() - r), -margin), min(math.ceil(pts[:, 1].max() + r) + 1, h + margin),
        max(math.floor(pts[:, 0].min() - r), -margin), min(math.ceil(pts[:, 0].max() + r) + 1, w + margin),
    )
    _, _, lengths = _clip(p0, p1, grid)
    samples = int(np.ceil(lengths / _STEP).sum()) + len(lengths)
    return _Plan(pts, r, pairs, span_area, grid, samples)


def stroke_work(points, radius: float, shape: tuple[int, int]) -> int:
    """Work units the cheaper method needs for this stroke on an image of ``shape`` (h, w)."""
    return _plan(points, radius, shape).work


def rasterise(strokes: list[dict], shape: tuple[int, int], values: dict[int, int]) -> np.ndarray:
    """Replay strokes in order onto a uint8 label map: a brush or polygon writes its class value,
    the eraser 0, an imported layer its runs.

    Strokes of classes missing from ``values`` (deleted ones) are skipped.
    """
    from .fill import paint_runs, polygon_mask

    out = np.zeros(shape, np.uint8)
    for s in strokes:
        if s["tool"] == "labels":  # an imported label layer
            paint_runs(out, s.get("runs") or [], values)
            continue
        if s["tool"] == "polygon":
            if s["class_id"] in values:
                filled = polygon_mask(s["points"], shape)
                if filled is not None:
                    (r0, c0), mask = filled
                    out[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]][mask] = values[s["class_id"]]
            continue
        if s["tool"] == "eraser":
            value = 0
        elif s["class_id"] in values:
            value = values[s["class_id"]]
        else:
            continue
        painted = stroke_mask(s["points"], s["radius"], shape)
        if painted is not None:
            (r0, c0), mask = painted
            out[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]][mask] = value
    return out


def stroke_mask(points, radius: float, shape: tuple[int, int], exact: bool | None = None):
    """((row, col) of the window's corner, boolean mask) of the pixels one stroke covers inside
    an image of ``shape``, or None when it covers none. ``exact`` forces a method (for tests)."""
    plan = _plan(points, radius, shape)
    if plan.grid is None:
        return None
    use_exact = plan.exact if exact is None else exact
    return _by_row_spans(plan, shape) if use_exact else _by_dilation(plan, shape)


# -- row spans -------------------------------------------------------------------------------
def _row_range(p0: np.ndarray, p1: np.ndarray, r: float, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows [j0, j1) whose pixel centres a segment's capsule can reach, clipped to the image."""
    lo = np.minimum(p0[:, 1], p1[:, 1]) - r
    hi = np.maximum(p0[:, 1], p1[:, 1]) + r
    j0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)
    j1 = np.clip(np.floor(hi - 0.5) + 1, 0, h).astype(np.int64)
    return j0, j1


def _touches_columns(p0: np.ndarray, p1: np.ndarray, r: float, w: int) -> np.ndarray:
    return (np.maximum(p0[:, 0], p1[:, 0]) + r >= 0.5) & (np.minimum(p0[:, 0], p1[:, 0]) - r <= w - 0.5)


def _capsule_spans(x0, y0, x1, y1, ux, uy, length, r: float, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] in x where the line y = yc meets each capsule (lo > hi: it does not); one entry
    per (segment, row), with the segment's unit direction (ux, uy) and length given.

    The capsule is convex and the union of two end disks and a rectangle, so its chord is the
    hull of theirs. Empty pieces are pushed to +-_FAR by arithmetic masks (np.where is slower).
    """
    lo = np.full(len(yc), _FAR)
    hi = np.full(len(yc), -_FAR)
    for xa, ya in ((x0, y0), (x1, y1)):
        d2 = r * r - (yc - ya) ** 2
        half = np.sqrt(np.maximum(d2, 0.0)) - (d2 < 0) * _FAR  # a missed disk: an empty chord
        np.minimum(lo, xa - half, out=lo)
        np.maximum(hi, xa + half, out=hi)
    ry = yc - y0
    # rectangle: 0 <= (x - x0) ux + ry uy <= length and -r <= -(x - x0) uy + ry ux <= r
    a_lo, a_hi = np.full(len(yc), -_FAR), np.full(len(yc), _FAR)
    for k, c, low, high in ((ux, ry * uy, 0.0, length), (-uy, ry * ux, -r, r)):
        flat = np.abs(k) <= 1e-12  # the constraint does not depend on x: all or nothing
        ks = k + flat  # 1 where flat, so nothing divides by zero
        t1, t2 = (low - c) / ks, (high - c) / ks
        out_far = (1 - 2 * ((c >= low) & (c <= high))) * _FAR  # -FAR when satisfied, +FAR when not
        np.maximum(a_lo, np.where(flat, out_far, np.minimum(t1, t2)), out=a_lo)
        np.minimum(a_hi, np.where(flat, -out_far, np.maximum(t1, t2)), out=a_hi)
    empty = (length <= 0) | (a_lo > a_hi)
    np.minimum(lo, x0 + a_lo + empty * _FAR * 2, out=lo)
    np.maximum(hi, x0 + a_hi - empty * _FAR * 2, out=hi)
    return lo, hi


def _by_row_spans(plan: _Plan, shape: tuple[int, int]):
    h, w = shape
    p0, p1, r = plan.pts[:-1], plan.pts[1:], plan.radius
    j0, j1 = _row_range(p0, p1, r, h)
    live = np.nonzero(_touches_columns(p0, p1, r, w) & (j1 > j0))[0]
    counts = (j1 - j0)[live]
    # per-segment values, gathered once and then repeated per row (np.repeat is cheap, gathers are not)
    x0, y0, x1, y1 = p0[live, 0], p0[live, 1], p1[live, 0], p1[live, 1]
    length = np.hypot(x1 - x0, y1 - y0)
    ux, uy = (x1 - x0) / np.where(length > 0, length, 1.0), (y1 - y0) / np.where(length > 0, length, 1.0)
    first = j0[live]
    ends = np.cumsum(counts)
    rows_l, lo_l, hi_l = [], [], []
    start = 0
    while start < len(live):  # chunks of whole segments, about _CHUNK pairs each
        base = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, base + _CHUNK, side="right")), start + 1)
        part, cnt = slice(start, stop), counts[start:stop]
        rows = np.repeat(first[part], cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        per_row = [np.repeat(a[part], cnt) for a in (x0, y0, x1, y1, ux, uy, length)]
        lo, hi = _capsule_spans(*per_row, r, rows + 0.5)
        c0 = np.maximum(np.ceil(lo - 0.5), 0)  # pixel c is in when lo <= c + 0.5 <= hi
        c1 = np.minimum(np.floor(hi - 0.5), w - 1)
        ok = c0 <= c1
        rows_l.append(rows[ok])
        lo_l.append(c0[ok].astype(np.int64))
        hi_l.append(c1[ok].astype(np.int64))
        start = stop
    rows = np.concatenate(rows_l) if rows_l else np.zeros(0, np.int64)
    if rows.size == 0:
        return None
    c0, c1 = np.concatenate(lo_l), np.concatenate(hi_l)
    r0, r1, b0, b1 = int(rows.min()), int(rows.max()) + 1, int(c0.min()), int(c1.max()) + 1
    width = b1 - b0 + 1  # one spare column for the span ends
    mask = np.empty((r1 - r0, width - 1), bool)
    band = max(1, _BAND_PIXELS // width)  # rows per pass: the counting arrays stay small
    rows = rows - r0
    for a in range(0, r1 - r0, band):
        sel = (rows >= a) & (rows < a + band)
        base = (rows[sel] - a) * width - b0
        n = min(band, r1 - r0 - a) * width
        diff = np.bincount(base + c0[sel], minlength=n) - np.bincount(base + c1[sel] + 1, minlength=n)
        mask[a:a + band] = np.cumsum(diff.reshape(-1, width), axis=1)[:, :-1] > 0  # inside a span
    return (r0, b0), mask


# -- dilation -------------------------------------------------------------------------------
def _clip(p0: np.ndarray, p1: np.ndarray, grid: tuple[int, int, int, int]):
    """Segments clipped to the window (Liang-Barsky): start points, end points, lengths of those that meet it."""
    r0, r1, c0, c1 = grid
    d = p1 - p0
    t0, t1 = np.zeros(len(p0)), np.ones(len(p0))
    keep = np.ones(len(p0), bool)
    for k, low, high in ((0, c0, c1), (1, r0, r1)):
        slope = d[:, k] != 0
        ds = np.where(slope, d[:, k], 1.0)
        a, b = (low - p0[:, k]) / ds, (high - p0[:, k]) / ds
        t0 = np.where(slope, np.maximum(t0, np.minimum(a, b)), t0)
        t1 = np.where(slope, np.minimum(t1, np.maximum(a, b)), t1)
        keep &= slope | ((p0[:, k] >= low) & (p0[:, k] <= high))
    keep &= t0 <= t1
    q0 = p0[keep] + t0[keep, None] * d[keep]
    q1 = p0[keep] + t1[keep, None] * d[keep]
    return q0, q1, np.hypot(*(q1 - q0).T)


def _seed_cells(plan: _Plan) -> np.ndarray:
    """Cells of the window the polyline passes through (sampled every half pixel)."""
    r0, r1, c0, c1 = plan.grid
    seeds = np.zeros((r1 - r0, c1 - c0), bool)
    q0, q1, lengths = _clip(plan.pts[:-1], plan.pts[1:], plan.grid)
    x0, y0 = q0[:, 0] - c0, q0[:, 1] - r0
    dx, dy = q1[:, 0] - q0[:, 0], q1[:, 1] - q0[:, 1]
    n = np.ceil(lengths / _STEP).astype(np.int64) + 1
    ends = np.cumsum(n)
    start = 0
    while start < len(n):
        base = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, base + _CHUNK, side="right")), start + 1)
        cnt = n[start:stop]
        part = slice(start, stop)
        t = (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)) / np.repeat(np.maximum(cnt - 1, 1), cnt)
        ys = np.repeat(y0[part], cnt) + t * np.repeat(dy[part], cnt)  # >= 0 inside the window: int() floors
        xs = np.repeat(x0[part], cnt) + t * np.repeat(dx[part], cnt)
        seeds[np.clip(ys.astype(np.int64), 0, seeds.shape[0] - 1), np.clip(xs.astype(np.int64), 0, seeds.shape[1] - 1)] = True
        start = stop
    return seeds


def _by_dilation(plan: _Plan, shape: tuple[int, int]):
    """Pixels whose centre is within the radius of a seed cell's centre: a separable dilation by
    a disk, O(window) with running maxima (vertical distance per column, then half-widths)."""
    h, w = shape
    r0, r1, c0, c1 = plan.grid
    a0, a1, b0, b1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if a0 >= a1 or b0 >= b1:
        return None
    # running maxima along the last axis are several times faster than down columns, so the
    # vertical pass runs on the transposed window
    seeds_t = np.ascontiguousarray(_seed_cells(plan).T)
    far = np.int32(1 << 30)
    ys = np.arange(seeds_t.shape[1], dtype=np.int32)
    above = np.maximum.accumulate(np.where(seeds_t, ys, -far), axis=1)[:, a0 - r0:a1 - r0]
    below = np.minimum.accumulate(np.where(seeds_t, ys, far)[:, ::-1], axis=1)[:, ::-1][:, a0 - r0:a1 - r0]
    del seeds_t
    rows = ys[a0 - r0:a1 - r0]
    gap = np.ascontiguousarray(np.minimum(rows - above, below - rows).T)  # rows to the nearest seed, per column
    del above, below
    reach = math.floor(plan.radius)
    ks = np.arange(reach + 1, dtype=np.float64)
    half = np.floor(np.sqrt(plan.radius ** 2 - ks ** 2) + 1e-9).astype(np.int32)  # columns reached at that gap
    width = np.where(gap <= reach, half[np.minimum(gap, reach)], -far)
    del gap
    xs = np.arange(width.shape[1], dtype=np.int32)
    ahead = np.maximum.accumulate(width + xs, axis=1) - xs  # best reach from a seed column on the left
    behind = np.maximum.accumulate((width - xs)[:, ::-1], axis=1)[:, ::-1] + xs
    mask = (np.maximum(ahead, behind) >= 0)[:, b0 - c0:b1 - c0]
    return (a0, b0), mask
