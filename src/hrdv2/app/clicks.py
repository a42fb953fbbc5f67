"""The click tool: an object from positive and negative clicks, then its pixels as a label layer.

``hrdv2.probe.click_segmenter.ClickSegmenter`` fits a small logistic model on the project's
features of the image for every click (no training of the project's model). The server keeps
no click state: each request replays the clicks in order, each prediction seeding the next as
the session on the page did, so a reload or a second tab sees the same object.
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from pydantic import Field

from .deps import state
from .fill import label_runs
from .schemas import Id, IdPath, StrokeOut, _Strict

router = APIRouter(prefix="/api")
MAX_CLICKS = 50


class ClickIn(_Strict):
    x: float = Field(ge=0, le=1e6)
    y: float = Field(ge=0, le=1e6)
    positive: bool = True


class ClickObject(_Strict):
    clicks: list[ClickIn] = Field(min_length=1, max_length=MAX_CLICKS)
    class_id: Id | None = Field(default=None, description="commit: the class the object's pixels get")


class ClickMask(_Strict):
    width: int
    height: int
    area: int
    runs: list[tuple[int, int, int]] = Field(description="(row, x0, x1) runs of the object, x1 exclusive")


def _mask(request: Request, image_id: int, body: ClickObject) -> np.ndarray:
    from hrdv2.errors import ShapeError
    from hrdv2.probe.click_segmenter import ClickSegmenter
    from hrdv2.probe.clicks import Click

    s = state(request)
    image = s.store.get_image(image_id)
    for c in body.clicks:
        if c.x >= image["width"] or c.y >= image["height"]:
            raise ShapeError(f"click ({c.x:g}, {c.y:g}) lies outside the {image['width']}x{image['height']} image.")
    config = s.engine.project_config(image["project_id"])
    seg = s.click_cache.get((image["sha"], config.key()),
                    lambda: ClickSegmenter(np.moveaxis(s.engine.features(image, config), -1, 0)))
    clicks = [Click(int(c.y), int(c.x), c.positive) for c in body.clicks]
    mask = None
    for k in range(1, len(clicks) + 1):  # each click refines the mask of the clicks before it
        mask = seg.predict(clicks[:k], mask)
    return mask


@router.post("/images/{image_id}/click-object", response_model=ClickMask, tags=["strokes"])
def click_object(image_id: IdPath, body: ClickObject, request: Request) -> ClickMask:
    """The object the clicks so far select (left = positive, right = negative), for the page to show."""
    mask = _mask(request, image_id, body)
    runs = [(r[1], r[2], r[3]) for r in label_runs(mask.astype(np.uint8), {1: 1})]
    return ClickMask(width=mask.shape[1], height=mask.shape[0], area=int(mask.sum()), runs=runs)


@router.post("/images/{image_id}/click-object/commit", response_model=StrokeOut, status_code=201, tags=["strokes"])
def commit_object(image_id: IdPath, body: ClickObject, request: Request) -> dict:
    """Finish the object: its pixels become one undoable label layer of ``class_id``."""
    from hrdv2.errors import HRDv2Error

    s = state(request)
    image = s.store.get_image(image_id)
    if body.class_id is None:
        raise HRDv2Error("finishing an object needs class_id: the class its pixels get.")
    if s.store.get_class(body.class_id)["project_id"] != image["project_id"]:
        raise HRDv2Error(f"class {body.class_id} belongs to another project.")
    mask = _mask(request, image_id, body)
    if not mask.any():
        raise HRDv2Error("the clicks select no pixel; add a positive click on the object.")
    return s.store.add_label_layer(image_id, label_runs(mask.astype(np.uint8), {1: body.class_id}))
