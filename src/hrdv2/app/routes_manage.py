"""API routes that manage what a project holds: load a model file, import a label image as
scribbles, delete an image or a project, reorder classes.

Model files are read only through ``Segmenter.load`` (the allow-listed skops loader); a file
holding anything else is refused in one line before any of it is built.
"""

from __future__ import annotations

import shutil

import numpy as np
from fastapi import APIRouter, File, HTTPException, Request, UploadFile

from hrdv2.errors import HRDv2Error

from .deps import receive_upload, state
from .schemas import ClassOrder, ClassOut, CrfSettings, FeatureSettings, IdPath, ImageOut, ModelInfo, ProjectOut, StrokeOut
from .security import UploadRejected, display_name, sniff_image_type

router = APIRouter(prefix="/api")
ZIP_MAGIC = b"PK\x03\x04"
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def settings_of(config, device: str = "server") -> FeatureSettings:
    """The page's feature settings closest to a model's FeatureConfig (fields the page cannot set,
    such as the weights file, stay the model's own: it is always applied with its config)."""
    from hrdv2.features.classical import FILTER_PRESETS

    preset = next((k for k, v in FILTER_PRESETS.items() if tuple(v) == tuple(config.filters)), ",".join(config.filters))
    return FeatureSettings(kind=config.kind, backbone=config.backbone, stride=config.stride, shifts=list(config.shifts),
                           flips=config.flips, pca_components=config.pca_components, filters=preset,
                           sigmas=list(config.sigmas), device=device)


