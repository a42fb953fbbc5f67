"""API routes for results: the phase-fraction table of every image's current prediction (JSON
and CSV), and the most uncertain regions of an image (where to paint next)."""

from __future__ import annotations

import csv
import io

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response

from .deps import AppState, state
from .schemas import FractionRow, Fractions, IdPath, PyramidInfo, Region

router = APIRouter(prefix="/api")


def fractions(s: AppState, project_id: int) -> Fractions:
    """Phase fractions of every image whose stored prediction is of the current model; images
    without one are listed with ``current=False`` and no fractions."""
    from hrdv2.io import read_labels

    project = s.store.get_project(project_id)
    classes = s.store.list_classes(project_id)
    rows = []
    for image in s.store.list_images(project_id):
        label_path, _ = s.engine.prediction_paths(image)
        current = project["has_model"] and image["prediction_version"] == project["model_version"] > 0
        values = None
        if current and label_path.is_file():
            labels = read_labels(label_path)
            counts = np.bincount(labels.ravel(), minlength=len(classes) + 1)
            values = [round(float(counts[c["value"]]) / labels.size, 6) for c in classes]
        rows.append(FractionRow(image_id=image["id"], name=image["name"], page=image["page"],
                                current=values is not None, fractions=values))
    return Fractions(classes=[c["name"] for c in classes], model_version=project["model_version"], rows=rows)


@router.get("/projects/{project_id}/fractions", response_model=Fractions, tags=["results"])
def fractions_json(project_id: IdPath, request: Request) -> Fractions:
    """Phase fractions (share of pixels per class) of each image's current prediction."""
    return fractions(state(request), project_id)


@router.get("/projects/{project_id}/fractions.csv", tags=["results"], response_class=Response)
def fractions_csv(project_id: IdPath, request: Request) -> Response:
    """The same table as CSV, with the columns `hrdv2 apply` writes (file, page, one per class);
    only images with a current prediction have a row."""
    from .routes_projects import _slug

    s = state(request)
    table = fractions(s, project_id)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "page", *table.classes])
    for row in table.rows:
        if row.fractions is not None:
            writer.writerow([row.name, row.page, *(f"{v:.6f}" for v in row.fractions)])
    name = _slug(s.store.get_project(project_id)["name"])
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}_current_fractions.csv"'})


def uncertain_regions(proba: np.ndarray, n: int, window: int | None = None) -> list[Region]:
    """The ``n`` square windows (a grid of side ``window``, default 1/8 of the shorter side, at
    least 16 px) with the highest mean uncertainty 1 - max p, most uncertain first."""
    h, w = proba.shape[:2]
    side = window or max(16, min(h, w) // 8)
    side = min(side, h, w)
    unsure = 1.0 - proba.max(axis=-1).astype(np.float32)
    gh, gw = h // side, w // side
    cells = unsure[: gh * side, : gw * side].reshape(gh, side, gw, side).mean(axis=(1, 3))
    order = np.argsort(cells.ravel())[::-1][:n]
    return [Region(x=int(k % gw) * side, y=int(k // gw) * side, width=side, height=side,
                   score=round(float(cells.ravel()[k]), 4)) for k in order]


@router.get("/images/{image_id}/uncertain", response_model=list[Region], tags=["results"])
def uncertain(image_id: IdPath, request: Request, n: int = Query(5, ge=1, le=50)) -> list[Region]:
    """Where the current prediction is least sure (paint there next), most uncertain first."""
    s = state(request)
    image = s.store.get_image(image_id)
    _, proba_path = s.engine.prediction_paths(image)
    if image["prediction_version"] == 0 or not proba_path.is_file():
        raise HTTPException(404, f"image {image_id} has no prediction yet: train a model first")
    return uncertain_regions(np.load(proba_path, allow_pickle=False), n)


# -- large images ------------------------------------------------------------------------------
@router.get("/images/{image_id}/pyramid", response_model=PyramidInfo, tags=["images"])
def pyramid(image_id: IdPath, request: Request) -> PyramidInfo:
    """Whether the page shows this image through tiles, the tile side, and the level sizes
    (level 0 = full size; the last is the ``display.png`` the page starts from)."""
    from .large import TILE, is_large, levels

    s = state(request)
    image = s.store.get_image(image_id)
    return PyramidInfo(tiled=is_large(image, s.engine.large_side), tile=TILE, levels=levels(image, s.engine.large_side))


@router.get("/images/{image_id}/tile.png", tags=["images"], response_class=Response)
def tile_png(image_id: IdPath, request: Request, level: int = Query(0, ge=0, le=12), ty: int = Query(0, ge=0, le=10_000),
             tx: int = Query(0, ge=0, le=10_000)) -> Response:
    """One 512-px tile (8-bit) of pyramid ``level`` at tile row ``ty``, column ``tx``."""
    from .large import display_level, tile
    from .routes_images import IMMUTABLE, _png

    s = state(request)
    image = s.store.get_image(image_id)
    top = display_level(image, s.engine.large_side)
    if level > top:
        raise HTTPException(404, f"image {image_id} has pyramid levels 0..{top}")
    arr = tile(s.store, image, level, ty, tx)
    if arr is None:
        raise HTTPException(404, f"tile ({ty}, {tx}) lies outside level {level} of image {image_id}")
    return Response(_png(arr), media_type="image/png", headers=IMMUTABLE)
