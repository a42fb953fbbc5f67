"""API routes for projects, classes, feature options, training, apply-to-all and project exports."""

from __future__ import annotations

import io
import zipfile

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse

from .schemas import (
    ClassCreate,
    ClassOut,
    ClassPatch,
    FeatureOptions,
    IdPath,
    JobOut,
    ProjectCreate,
    ProjectOut,
    ProjectPatch,
    TrainRequest,
)
from .deps import state

router = APIRouter(prefix="/api")
STRIDES = [14, 7, 4, 2]


@router.get("/features/options", response_model=FeatureOptions, tags=["features"])
def feature_options(request: Request) -> FeatureOptions:
    """Feature kinds, classifiers and backbones; a backbone without weights is listed as unavailable with the reason."""
    from hrdv2.backbones import list_backbones

    from hrdv2.features.classical import ALL_FILTERS, FILTER_PRESETS

    engine = state(request).engine
    return FeatureOptions(
        kinds=["classical", "deep", "hybrid"],
        classifiers=["logistic", "random_forest", "gradient_boosting"],
        strides=STRIDES,
        backbones=[engine.weights_status(name) for name in list_backbones()],
        filter_presets=list(FILTER_PRESETS),
        filters=list(ALL_FILTERS),
        devices=_devices(),
    )