# -- models ----------------------------------------------------------------------------------
@router.post("/projects/{project_id}/model", response_model=ProjectOut, tags=["models"])
async def load_model(project_id: IdPath, request: Request, file: UploadFile = File(...)) -> dict:
    """Load a ``.skops`` model (``hrdv2 train``, the napari plugin, another project) as this
    project's model: its feature settings, classifier and CRF become the project's, classes it
    knows that the project lacks are added, and images are predicted with it (no training)."""
    from hrdv2.segmentation import Segmenter

    s = state(request)
    s.store.get_project(project_id)
    name = display_name(file.filename)
    head = await file.read(4)
    if head != ZIP_MAGIC:
        raise HTTPException(415, f"{name}: not a model file (a .skops file is a zip archive); save one with `hrdv2 train`")
    await file.seek(0)
    tmp, _ = await receive_upload(s, file, ".skops")
    try:
        try:
            seg = Segmenter.load(tmp)
        except HRDv2Error as exc:
            raise HTTPException(422, str(exc).replace(str(tmp), name)) from None
        except Exception as exc:  # a damaged archive the loader did not name: still one line
            raise HTTPException(422, f"{name}: cannot be loaded as a model ({type(exc).__name__}); {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        crf = CrfSettings(enabled=seg.crf, **seg.crf_params)
        features = settings_of(seg.features, s.store.get_project(project_id)["features"].device)
    except Exception as exc:
        raise HTTPException(422, f"{name}: its CRF or feature settings are not ones this app can show ({exc}).") from None
    seg.backbones = s.engine.backbones
    classes = s.store.list_classes(project_id)
    wanted = list(seg.class_names or [])
    wanted += [f"class {v}" for v in range(len(wanted) + 1, int(np.max(seg.classes_)) + 1)]
    taken = {c["name"] for c in classes}
    for value in range(len(classes) + 1, len(wanted) + 1):
        label = str(wanted[value - 1])[:80].strip() or f"class {value}"
        label = label if label not in taken else f"{label} ({value})"
        taken.add(label)
        s.store.add_class(project_id, label, COLOURS[(value - 1) % len(COLOURS)])

    def settings() -> None:
        s.store.update_project(project_id, features=features, classifier=seg.classifier, crf=crf)

    s.engine.install(project_id, seg, name, settings)
    return s.store.get_project(project_id)


@router.get("/projects/{project_id}/model", response_model=ModelInfo, tags=["models"])
def model_info(project_id: IdPath, request: Request) -> ModelInfo:
    """What the current model was trained with (its FeatureConfig), and where it came from."""
    s = state(request)
    project = s.store.get_project(project_id)
    seg = s.engine.model(project_id)
    return ModelInfo(
        model_version=project["model_version"], source=project["model_source"] or "trained in this project",
        features={k: v for k, v in seg.features.to_dict().items() if k not in ("device", "batch_size")},
        classifier=seg.classifier, crf=seg.crf, class_names=[str(n) for n in seg.class_names],
        classes=[int(c) for c in seg.classes_], n_features=int(seg.n_features_in_), n_channels=int(seg.n_channels_),
        n_train_pixels=int(seg.n_train_pixels_),
        matches_settings=s.engine.project_config(project_id).key() == seg.features.key(),
    )


# -- labels in ---------------------------------------------------------------------------------
@router.post("/images/{image_id}/scribbles", response_model=StrokeOut, status_code=201, tags=["strokes"])
async def import_scribbles(image_id: IdPath, request: Request, file: UploadFile = File(...)) -> dict:
    """Import a label image (PNG / TIFF, single channel, the CLI's convention: 0 = unlabelled,
    1..K = the project's classes in order) onto the image as one undoable label layer."""
    from hrdv2.io import read_labels

    from .fill import MAX_RUNS, label_runs

    s = state(request)
    image = s.store.get_image(image_id)
    name = display_name(file.filename)
    try:
        kind, suffix = sniff_image_type(await file.read(16))
    except UploadRejected as exc:
        raise HTTPException(exc.status, f"{name}: {exc.message}") from exc
    if kind == "jpeg":
        raise HTTPException(415, f"{name}: JPEG changes pixel values, so it cannot hold class ids; save the labels as PNG or TIFF")
    await file.seek(0)
    tmp, _ = await receive_upload(s, file, suffix)
    try:
        labels = read_labels(tmp, max_bytes=s.max_pixels * 8)
    except HRDv2Error as exc:
        raise HTTPException(422, str(exc).replace(str(tmp), name)) from None
    finally:
        tmp.unlink(missing_ok=True)
    h, w = labels.shape
    if (h, w) != (image["height"], image["width"]):
        raise HTTPException(422, f"{name} is {w}x{h} (WxH) but image {image['name']!r} is "
                                 f"{image['width']}x{image['height']}; import a label image of the same size")
    classes = s.store.list_classes(image["project_id"])
    present = [int(v) for v in np.unique(labels) if v > 0]
    unknown = [v for v in present if v > len(classes)]
    if unknown:
        have = ", ".join(f"{c['value']} {c['name']}" for c in classes) or "none"
        raise HTTPException(422, f"{name} holds class id(s) {unknown[:10]} but the project's classes are 1..{len(classes)} "
                                 f"({have}); add classes first or fix the label values (0 = unlabelled)")
    if not present:
        raise HTTPException(422, f"{name} labels no pixel (all 0 = unlabelled); nothing to import")
    runs = label_runs(labels, {c["value"]: c["id"] for c in classes})
    if len(runs) > MAX_RUNS:
        raise HTTPException(422, f"{name} has {len(runs):,} runs of labelled pixels (a dense label image); "
                                 f"at most {MAX_RUNS:,} can be imported as scribbles")
    return s.store.add_label_layer(image_id, runs)


# -- deleting and reordering -------------------------------------------------------------------
@router.delete("/images/{image_id}", response_model=list[ImageOut], tags=["images"])
def delete_image(image_id: IdPath, request: Request) -> list[dict]:
    """Delete the file this image is a page of (every page, with their strokes and predictions).
    Other images, their strokes and the model are kept. Returns the deleted images."""
    s = state(request)
    with s.engine._predictions_lock:
        gone = s.store.delete_file(image_id)
    for im in gone:
        labels, proba = s.engine.prediction_paths(im)
        labels.unlink(missing_ok=True)
        proba.unlink(missing_ok=True)
        shutil.rmtree(labels.parent / f"{im['id']}.labels.zarr", ignore_errors=True)
    return gone


@router.delete("/projects/{project_id}", tags=["projects"])
def delete_project(project_id: IdPath, request: Request) -> dict:
    """Delete a project with its images, classes, strokes, model and results (other projects,
    and pixels another project shares, are kept)."""
    s = state(request)
    images = s.store.list_images(project_id)
    for first_page in {im["file_id"]: im for im in images}.values():  # one call per file: all its pages
        s.store.delete_file(first_page["id"])  # also drops pixels no other project shares
    s.store.delete_project(project_id)
    s.engine.forget(project_id)
    shutil.rmtree(s.store.root / "projects" / str(int(project_id)), ignore_errors=True)
    return {"deleted": project_id, "images_removed": len(images)}


@router.put("/projects/{project_id}/classes/order", response_model=list[ClassOut], tags=["classes"])
def reorder_classes(project_id: IdPath, body: ClassOrder, request: Request) -> list[dict]:
    """Put the classes in a new order (their values 1..K follow it). Strokes keep their classes;
    the model and predictions, made with the old values, are retired: train again."""
    s = state(request)
    s.engine.reorder_classes(project_id, body.class_ids)
    return s.store.list_classes(project_id)
