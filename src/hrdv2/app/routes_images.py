"""API routes for images (upload, server folder), strokes (paint, undo, redo) and predictions."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Literal

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile

from hrdv2.errors import ImageReadError, ShapeError
from hrdv2.io import IMAGE_SUFFIXES, read_stack, to_float01

from .raster import MAX_STROKE_WORK, stroke_work
from .schemas import DataAdd, DataFiles, IdPath, ImageOut, JobOut, StrokeIn, StrokeOut, UndoResult
from .security import PathRefused, UploadRejected, display_name, safe_join, sniff_image_type
from .deps import AppState, receive_upload, state

router = APIRouter(prefix="/api")
MAX_DATA_FILES = 5000
IMMUTABLE = {"Cache-Control": "private, max-age=86400"}


def _decode_checked(path: Path, max_pixels: int) -> list[np.ndarray]:
    """Decode an image file, refusing more than ``max_pixels`` pixels in all before decoding them."""
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                n = sum(int(np.prod(p.shape[:2])) for p in tif.pages)
        except Exception as exc:
            raise ImageReadError(f"{path.name}: not a readable TIFF ({exc}).") from exc
    else:
        try:
            with Image.open(path) as im:
                n = im.size[0] * im.size[1]
        except Exception as exc:
            raise ImageReadError(f"{path.name}: not a readable image ({exc}).") from exc
    if n > max_pixels:
        raise UploadRejected(413, f"image has {n:,} pixels in all; this server accepts at most {max_pixels:,}")
    try:
        return read_stack(path)
    except Image.DecompressionBombError as exc:
        raise UploadRejected(413, f"image too large to decode safely ({exc})") from exc


def _add_pages(s: AppState, project_id: int, name: str, source: str, origin: str, path: Path) -> list[dict]:
    try:
        pages = _decode_checked(path, s.max_pixels)
    except (ImageReadError, ShapeError) as exc:  # the message names the client's file, never the server's path
        message = str(exc).replace(str(path), name).replace(path.name, name)
        raise HTTPException(415, message if message.startswith(name) else f"{name}: {message}") from exc
    return s.store.add_file(project_id, name, source, origin, pages)


@router.get("/projects/{project_id}/images", response_model=list[ImageOut], tags=["images"])
def list_images(project_id: IdPath, request: Request) -> list[dict]:
    return state(request).store.list_images(project_id)


@router.post("/projects/{project_id}/images", response_model=list[ImageOut], status_code=201, tags=["images"])
async def upload_image(project_id: IdPath, request: Request, file: UploadFile = File(...)) -> list[dict]:
    """Upload PNG / JPEG / TIFF (multi-page stacks become one image per page). Type is checked by content."""
    s = state(request)
    s.store.get_project(project_id)
    if file.size is not None and file.size > s.max_upload_bytes:
        raise HTTPException(413, f"upload is {file.size:,} bytes; the limit is {s.max_upload_bytes:,}")
    try:
        _, suffix = sniff_image_type(await file.read(16))
    except UploadRejected as exc:
        raise HTTPException(exc.status, f"{display_name(file.filename)}: {exc.message}") from exc
    await file.seek(0)
    tmp, digest = await receive_upload(s, file, suffix)
    try:
        target = s.store.root / "uploads" / f"{digest}{suffix}"
        try:
            images = _add_pages(s, project_id, display_name(file.filename), "upload", target.name, tmp)
        except UploadRejected as exc:
            raise HTTPException(exc.status, exc.message) from exc
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return images


@router.get("/data", response_model=DataFiles, tags=["images"])
def data_files(request: Request) -> DataFiles:
    """Images in the server's --data folder (recursive), as paths relative to it."""
    root = state(request).data_dir
    if root is None:
        return DataFiles(available=False, files=[])
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                files.append(Path(dirpath, name).relative_to(root).as_posix())
        if len(files) >= MAX_DATA_FILES:
            break
    return DataFiles(available=True, files=files[:MAX_DATA_FILES])


@router.post("/projects/{project_id}/images/from-data", response_model=list[ImageOut], status_code=201, tags=["images"])
def add_from_data(project_id: IdPath, body: DataAdd, request: Request) -> list[dict]:
    """Add an image from the server's --data folder; the path must stay inside that folder."""
    s = state(request)
    s.store.get_project(project_id)
    if s.data_dir is None:
        raise HTTPException(404, "this server has no data folder; start it with `hrdv2 serve --data DIR`")
    try:
        path = safe_join(s.data_dir, body.path)
        found = path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    except PathRefused as exc:
        raise HTTPException(400, str(exc)) from exc
    except (OSError, UnicodeError):  # a name too long for the file system, or not encodable: no such file
        found = False
    if not found:
        raise HTTPException(404, f"{body.path!r}: no such image in the data folder")
    try:
        with open(path, "rb") as fh:
            sniff_image_type(fh.read(16))
        return _add_pages(s, project_id, path.name, "data", body.path, path)
    except UploadRejected as exc:
        raise HTTPException(exc.status, f"{body.path}: {exc.message}") from exc


