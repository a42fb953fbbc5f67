"""A picture of the result: background dimmed, foreground classes tinted, boxes drawn."""

from __future__ import annotations

import numpy as np

from hrdv2.io import to_rgb01
from hrdv2.unsupervised.boxes import Boxes

SUPERBOX_COLOUR = (255, 215, 0)  # gold: the single-object box
_PALETTE = np.array(
    [(46, 204, 113), (52, 152, 219), (231, 76, 60), (155, 89, 182), (26, 188, 156), (230, 126, 34), (236, 112, 160)],
    dtype=np.float32,
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in _PALETTE[(class_id - 1) % len(_PALETTE)])


def render_overlay(image: np.ndarray, classes: np.ndarray, foreground_ids: list[int], boxes: Boxes) -> np.ndarray:
    """(H, W, 3) uint8: the image with background at 40 % brightness, each foreground class
    tinted with its colour, multi-object boxes in the class colour and the superbox in gold."""
    from PIL import Image, ImageDraw

    rgb = to_rgb01(image) * 255.0
    out = rgb * 0.4
    for c in foreground_ids:
        m = classes == c
        out[m] = 0.65 * rgb[m] + 0.35 * _PALETTE[(c - 1) % len(_PALETTE)]
    pic = Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    width = max(1, round(max(classes.shape) / 200))
    for box, c, sup in zip(boxes.boxes, boxes.classes, boxes.is_superbox):
        x0, y0, x1, y1 = (int(v) for v in box)
        colour = SUPERBOX_COLOUR if sup else class_colour(int(c))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    if boxes.superbox is not None and not boxes.is_superbox.any():  # dropped as a duplicate: still show it, thin
        x0, y0, x1, y1 = (int(v) for v in boxes.superbox)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=SUPERBOX_COLOUR, width=1)
    return np.asarray(pic)
