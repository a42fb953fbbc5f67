"""Which labelled pixels to train on: all of them up to a cap, class-balanced beyond it.

Why: a few long strokes can label 10^5..10^6 pixels; fitting a forest on all of them is slow
and mostly redundant (neighbouring pixels are near-duplicates). Past ``max_samples`` each class
gets an equal share (classes with fewer pixels keep all of theirs; the rest is shared among the
others), so a heavily painted class does not swamp a lightly painted one.
"""

from __future__ import annotations

import numpy as np


def class_quotas(counts: dict[int, int], max_samples: int) -> dict[int, int]:
    """Pixels to draw per class: everything if the total fits, else a water-filled equal share."""
    if sum(counts.values()) <= max_samples:
        return dict(counts)
    quotas: dict[int, int] = {}
    remaining = dict(counts)
    budget = max_samples
    while remaining:
        share = budget // len(remaining)
        small = {c: n for c, n in remaining.items() if n <= share}
        if not small:
            for c in remaining:
                quotas[c] = share
            break
        for c, n in small.items():
            quotas[c] = n
            budget -= n
            del remaining[c]
    return quotas


def balanced_sample(
    scribbles: list[np.ndarray], max_samples: int, random_state: int | None = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: (flat pixel indices, class ids) of the training pixels, class-balanced to the cap."""
    rng = np.random.default_rng(random_state)
    flat = [s.ravel() for s in scribbles]
    classes = np.unique(np.concatenate([np.unique(f) for f in flat]))
    classes = classes[classes > 0]
    where = {int(c): [np.flatnonzero(f == c) for f in flat] for c in classes}
    counts = {c: sum(len(ix) for ix in per) for c, per in where.items()}
    quotas = class_quotas(counts, max_samples)
    picked: list[list[np.ndarray]] = [[] for _ in flat]
    for c, per in where.items():
        allix = np.concatenate([np.stack([np.full(len(ix), i), ix]) for i, ix in enumerate(per)], axis=1)
        if quotas[c] < allix.shape[1]:
            allix = allix[:, rng.choice(allix.shape[1], quotas[c], replace=False)]
        for i in range(len(flat)):
            picked[i].append(allix[1, allix[0] == i])
    out = []
    for i, f in enumerate(flat):
        ix = np.sort(np.concatenate(picked[i])) if picked[i] else np.zeros(0, np.int64)
        out.append((ix, f[ix].astype(np.int64)))
    return out
