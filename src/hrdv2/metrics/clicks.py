"""Interactive-segmentation metrics: NoC@t, failures and mIoU after k clicks.

Conventions (the RITM / SimpleClick / iSegProbe ones):

* an IoU sequence ``ious`` holds the IoU after click 1, 2, ... (``ious[0]`` is after the first
  click); a run may stop early once it reached its stop threshold;
* ``NoC@t`` is the 1-based index of the first click whose IoU is >= t; a run that never gets
  there counts ``max_clicks`` (it is also a *failure*);
* ``mIoU@k`` averages, over runs, the IoU after k clicks; a run that stopped before click k
  keeps its last IoU (more clicks would not be asked for a mask that is already accepted).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hrdv2.errors import ConfigError, ShapeError


def _as_sequence(ious: Sequence[float]) -> np.ndarray:
    arr = np.asarray(ious, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ShapeError("empty IoU sequence: a click run must hold the IoU of at least one click.")
    if np.any(~np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ConfigError(f"IoU values must lie in [0, 1], got min {arr.min()}, max {arr.max()}.")
    return arr


def _check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ConfigError(f"IoU threshold must be in (0, 1], got {threshold}; NoC@85 means threshold=0.85.")


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold`` (1-based), capped at ``max_clicks``."""
    _check_threshold(threshold)
    arr = _as_sequence(ious)[:max_clicks]
    hits = np.flatnonzero(arr >= threshold)
    return int(hits[0]) + 1 if hits.size else int(max_clicks)


def failed(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> bool:
    """True when the run never reached ``threshold`` within ``max_clicks`` clicks."""
    _check_threshold(threshold)
    return not bool(np.any(_as_sequence(ious)[:max_clicks] >= threshold))


def pad_ious(ious: Sequence[float], max_clicks: int = 20) -> np.ndarray:
    """The sequence cut or extended (with its last value) to exactly ``max_clicks`` entries."""
    if max_clicks < 1:
        raise ConfigError(f"max_clicks must be >= 1, got {max_clicks}.")
    arr = _as_sequence(ious)[:max_clicks]
    return np.concatenate([arr, np.full(max_clicks - arr.size, arr[-1])])


def miou_at_k(runs: Sequence[Sequence[float]], max_clicks: int = 20) -> np.ndarray:
    """Mean IoU after k = 1..max_clicks clicks over ``runs``, shape ``(max_clicks,)``."""
    if len(runs) == 0:
        raise ShapeError("no click runs to average: the dataset produced no samples.")
    return np.stack([pad_ious(r, max_clicks) for r in runs]).mean(axis=0)


def summarize(
    runs: Sequence[Sequence[float]], max_clicks: int = 20, thresholds: Sequence[float] = (0.85, 0.90)
) -> dict[str, float]:
    """NoC@t, failures@t (for each threshold) and mIoU@k of a set of runs, as a flat dict.

    Keys: ``n``, ``noc@85``, ``fail@85``, ..., ``miou@1`` ... ``miou@{max_clicks}``.
    """
    out: dict[str, float] = {"n": float(len(runs))}
    for t in thresholds:
        tag = f"{round(t * 100):d}"
        out[f"noc@{tag}"] = float(np.mean([noc(r, t, max_clicks) for r in runs])) if runs else float("nan")
        out[f"fail@{tag}"] = float(sum(failed(r, t, max_clicks) for r in runs))
    for k, v in enumerate(miou_at_k(runs, max_clicks), start=1):
        out[f"miou@{k}"] = float(v)
    return out