@router.get("/images/{image_id}", response_model=ImageOut, tags=["images"])
def get_image(image_id: IdPath, request: Request) -> dict:
    return state(request).store.get_image(image_id)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _cached_picture(s: AppState, image: dict, kind: Literal["display", "thumb"]) -> bytes:
    """8-bit view of the page (16-bit and float are min-max scaled), cached beside the pixels."""
    from hrdv2.io import write_bytes_atomic

    path = s.store.root / "pixels" / f"{image['sha']}.{kind}.png"
    if path.is_file():
        return path.read_bytes()
    from .large import display_level, level_pixels

    level = display_level(image, s.engine.large_side)
    if level > 0:  # a large image: the page shows a pyramid level, and tiles when zoomed in
        arr = level_pixels(s.store, image, level)
    else:
        px = s.store.pixels(image)
        arr = px if px.dtype == np.uint8 else np.round(to_float01(px) * 255).astype(np.uint8)
    if kind == "thumb":
        from PIL import Image

        im = Image.fromarray(arr)
        im.thumbnail((160, 160))
        arr = np.asarray(im)
    data = _png(arr)
    write_bytes_atomic(path, data)
    return data


@router.get("/images/{image_id}/display.png", tags=["images"], response_class=Response)
def display_png(image_id: IdPath, request: Request) -> Response:
    s = state(request)
    return Response(_cached_picture(s, s.store.get_image(image_id), "display"), media_type="image/png", headers=IMMUTABLE)


@router.get("/images/{image_id}/thumb.png", tags=["images"], response_class=Response)
def thumb_png(image_id: IdPath, request: Request) -> Response:
    s = state(request)
    return Response(_cached_picture(s, s.store.get_image(image_id), "thumb"), media_type="image/png", headers=IMMUTABLE)


# -- strokes ---------------------------------------------------------------------------------
@router.get("/images/{image_id}/strokes", response_model=list[StrokeOut], tags=["strokes"])
def list_strokes(image_id: IdPath, request: Request) -> list[dict]:
    store = state(request).store
    store.get_image(image_id)
    return store.list_strokes(image_id)


@router.post("/images/{image_id}/strokes", response_model=StrokeOut, status_code=201, tags=["strokes"])
def add_stroke(image_id: IdPath, stroke: StrokeIn, request: Request) -> dict:
    """Save one stroke (committed before the answer, so nothing painted is lost)."""
    store = state(request).store
    image = store.get_image(image_id)
    if stroke.tool == "brush":
        if stroke.class_id is None:
            raise HTTPException(422, "a brush stroke needs class_id (the class being painted)")
        if store.get_class(stroke.class_id)["project_id"] != image["project_id"]:
            raise HTTPException(422, f"class {stroke.class_id} belongs to another project")
    elif stroke.tool == "polygon":
        if stroke.class_id is None or len(stroke.points) < 3:
            raise HTTPException(422, "a polygon needs class_id and at least 3 points (its vertices)")
        if store.get_class(stroke.class_id)["project_id"] != image["project_id"]:
            raise HTTPException(422, f"class {stroke.class_id} belongs to another project")
    elif stroke.class_id is not None:
        raise HTTPException(422, "an eraser stroke takes no class_id")
    pts = np.asarray(stroke.points)
    r = stroke.radius
    if (pts[:, 0].max() < -r or pts[:, 1].max() < -r or pts[:, 0].min() > image["width"] + r
            or pts[:, 1].min() > image["height"] + r):
        raise HTTPException(422, f"stroke lies outside the {image['width']}x{image['height']} image")
    if stroke.tool == "polygon":
        from .fill import polygon_work

        if polygon_work(stroke.points, (image["height"], image["width"])) > MAX_STROKE_WORK:
            raise HTTPException(422, f"polygon of {len(stroke.points)} points is too costly to fill on the "
                                     f"{image['width']}x{image['height']} image; draw it with fewer points")
    elif stroke_work(stroke.points, r, (image["height"], image["width"])) > MAX_STROKE_WORK:
        raise HTTPException(422, f"stroke of {len(stroke.points)} points with radius {r:g} is too costly to draw on "
                                 f"the {image['width']}x{image['height']} image; split it into shorter strokes or "
                                 "use a smaller brush")
    return store.add_stroke(image_id, stroke.tool, stroke.class_id, r, stroke.points)


@router.post("/images/{image_id}/undo", response_model=UndoResult, tags=["strokes"])
def undo(image_id: IdPath, request: Request) -> UndoResult:
    store = state(request).store
    store.get_image(image_id)
    changed = store.undo(image_id)
    return UndoResult(changed=changed, strokes=store.list_strokes(image_id))


