"""Step 7: object boxes from the class-agnostic segmentation.

Box convention (used across hrdv2): ``(x0, y0, x1, y1)`` in pixels, x0/y0 inclusive and
x1/y1 exclusive, so a box's area is ``(x1 - x0) * (y1 - y0)`` and a single pixel at (x, y) is
``(x, y, x + 1, y + 1)``. This is the convention of ``torchvision.ops.box_iou``.

Multi-object boxes: one per connected component (8-connectivity) of each foreground class.
Single-object "superbox": around the largest connected component of the whole foreground
mask. When some multi-object box already overlaps the superbox with IoU > 0.8, the superbox
is a near duplicate and is dropped from the multi-object list (it stays the single-object
answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hrdv2.errors import ShapeError

DEFAULT_MIN_AREA = 200  # px; components smaller than this are speckle, not objects (paper value)
SUPERBOX_DEDUP_IOU = 0.8
_EIGHT = np.ones((3, 3), dtype=bool)


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ShapeError(f"mask must be (H, W); got shape {mask.shape}.")
    return mask.astype(bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a binary mask: (label image 0..n, n)."""
    from scipy import ndimage

    lab, n = ndimage.label(_check_mask(mask), structure=_EIGHT)
    return lab, int(n)


def _boxes_of(lab: np.ndarray, n: int, min_area: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, areas and component ids (1..n) of labelled components with area >= min_area."""
    from scipy import ndimage

    if n == 0:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
    slices = ndimage.find_objects(lab)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.int64)
    keep = areas >= min_area
    return boxes[keep], areas[keep], np.flatnonzero(keep) + 1


def component_boxes(mask: np.ndarray, min_area: int = DEFAULT_MIN_AREA) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) and pixel areas (N,) of the 8-connected components with area >= min_area."""
    lab, n = components(mask)
    boxes, areas, _ = _boxes_of(lab, n, min_area)
    return boxes, areas


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask (all False when the mask is empty)."""
    lab, n = components(mask)
    if n == 0:
        return np.zeros(lab.shape, dtype=bool)
    areas = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(areas)) + 1)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box around all True pixels, or None for an empty mask."""
    m = _check_mask(mask)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.int64)


def superbox(foreground: np.ndarray) -> np.ndarray | None:
    """Single-object box: around the largest connected component of the foreground mask."""
    return mask_box(largest_component(foreground))


@dataclass
class Boxes:
    """Predicted boxes of one image.

    ``boxes`` (N, 4) int64 in the module's convention; ``classes`` (N,) the class id each box
    came from (0 for the superbox); ``scores`` (N,) attention density inside the box's pixels
    divided by the image's mean attention (> 1: more attended than average);
    ``is_superbox`` (N,) bool. ``superbox`` is the single-object answer (None when there is no
    foreground), whether or not it survived deduplication in the multi-object list.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    is_superbox: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    superbox: np.ndarray | None = None
    superbox_score: float | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_json(self) -> dict:
        """Plain-Python view for JSON output."""
        items = [
            {
                "box": [int(v) for v in b],
                "class": int(c),
                "score": float(s),
                "superbox": bool(sb),
            }
            for b, c, s, sb in zip(self.boxes, self.classes, self.scores, self.is_superbox)
        ]
        return {
            "box_format": "x0 y0 x1 y1, pixels, x1/y1 exclusive",
            "boxes": items,
            "superbox": None if self.superbox is None else [int(v) for v in self.superbox],
            "superbox_score": self.superbox_score,
        }


def _score(attention: np.ndarray | None, pixels: np.ndarray, mean_attn: float) -> float:
    if attention is None:
        return 1.0
    return float(attention[pixels].mean() / mean_attn) if mean_attn > 0 else 1.0


def predict_boxes(
    classes: np.ndarray,
    foreground_ids: list[int],
    attention: np.ndarray | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    dedup_iou: float = SUPERBOX_DEDUP_IOU,
) -> Boxes:
    """Multi-object boxes (every component of every foreground class) plus the superbox rule."""
    from hrdv2.metrics.localisation import box_iou

    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ShapeError(f"class map must be (H, W); got shape {classes.shape}.")
    attn = None if attention is None else np.asarray(attention, dtype=np.float64)
    if attn is not None and attn.shape != classes.shape:
        raise ShapeError(f"attention {attn.shape} and class map {classes.shape} must have the same (H, W) shape.")
    mean_attn = float(attn.mean()) if attn is not None else 1.0

    boxes, cls, scores = [], [], []
    for c in foreground_ids:
        lab, n = components(classes == c)
        for box, _, comp in zip(*_boxes_of(lab, n, min_area)):
            boxes.append(box)
            cls.append(c)
            scores.append(_score(attn, lab == comp, mean_attn))
    fg = np.isin(classes, list(foreground_ids))
    big = largest_component(fg)
    sbox = mask_box(big)
    sscore = None if sbox is None else _score(attn, big, mean_attn)

    out_boxes = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    out_cls = np.array(cls, dtype=np.int32)
    out_scores = np.array(scores, dtype=np.float64)
    is_super = np.zeros(len(out_boxes), dtype=bool)
    if sbox is not None:
        dup = len(out_boxes) > 0 and float(box_iou(sbox[None], out_boxes).max()) > dedup_iou
        if not dup:
            out_boxes = np.concatenate([sbox[None], out_boxes])
            out_cls = np.concatenate([[0], out_cls]).astype(np.int32)
            out_scores = np.concatenate([[sscore], out_scores])
            is_super = np.concatenate([[True], is_super])
    return Boxes(out_boxes, out_cls, out_scores, is_super, sbox, sscore)
