"""Simulated scribbles: a few seeded brush strokes per class drawn inside the dense ground truth.

Procedure (documented in docs/segmentation.md; deterministic for a given ``seed``):

1. For each class ``c`` (in id order) find its pixels; prefer stroke starts on pixels at least
   ``radius`` px inside the class (distance transform), else any pixel of the class.
2. Draw ``strokes_per_class`` strokes. A stroke starts at a random such pixel and walks up to
   ``length`` steps of 1 px in a direction that turns by at most 30 degrees per step; it ends
   early when it would leave the class.
3. Each visited point paints a disk of ``radius`` px, clipped to the class (so a simulated
   scribble never mislabels a pixel).
4. If the strokes cover more than ``max_fraction`` of the image, each class's strokes are
   shortened (the last-painted pixels removed first) to fit.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi


def simulate_scribbles(
    gt: np.ndarray,
    strokes_per_class: int = 3,
    radius: int = 2,
    length: int | None = None,
    max_fraction: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """uint8 scribble map (0 = unlabelled) with strokes of every class id > 0 in ``gt``."""
    rng = np.random.default_rng(seed)
    h, w = gt.shape
    length = length or max(10, min(h, w) // 8)
    classes = [int(c) for c in np.unique(gt) if c > 0]
    out = np.zeros((h, w), np.uint8)
    order = np.zeros((h, w), np.int64)  # paint order, to shorten strokes from their ends
    disk_yy, disk_xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = disk_yy**2 + disk_xx**2 <= radius * radius
    dy_off, dx_off = disk_yy[disk], disk_xx[disk]
    step = 1
    for c in classes:
        mask = gt == c
        inner = ndi.distance_transform_edt(mask) > radius
        starts = np.argwhere(inner) if inner.any() else np.argwhere(mask)
        for _ in range(strokes_per_class):
            y, x = (float(v) for v in starts[rng.integers(len(starts))])
            ang = rng.uniform(0, 2 * np.pi)
            for _ in range(length):
                iy, ix = int(round(y)), int(round(x))
                if not (0 <= iy < h and 0 <= ix < w and mask[iy, ix]):
                    break
                py, px = iy + dy_off, ix + dx_off
                ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
                py, px = py[ok], px[ok]
                new = mask[py, px] & (out[py, px] == 0)
                out[py[new], px[new]] = c
                order[py[new], px[new]] = step
                step += 1
                ang += rng.uniform(-np.pi / 6, np.pi / 6)
                y, x = y + np.sin(ang), x + np.cos(ang)
    budget = int(max_fraction * h * w)
    if (out > 0).sum() > budget:
        per_class = max(1, budget // max(1, len(classes)))
        for c in classes:
            sel = np.flatnonzero(out.ravel() == c)
            if len(sel) > per_class:
                drop = sel[np.argsort(order.ravel()[sel])[per_class:]]
                out.ravel()[drop] = 0
    return out
