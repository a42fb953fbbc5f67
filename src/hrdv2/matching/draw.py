"""Pictures of matches: source and target side by side with each query joined to its match,
and per query a similarity heat map over the target (small-object retrieval)."""

from __future__ import annotations

import numpy as np

from hrdv2.io import to_rgb01
from hrdv2.matching.core import MatchResult

GAP = 8  # px of white between the two images
MIN_PICTURE_SIDE = 384  # smaller images are enlarged (nearest) by a whole factor, so markers stay readable
_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def colour(i: int) -> tuple[int, int, int]:
    return _COLOURS[i % len(_COLOURS)]


def _rgb8(image: np.ndarray) -> np.ndarray:
    return (to_rgb01(np.asarray(image)) * 255).round().astype(np.uint8)


def zoom_factor(*images: np.ndarray) -> int:
    """Whole enlargement factor so that the larger image's longer side reaches MIN_PICTURE_SIDE."""
    side = max(max(np.shape(im)[:2]) for im in images)
    return max(1, -(-MIN_PICTURE_SIDE // side))


def side_by_side(source: np.ndarray, target: np.ndarray, zoom: int = 1) -> tuple[np.ndarray, int]:
    """(H, Ws + GAP + Wt, 3) uint8 canvas (each image enlarged ``zoom`` times) and the target's x offset."""
    s, t = _rgb8(source), _rgb8(target)
    if zoom > 1:
        s, t = (np.repeat(np.repeat(a, zoom, 0), zoom, 1) for a in (s, t))
    h = max(s.shape[0], t.shape[0])
    canvas = np.full((h, s.shape[1] + GAP + t.shape[1], 3), 255, np.uint8)
    canvas[: s.shape[0], : s.shape[1]] = s
    canvas[: t.shape[0], s.shape[1] + GAP:] = t
    return canvas, s.shape[1] + GAP


def _radius(shape: tuple[int, ...]) -> int:
    return max(2, round(max(shape[:2]) / 100))


def draw_matches(source: np.ndarray, target: np.ndarray, result: MatchResult,
                 truth: np.ndarray | None = None) -> np.ndarray:
    """Source | target, query i and its match as circles of colour i joined by a line; annotated
    target points (``truth``) as crosses of the same colour."""
    from PIL import Image, ImageDraw

    z = zoom_factor(source, target)
    canvas, dx = side_by_side(source, target, z)
    pic = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pic)
    r = _radius(canvas.shape)
    width = max(1, r // 2)
    for i, ((qx, qy), (mx, my)) in enumerate(zip(result.queries * z + z // 2, result.matches * z + z // 2)):
        c = colour(i)
        draw.line([(qx, qy), (mx + dx, my)], fill=c, width=width)
        draw.ellipse([qx - r, qy - r, qx + r, qy + r], outline=c, width=width)
        draw.ellipse([mx + dx - r, my - r, mx + dx + r, my + r], outline=c, width=width)
        if truth is not None:
            tx, ty = (int(round(v * z + z // 2)) for v in truth[i])
            draw.line([(tx + dx - r, ty - r), (tx + dx + r, ty + r)], fill=c, width=width)
            draw.line([(tx + dx - r, ty + r), (tx + dx + r, ty - r)], fill=c, width=width)
    return np.asarray(pic)


def heat_colours(values: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """(..., 3) uint8 'inferno' colours of ``values`` scaled from [lo, hi]."""
    from matplotlib import colormaps

    t = np.clip((np.asarray(values, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    return (colormaps["inferno"](t)[..., :3] * 255).round().astype(np.uint8)


def draw_similarity(source: np.ndarray, target: np.ndarray, result: MatchResult, i: int) -> np.ndarray:
    """Query i marked on the source | its cosine-similarity map over the target (inferno from the
    map's median, dark, to its maximum, bright), blended 70/30 over the target, best match circled."""
    from PIL import Image, ImageDraw

    sim = result.maps[i]
    heat = heat_colours(sim, float(np.median(sim)), float(sim.max())).astype(np.float32)
    tgt = _rgb8(target).astype(np.float32)
    blended = (0.7 * heat + 0.3 * tgt).round().astype(np.uint8)
    z = zoom_factor(source, target)
    canvas, dx = side_by_side(source, blended, z)
    pic = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pic)
    r = _radius(canvas.shape)
    width = max(1, r // 2)
    (qx, qy), (mx, my) = result.queries[i] * z + z // 2, result.matches[i] * z + z // 2
    c = colour(i)
    draw.ellipse([qx - r, qy - r, qx + r, qy + r], outline=c, width=width)
    draw.ellipse([mx + dx - r, my - r, mx + dx + r, my + r], outline=(0, 255, 255), width=width)
    return np.asarray(pic)