def _devices() -> list[str]:
    """Devices a project may choose on this machine ("server" = the one `hrdv2 serve` was given)."""
    import torch

    out = ["server", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out


@router.get("/projects", response_model=list[ProjectOut], tags=["projects"])
def list_projects(request: Request) -> list[dict]:
    return state(request).store.list_projects()


@router.post("/projects", response_model=ProjectOut, status_code=201, tags=["projects"])
def create_project(body: ProjectCreate, request: Request) -> dict:
    return state(request).store.create_project(body.name.strip())


@router.get("/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
def get_project(project_id: IdPath, request: Request) -> dict:
    return state(request).store.get_project(project_id)


@router.patch("/projects/{project_id}", response_model=ProjectOut, tags=["projects"])
def patch_project(project_id: IdPath, body: ProjectPatch, request: Request) -> dict:
    """Rename, or change features / classifier / auto-train. Deep features need available weights.
    New feature settings retire the trained model (it was trained on other features): train again."""
    s = state(request)
    if body.features is not None and body.features.kind != "classical":
        status = s.engine.weights_status(body.features.backbone)
        if not status.available:
            raise HTTPException(409, f"{body.features.kind} features with {status.name} are unavailable: {status.reason}")
    s.store.get_project(project_id)
    if body.features is not None:
        from .engine import feature_config
        from hrdv2.device import resolve_device

        feature_config(body.features)  # settings the library refuses are a 422 before anything changes
        if body.features.device != "server":
            resolve_device(body.features.device)  # a device this machine lacks: 422 with the reason
        s.engine.update_features(project_id, body.features)
    if body.crf is not None:
        s.engine.update_crf(project_id, body.crf)
    return s.store.update_project(project_id, **body.model_dump(exclude_none=True, exclude={"features", "crf"}))


# -- classes ---------------------------------------------------------------------------------
@router.get("/projects/{project_id}/classes", response_model=list[ClassOut], tags=["classes"])
def list_classes(project_id: IdPath, request: Request) -> list[dict]:
    return state(request).store.list_classes(project_id)


@router.post("/projects/{project_id}/classes", response_model=ClassOut, status_code=201, tags=["classes"])
def create_class(project_id: IdPath, body: ClassCreate, request: Request) -> dict:
    store = state(request).store
    if any(c["name"] == body.name.strip() for c in store.list_classes(project_id)):
        raise HTTPException(409, f"a class named {body.name!r} already exists in this project")
    return store.add_class(project_id, body.name.strip(), body.color.lower())


@router.patch("/classes/{class_id}", response_model=ClassOut, tags=["classes"])
def patch_class(class_id: IdPath, body: ClassPatch, request: Request) -> dict:
    store = state(request).store
    cls = store.get_class(class_id)
    if body.name is not None and any(
        c["name"] == body.name.strip() and c["id"] != class_id for c in store.list_classes(cls["project_id"])
    ):
        raise HTTPException(409, f"a class named {body.name!r} already exists in this project")
    return store.update_class(class_id, body.name.strip() if body.name else None, body.color.lower() if body.color else None)


@router.delete("/classes/{class_id}", tags=["classes"])
def delete_class(class_id: IdPath, request: Request) -> dict:
    """Delete a class and its strokes. Class values above it shift down, so the model, every
    stored prediction and the phase-fraction CSV of the project are dropped."""
    removed = state(request).engine.delete_class(class_id)  # also retires the model and its predictions
    return {"deleted": class_id, "strokes_removed": removed}


# -- training, prediction, apply -------------------------------------------------------------
@router.post("/projects/{project_id}/train", response_model=JobOut, status_code=202, tags=["training"])
def train(project_id: IdPath, body: TrainRequest, request: Request) -> JobOut:
    """Start training on every image with strokes (features from the cache), then predict ``image_id``."""
    s = state(request)
    s.store.get_project(project_id)
    if body.image_id is not None and s.store.get_image(body.image_id)["project_id"] != project_id:
        raise HTTPException(404, f"image {body.image_id} is not in project {project_id}")
    job = s.jobs.submit("train", lambda job: s.engine.train_job(job, project_id, body.image_id))
    return job.out()


@router.post("/projects/{project_id}/apply", response_model=JobOut, status_code=202, tags=["training"])
def apply_all(project_id: IdPath, request: Request) -> JobOut:
    """Apply the current model to every image (and page) of the project, as a cancellable job."""
    s = state(request)
    s.engine.model(project_id)  # refuse now (422) rather than fail in the job when there is no model
    job = s.jobs.submit("apply", lambda job: s.engine.apply_all_job(job, project_id), key=f"apply:{project_id}")
    return job.out()


@router.get("/projects/{project_id}/model.skops", tags=["exports"], response_class=FileResponse)
def download_model(project_id: IdPath, request: Request) -> FileResponse:
    """The trained model as a skops file, usable with ``hrdv2 apply --model``."""
    s = state(request)
    s.engine.model(project_id)
    s.engine.wait_saved(project_id)
    name = _slug(s.store.get_project(project_id)["name"])
    return FileResponse(s.engine.model_path(project_id), media_type="application/octet-stream",
                        filename=f"{name}.skops")


@router.get("/projects/{project_id}/phase_fractions.csv", tags=["exports"], response_class=FileResponse)
def download_fractions(project_id: IdPath, request: Request) -> FileResponse:
    s = state(request)
    path = s.store.project_path(project_id) / "phase_fractions.csv"
    s.store.get_project(project_id)
    if not path.is_file():
        raise HTTPException(404, "no phase fractions yet: press 'Apply to all' first")
    return FileResponse(path, media_type="text/csv", filename=f"{_slug(s.store.get_project(project_id)['name'])}_phase_fractions.csv")


@router.get("/projects/{project_id}/results.zip", tags=["exports"])
def download_results(project_id: IdPath, request: Request) -> Response:
    """Label images of every image with a current prediction, the CSV and the model, in one zip."""
    s = state(request)
    project = s.store.get_project(project_id)
    images = [i for i in s.store.list_images(project_id) if i["prediction_version"] == project["model_version"] > 0]
    if not images:
        raise HTTPException(404, "no up-to-date predictions: train, then press 'Apply to all'")
    s.engine.wait_saved(project_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for image in images:
            label_path, _ = s.engine.prediction_paths(image)
            page = f"_p{image['page'] + 1}" if image["n_pages"] > 1 else ""
            zf.write(label_path, f"labels/{image['id']}_{_slug(image['name'])}{page}.png")
        csv_path = s.store.project_path(project_id) / "phase_fractions.csv"
        if csv_path.is_file():
            zf.write(csv_path, "phase_fractions.csv")
        zf.write(s.engine.model_path(project_id), "model.skops")
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{_slug(project["name"])}_results.zip"'})


def _slug(name: str) -> str:
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "_" for ch in name).strip("._")
    return out or "project"