@router.post("/images/{image_id}/redo", response_model=UndoResult, tags=["strokes"])
def redo(image_id: IdPath, request: Request) -> UndoResult:
    store = state(request).store
    store.get_image(image_id)
    changed = store.redo(image_id)
    return UndoResult(changed=changed, strokes=store.list_strokes(image_id))


@router.get("/images/{image_id}/scribbles.png", tags=["strokes"], response_class=Response)
def scribbles_png(image_id: IdPath, request: Request) -> Response:
    """The strokes as a label map (0 = unlabelled, class values 1..K), as the CLI's train reads them."""
    s = state(request)
    return Response(_png(s.engine.scribbles(s.store.get_image(image_id))), media_type="image/png")


# -- features and predictions ----------------------------------------------------------------
@router.post("/images/{image_id}/features", response_model=JobOut, status_code=202, tags=["features"])
def compute_features(image_id: IdPath, request: Request) -> JobOut:
    """Compute (or load from the cache) this image's features in the background, with progress."""
    s = state(request)
    image = s.store.get_image(image_id)
    settings = s.store.get_project(image["project_id"])["features"]
    key = f"features:{image['sha']}:{settings.model_dump_json()}"
    return s.jobs.submit("features", lambda job: s.engine.features_job(job, image_id), key=key).out()


@router.post("/images/{image_id}/predict", response_model=JobOut, status_code=202, tags=["training"])
def predict(image_id: IdPath, request: Request) -> JobOut:
    """Predict this image with the project's current model (no retraining)."""
    s = state(request)
    s.engine.model(s.store.get_image(image_id)["project_id"])
    return s.jobs.submit("predict", lambda job: s.engine.predict_job(job, image_id), key=f"predict:{image_id}").out()


def _download_stem(image: dict) -> str:
    """An ASCII file stem for Content-Disposition (header values must be latin-1; names may not be)."""
    stem = Path(image["name"]).stem + (f"_p{image['page'] + 1}" if image["n_pages"] > 1 else "")
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in stem) or f"image{image['id']}"


def _prediction(s: AppState, image_id: int) -> tuple[dict, Path, Path]:
    image = s.store.get_image(image_id)
    label_path, proba_path = s.engine.prediction_paths(image)
    if image["prediction_version"] == 0 or not label_path.is_file():
        raise HTTPException(404, f"image {image_id} has no prediction yet: train a model first")
    return image, label_path, proba_path


@router.get("/images/{image_id}/prediction", tags=["training"], response_class=Response)
def prediction_raw(image_id: IdPath, request: Request, view: Literal["labels", "uncertainty"] = "labels",
                   level: int = Query(0, ge=0, le=12)) -> Response:
    """Raw uint8 pixels, row-major, gzip-encoded (the page colours them): class values, or
    uncertainty 255 * (1 - max probability). Size in X-Width / X-Height. ``level``: pyramid
    level (each halves the size; a large image's page asks for its display level)."""
    from hrdv2.io import read_labels

    from .large import prediction_level

    s = state(request)
    image, label_path, proba_path = _prediction(s, image_id)
    step = 2 ** level
    if view == "labels":
        arr = prediction_level(label_path.parent, image, level, label_path) if level else read_labels(label_path).astype(np.uint8)
    else:
        proba = np.load(proba_path, allow_pickle=False, mmap_mode="r")[::step, ::step].astype(np.float32)
        arr = np.round(255 * (1 - proba.max(axis=-1))).clip(0, 255).astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    headers = {"Content-Encoding": "gzip", "X-Width": str(arr.shape[1]), "X-Height": str(arr.shape[0]),
               "X-Model-Version": str(image["prediction_version"]), "Cache-Control": "no-store"}
    return Response(gzip.compress(arr.tobytes(), compresslevel=1), media_type="application/octet-stream", headers=headers)


@router.get("/images/{image_id}/labels.png", tags=["exports"], response_class=Response)
def labels_png(image_id: IdPath, request: Request) -> Response:
    """The predicted label image (class values 1..K) as 8-bit PNG."""
    s = state(request)
    image, label_path, _ = _prediction(s, image_id)
    stem = _download_stem(image)
    return Response(label_path.read_bytes(), media_type="image/png",
                    headers={"Content-Disposition": f'attachment; filename="{stem}_labels.png"'})


@router.get("/images/{image_id}/probabilities.tif", tags=["exports"], response_class=Response)
def probabilities_tif(image_id: IdPath, request: Request) -> Response:
    """Class probabilities as float32 TIFF, shape (H, W, K); channel k is class value k+1."""
    import tifffile

    s = state(request)
    image, _, proba_path = _prediction(s, image_id)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.load(proba_path, allow_pickle=False).astype(np.float32))
    stem = _download_stem(image)
    return Response(buf.getvalue(), media_type="image/tiff",
                    headers={"Content-Disposition": f'attachment; filename="{stem}_probabilities.tif"'})
