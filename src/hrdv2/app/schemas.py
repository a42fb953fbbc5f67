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


class FeatureSettings(_Strict):
    kind: FeatureKind = "classical"
    backbone: str = "dinov2_vits14"
    stride: int | None = Field(default=None, ge=1, le=14)


class BackboneOption(BaseModel):
    name: str
    available: bool
    reason: str | None = None


class FeatureOptions(BaseModel):
    kinds: list[FeatureKind]
    classifiers: list[ClassifierName]
    strides: list[int]
    backbones: list[BackboneOption]


class ProjectCreate(_Strict):
    name: str = Field(min_length=1, max_length=120)


class ProjectPatch(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=120)
    features: FeatureSettings | None = None
    classifier: ClassifierName | None = None
    auto_train: bool | None = None


class ProjectOut(BaseModel):
    id: int
    name: str
    features: FeatureSettings
    classifier: ClassifierName
    auto_train: bool
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
    """One brush or eraser stroke in image pixel coordinates (x right, y down)."""

    tool: Literal["brush", "eraser"]
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
    tool: Literal["brush", "eraser"]
    class_id: int | None
    radius: float
    points: list[tuple[float, float]]


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
