"""What the routers depend on: the app's shared state, reached through the request.

Routers import this module, never the application module (``server``), so the app factory can
import the routers without a cycle; tests can build an ``AppState`` of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from .engine import Engine
from .jobs import JobManager
from .store import Store


@dataclass
class AppState:
    """Everything one running app shares: the project store, the compute engine, the job pool."""

    store: Store
    engine: Engine
    jobs: JobManager
    data_dir: Path | None
    max_upload_bytes: int
    max_pixels: int


def state(request: Request) -> AppState:
    """The app's state (set by ``create_app``); use as ``state(request)`` or ``Depends(state)``."""
    return request.app.state.hrdv2
