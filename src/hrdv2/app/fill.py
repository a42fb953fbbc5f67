"""Filled polygons (the lasso tool) and imported label layers as label maps, and label images
as layers.

A polygon covers every pixel whose centre lies inside it (even-odd rule, what the page's canvas
``fill("evenodd")`` shows): each edge crosses the row centres in its half-open y-range once,
so every row has an even number of crossings and each pair bounds one run of pixels. The work
is one crossing per (edge, row it spans), bounded before a polygon is accepted
(:func:`polygon_work`).

An imported label image (0 = unlabelled, 1..K = class values, the CLI's convention) is stored
as runs ``(class_id, row, x0, x1)`` of equal non-zero pixels: exact, compact for scribbles, and
kept as class *ids* so renaming or reordering classes keeps what each run means.
"""

from __future__ import annotations

import numpy as np

MAX_RUNS = 2_000_000  # an imported layer beyond this is a dense label image too large to store as runs


def _crossings(points, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(row, x) of every crossing of the closed polygon's edges with the row centres inside the image."""
    h, _ = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    nxt = np.roll(pts, -1, axis=0)
    x0, y0, x1, y1 = pts[:, 0], pts[:, 1], nxt[:, 0], nxt[:, 1]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    j0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)  # rows whose centre y+0.5 is in [lo, hi)
    j1 = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
    live = j1 > j0
    counts = (j1 - j0)[live]
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    rows = np.repeat(j0[live], counts) + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
    ax, ay, bx, by = (np.repeat(a[live], counts) for a in (x0, y0, x1, y1))
    xs = ax + (rows + 0.5 - ay) * (bx - ax) / (by - ay)  # by != ay on every live edge
    return rows, xs


def polygon_work(points, shape: tuple[int, int]) -> int:
    """Work units (as ``raster.stroke_work``) to fill a polygon: its crossings and bounding box."""
    h, w = shape
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ys = np.clip(pts[:, 1], 0, h)
    nxt = np.roll(ys, -1)
    crossings = int(np.abs(np.ceil(nxt) - np.ceil(ys)).sum()) + len(pts)
    box = (np.ptp(np.clip(pts[:, 0], 0, w)) + 1) * (np.ptp(ys) + 1)
    return 3 * crossings + int(box) // 4


def polygon_mask(points, shape: tuple[int, int]):
    """((row, col) of the window's corner, boolean mask) of the pixels inside the polygon, or None."""
    h, w = shape
    rows, xs = _crossings(points, shape)
    if rows.size == 0:
        return None
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    r, a, b = rows[0::2], xs[0::2], xs[1::2]  # pairs on the same row: even-odd runs
    c0 = np.clip(np.ceil(a - 0.5), 0, w).astype(np.int64)  # pixel c is in when a <= c + 0.5 < b
    c1 = np.clip(np.ceil(b - 0.5), 0, w).astype(np.int64)
    ok = c1 > c0
    r, c0, c1 = r[ok], c0[ok], c1[ok]
    if r.size == 0:
        return None
    r0, r1, b0, b1 = int(r.min()), int(r.max()) + 1, int(c0.min()), int(c1.max())
    width = b1 - b0 + 1
    diff = np.zeros((r1 - r0) * width, np.int32)
    np.add.at(diff, (r - r0) * width + c0 - b0, 1)
    np.add.at(diff, (r - r0) * width + c1 - b0, -1)
    mask = np.cumsum(diff.reshape(r1 - r0, width), axis=1)[:, :-1] > 0
    return (r0, b0), mask


def label_runs(labels: np.ndarray, class_ids: dict[int, int]) -> list[list[int]]:
    """Runs ``[class_id, row, x0, x1)`` of equal non-zero values of a label map; ``class_ids`` maps
    each value present to its class id."""
    lab = np.asarray(labels)
    h, w = lab.shape
    padded = np.zeros((h, w + 2), lab.dtype)
    padded[:, 1:-1] = lab
    change = padded[:, 1:] != padded[:, :-1]  # (h, w + 1): a run starts or ends before column k
    rows, cols = np.nonzero(change)
    out: list[list[int]] = []
    # consecutive change points of a row bound segments of one value (0 segments are dropped)
    same_row = rows[:-1] == rows[1:]
    starts, ends, rr = cols[:-1][same_row], cols[1:][same_row], rows[:-1][same_row]
    values = lab[rr, starts] if rr.size else np.zeros(0, lab.dtype)
    keep = values > 0
    lut = {int(v): int(class_ids[int(v)]) for v in np.unique(values[keep])}
    for v, y, x0, x1 in zip(values[keep].tolist(), rr[keep].tolist(), starts[keep].tolist(), ends[keep].tolist()):
        out.append([lut[v], y, x0, x1])
    return out


def paint_runs(out: np.ndarray, runs: list, values: dict[int, int]) -> None:
    """Write the runs of known classes into ``out`` (uint8 label map); deleted classes are skipped."""
    known = [r for r in runs if r[0] in values]
    if not known:
        return
    arr = np.asarray(known, dtype=np.int64)
    h, w = out.shape
    vals = np.asarray([values[int(c)] for c in arr[:, 0]], np.int64)
    y, x0, x1 = arr[:, 1], np.clip(arr[:, 2], 0, w), np.clip(arr[:, 3], 0, w)
    ok = (y >= 0) & (y < h) & (x1 > x0)
    y, x0, x1, vals = y[ok], x0[ok], x1[ok], vals[ok]
    diff = np.zeros(h * (w + 1), np.int64)
    mark = np.zeros(h * (w + 1), np.int64)
    np.add.at(diff, y * (w + 1) + x0, vals)  # runs of one layer never overlap: sums are the value
    np.add.at(diff, y * (w + 1) + x1, -vals)
    np.add.at(mark, y * (w + 1) + x0, 1)
    np.add.at(mark, y * (w + 1) + x1, -1)
    value = np.cumsum(diff.reshape(h, w + 1), axis=1)[:, :-1]
    inside = np.cumsum(mark.reshape(h, w + 1), axis=1)[:, :-1] > 0
    out[inside] = value[inside].astype(np.uint8)
