"""Segmentation scores over class ids 1..K; ground-truth label 0 means "ignore".

Every score can be computed from a confusion matrix, so scores over many images are the
scores of the summed matrices (pixel-weighted, as in the usual mIoU definition), not averages
of per-image scores.
"""

from __future__ import annotations

import numpy as np

from hrdv2.errors import ShapeError


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """(K+1, K+1) int64 counts, rows = ground truth id, columns = predicted id (0..K).

    Row 0 (ignored ground truth) is always zero; column 0 counts pixels left unlabelled by the
    prediction, which are errors. ``n_classes`` defaults to the largest id present.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ShapeError(f"prediction is {pred.shape} but ground truth is {gt.shape}; they must match.")
    if (pred.size and pred.min() < 0) or (gt.size and gt.min() < 0):
        raise ValueError("label maps must hold non-negative class ids.")
    k = int(n_classes) if n_classes is not None else int(max(pred.max(initial=0), gt.max(initial=0)))
    if pred.max(initial=0) > k or gt.max(initial=0) > k:
        raise ValueError(f"labels exceed n_classes={k} (max pred {pred.max()}, max gt {gt.max()}).")
    keep = gt.ravel() > 0
    idx = gt.ravel()[keep].astype(np.int64) * (k + 1) + pred.ravel()[keep].astype(np.int64)
    return np.bincount(idx, minlength=(k + 1) ** 2).reshape(k + 1, k + 1)


def _cm(pred_or_cm: np.ndarray, gt: np.ndarray | None, n_classes: int | None) -> np.ndarray:
    return np.asarray(pred_or_cm) if gt is None else confusion_matrix(pred_or_cm, gt, n_classes)


def iou_per_class(pred_or_cm: np.ndarray, gt: np.ndarray | None = None, n_classes: int | None = None) -> np.ndarray:
    """IoU of classes 1..K (index 0 of the result is class 1); NaN where a class is in neither map.

    Pass ``(pred, gt)`` or one confusion matrix from :func:`confusion_matrix`.
    """
    cm = _cm(pred_or_cm, gt, n_classes).astype(np.float64)
    tp = np.diag(cm)[1:]
    fn = cm[1:, :].sum(axis=1) - tp
    fp = cm[1:, 1:].sum(axis=0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def mean_iou(pred_or_cm: np.ndarray, gt: np.ndarray | None = None, n_classes: int | None = None) -> float:
    """Mean IoU over classes present in the ground truth or the prediction."""
    ious = iou_per_class(pred_or_cm, gt, n_classes)
    return float(np.nanmean(ious)) if np.any(~np.isnan(ious)) else float("nan")


def pixel_accuracy(pred_or_cm: np.ndarray, gt: np.ndarray | None = None, n_classes: int | None = None) -> float:
    """Fraction of labelled ground-truth pixels predicted correctly."""
    cm = _cm(pred_or_cm, gt, n_classes)
    total = cm[1:, :].sum()
    return float(np.trace(cm[1:, 1:]) / total) if total else float("nan")


def compact_confusion(pairs) -> tuple[np.ndarray, np.ndarray]:
    """Confusion over the class ids actually present, for label maps with large or sparse ids.

    ``pairs`` yields (pred, gt) label maps. Returns ``ids`` (id 0 first, then every non-zero id
    seen in any map, ascending) and the (m+1, m+1) matrix whose row/column j stands for
    ``ids[j]``, so its size follows the number of classes present, not the largest id (a
    16-bit prediction holding id 65535 needs a 2x2 matrix, not 32 GiB).
    """
    pairs = [(np.asarray(p), np.asarray(g)) for p, g in pairs]
    for p, g in pairs:
        if p.shape != g.shape:
            raise ShapeError(f"prediction is {p.shape} but ground truth is {g.shape}; they must match.")
        if (p.size and p.min() < 0) or (g.size and g.min() < 0):
            raise ValueError("label maps must hold non-negative class ids.")
    present = [np.unique(a) for pair in pairs for a in pair]
    ids = np.union1d(np.zeros(1, np.int64), np.concatenate(present).astype(np.int64) if present else [])
    m = len(ids)
    cm = np.zeros((m, m), np.int64)
    for p, g in pairs:
        keep = g.ravel() > 0
        gi = np.searchsorted(ids, g.ravel()[keep])
        pi = np.searchsorted(ids, p.ravel()[keep])
        cm += np.bincount(gi * m + pi, minlength=m * m).reshape(m, m)
    return ids, cm
