"""Request and response models of the web app's HTTP API.

Every endpoint takes and returns one of these, so FastAPI validates input before any handler
runs (a malformed stroke is a 422, never a crash) and the OpenAPI schema documents the API.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

HEX_COLOUR = r"^#[0-9a-fA-F]{6}$"
MAX_STROKE_POINTS = 20_000
MAX_BRUSH_RADIUS = 512.0
MAX_CLASSES = 255  # scribbles and label images are 8-bit: values 1..255
MAX_ID = 2**63 - 1  # SQLite's INTEGER range: a larger id names no row (and overflows the driver)

# every database id a client sends, in a path or a body, is bounded: out of range is a 422, never a 500
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
JOB_ID = r"^[0-9a-f]{12}$"  # uuid4 hex prefix, as jobs.Job makes them
JobIdPath = Annotated[str, Path(pattern=JOB_ID)]

FeatureKind = Literal["classical", "deep", "hybrid"]
ClassifierName = Literal["logistic", "random_forest", "gradient_boosting"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ServerInfo(BaseModel):
    version: str
    data_dir: bool = Field(description="whether the server was started with --data")
    max_upload_bytes: int
    max_pixels: int


DEVICE = r"^(server|auto|cpu|mps|cuda(:[0-9]{1,2})?)$"
DEFAULT_SIGMAS = [1.0, 2.0, 4.0, 8.0, 16.0]


class FeatureSettings(_Strict):
    """The library's FeatureConfig fields a page can set (the rest keep their defaults).

    Every field but ``device`` changes the features, so changing it retires the trained model."""

    kind: FeatureKind = "classical"
    backbone: str = Field(default="dinov2_vits14", max_length=120)
    stride: int | None = Field(default=None, ge=1, le=14)
    shifts: list[Annotated[int, Field(ge=1, le=13)]] = Field(default=[1, 2], max_length=6,
                                                             description="HR-Dv2 shift distances in px (deep, hybrid)")
    flips: bool = Field(default=False, description="add flipped copies (positional-bias mitigation; deep, hybrid)")
    pca_components: int | None = Field(default=None, ge=1, le=1024, description="PCA of the deep features (deep, hybrid)")
    filters: str = Field(default="default", min_length=1, max_length=400,
                         description="classical filter preset ('default', 'all') or comma-separated filter names")
    sigmas: list[Annotated[float, Field(ge=0.3, le=64)]] = Field(default=DEFAULT_SIGMAS, min_length=1, max_length=10)
    device: str = Field(default="server", pattern=DEVICE,
                        description="where features are computed: 'server' = the device `hrdv2 serve` was started with")


class CrfSettings(_Strict):
    """Dense-CRF clean-up of the prediction (hrdv2.crf.dense_crf parameters). It refines the
    probabilities after the classifier, so changing it keeps the model and re-predicts."""

    enabled: bool = False
    n_iter: int = Field(default=5, ge=1, le=20)
    sxy_gaussian: float = Field(default=3.0, gt=0, le=200)
    compat_gaussian: float = Field(default=3.0, ge=0, le=100)
    sxy_bilateral: float = Field(default=40.0, gt=0, le=500)
    srgb: float = Field(default=13.0, gt=0, le=255)
    compat_bilateral: float = Field(default=10.0, ge=0, le=100)

    def params(self) -> dict:
        return self.model_dump(exclude={"enabled"})


class BackboneOption(BaseModel):
    name: str
    available: bool
    reason: str | None = None


class FeatureOptions(BaseModel):
    kinds: list[FeatureKind]
    classifiers: list[ClassifierName]
    strides: list[int]
    backbones: list[BackboneOption]
    filter_presets: list[str] = []
    filters: list[str] = []
    devices: list[str] = []


class ProjectCreate(_Strict):
    name: str = Field(min_length=1, max_length=120)


class ProjectPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=120)
    features: FeatureSettings | None = None
    classifier: ClassifierName | None = None
    auto_train: bool | None = None
    crf: CrfSettings | None = None


class ProjectOut(BaseModel):
    id: int
    name: str
    features: FeatureSettings
    classifier: ClassifierName
    auto_train: bool
    crf: CrfSettings = CrfSettings()
    model_source: str | None = Field(default=None, description="file name of a loaded model; None = trained here")
    model_version: int
    has_model: bool = Field(description="whether a trained model for the current classes exists")
    n_images: int
    has_phase_fractions: bool = Field(description="whether 'apply to all' has written the phase-fraction CSV")


class ImageOut(BaseModel):
    id: int
    project_id: int
    name: str
    file_id: int
    page: int
    n_pages: int
    width: int
    height: int
    dtype: str
    channels: int
    source: Literal["upload", "data"]
    prediction_version: int = Field(description="model version of the stored prediction; 0 = none")


class DataFiles(BaseModel):
    available: bool
    files: list[str]


class DataAdd(_Strict):
    path: str = Field(min_length=1, max_length=1000, description="path relative to the server's --data folder")


class ClassCreate(_Strict):
    name: str = Field(min_length=1, max_length=80)
    color: str = Field(pattern=HEX_COLOUR)


class ClassPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=80)
    color: str | None = Field(default=None, pattern=HEX_COLOUR)


class ClassOut(BaseModel):
    id: int
    project_id: int
    name: str
    color: str
    value: int = Field(description="label value 1..K in scribbles, label images and probability channels")


class StrokeIn(_Strict):
    """One brush or eraser stroke, or a filled polygon (lasso), in image pixel coordinates
    (x right, y down). A polygon's points are its vertices (at least 3); its radius is unused."""

    tool: Literal["brush", "eraser", "polygon"]
    class_id: Id | None = None
    radius: float = Field(gt=0, le=MAX_BRUSH_RADIUS)
    points: list[tuple[float, float]] = Field(min_length=1, max_length=MAX_STROKE_POINTS)

    @field_validator("points")
    @classmethod
    def _finite(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in points:
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError("stroke points must be finite numbers")
            if abs(x) > 1e6 or abs(y) > 1e6:
                raise ValueError("stroke point far outside any image")
        return points


class StrokeOut(BaseModel):
    id: int
    image_id: int
    tool: Literal["brush", "eraser", "polygon", "labels"]
    class_id: int | None
    radius: float
    points: list[tuple[float, float]]
    runs: list[tuple[int, int, int, int]] | None = Field(
        default=None, description="imported label layer: (class_id, row, x0, x1) runs, x1 exclusive")


class ClassOrder(_Strict):
    class_ids: list[Id] = Field(min_length=1, max_length=MAX_CLASSES)


class ModelInfo(BaseModel):
    model_version: int
    source: str = Field(description="'trained in this project' or the loaded file's name")
    features: dict = Field(description="the FeatureConfig the model was trained with (it is always applied with it)")
    classifier: str
    crf: bool
    class_names: list[str]
    classes: list[int]
    n_features: int
    n_channels: int
    n_train_pixels: int
    matches_settings: bool = Field(description="whether the project's feature settings give the model's features")


class FractionRow(BaseModel):
    image_id: int
    name: str
    page: int
    current: bool = Field(description="whether the image has a prediction of the current model")
    fractions: list[float] | None


class Fractions(BaseModel):
    classes: list[str]
    model_version: int
    rows: list[FractionRow]


class Region(BaseModel):
    x: int
    y: int
    width: int
    height: int
    score: float = Field(description="mean uncertainty 1 - max p over the region")


class PyramidInfo(BaseModel):
    tiled: bool = Field(description="whether the page shows this image through tiles")
    tile: int
    levels: list[tuple[int, int]] = Field(description="(width, height) of each level, full size first")


class UndoResult(BaseModel):
    changed: bool
    strokes: list[StrokeOut]


class TrainRequest(_Strict):
    image_id: Id | None = Field(default=None, description="image to predict after training (the one on screen)")


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    stage: str
    done: float
    total: float
    message: str = ""
    error: str | None = None
    result: dict | None = None
