"""Object-localisation and saliency metrics: box IoU, CorLoc, foreground IoU, boxes per image.

Boxes are ``(x0, y0, x1, y1)`` pixels with x1/y1 exclusive (see ``hrdv2.unsupervised.boxes``).
CorLoc follows the object-discovery literature (LOST, TokenCut, HR-Dv2): an image is correctly
localised when *any* predicted box has IoU > 0.5 with *any* ground-truth box.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from hrdv2.errors import ShapeError

CORLOC_IOU = 0.5


def _as_boxes(boxes: np.ndarray | Sequence, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ShapeError(f"{what} must be (N, 4) boxes x0 y0 x1 y1; got shape {arr.shape}.")
    if np.any(arr[:, 2] < arr[:, 0]) or np.any(arr[:, 3] < arr[:, 1]):
        raise ShapeError(f"{what}: some boxes have x1 < x0 or y1 < y0; expected x0 y0 x1 y1 order.")
    return arr


def box_iou(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> np.ndarray:
    """(N, M) intersection-over-union of two box sets (``torchvision.ops.box_iou``)."""
    import torch
    from torchvision.ops import box_iou as _tv_box_iou

    aa, bb = _as_boxes(a, "boxes a"), _as_boxes(b, "boxes b")
    if len(aa) == 0 or len(bb) == 0:
        return np.zeros((len(aa), len(bb)))
    iou = _tv_box_iou(torch.from_numpy(aa), torch.from_numpy(bb)).numpy()
    return np.nan_to_num(iou, nan=0.0)  # two empty boxes: 0/0


def localised(pred: np.ndarray | Sequence, gt: np.ndarray | Sequence, threshold: float = CORLOC_IOU) -> bool:
    """True when any predicted box has IoU > threshold with any ground-truth box."""
    iou = box_iou(pred, gt)
    return bool(iou.size and iou.max() > threshold)


def corloc(
    preds: Iterable[np.ndarray | Sequence], gts: Iterable[np.ndarray | Sequence], threshold: float = CORLOC_IOU
) -> float:
    """Fraction of images correctly localised (see ``localised``); NaN for no images."""
    hits = [localised(p, g, threshold) for p, g in zip(preds, gts, strict=True)]
    return float(np.mean(hits)) if hits else float("nan")


def foreground_iou(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> float:
    """IoU of two binary foreground masks over the ``valid`` pixels (all by default).

    Both empty: 1.0 (the prediction agrees that there is nothing). Shapes must match.
    """
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ShapeError(f"predicted mask {p.shape} and ground truth {g.shape} must have the same shape.")
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != p.shape:
            raise ShapeError(f"valid mask {v.shape} must match the masks' shape {p.shape}.")
        p, g = p & v, g & v
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else np.count_nonzero(p & g) / union


def mean_iou(ious: Iterable[float]) -> float:
    """Mean of per-image foreground IoUs (the saliency 'mIoU' of CUB / DUTS tables); NaN if none."""
    vals = list(ious)
    return float(np.mean(vals)) if vals else float("nan")


def boxes_per_image(preds: Iterable[np.ndarray | Sequence]) -> float:
    """Mean number of predicted boxes per image; NaN for no images."""
    counts = [len(_as_boxes(p, "predicted boxes")) for p in preds]
    return float(np.mean(counts)) if counts else float("nan")
