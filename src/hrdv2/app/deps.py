"""What the routers depend on: the app's shared state, reached through the request.

Routers import this module, never the application module (``server``), so the app factory can
import the routers without a cycle; tests can build an ``AppState`` of their own.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fastapi import HTTPException, Request, UploadFile

from .engine import Engine
from .jobs import JobManager
from .store import Store


class ClickCache:
    """One ClickSegmenter per (image, feature config), the last few kept: its PCA is the slow part."""

    def __init__(self, keep: int = 2):
        self._items: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def get(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                return self._items[key]
        seg = make()
        with self._lock:
            self._items[key] = seg
            while len(self._items) > self._keep:
                self._items.pop(next(iter(self._items)))
        return seg


@dataclass
class AppState:
    """Everything one running app shares: the project store, the compute engine, the job pool."""

    store: Store
    engine: Engine
    jobs: JobManager
    data_dir: Path | None
    max_upload_bytes: int
    max_pixels: int
    click_cache: ClickCache = field(default_factory=ClickCache)  # the click tool's segmenters


def state(request: Request) -> AppState:
    """The app's state (set by ``create_app``); use as ``state(request)`` or ``Depends(state)``."""
    return request.app.state.hrdv2


async def receive_upload(s: AppState, file: UploadFile, suffix: str) -> tuple[Path, str]:
    """Stream an upload into a temporary file under the store's uploads folder, capped at the
    upload limit while it streams (413 past it). Returns (temporary path, sha256 hex); the
    caller renames or deletes the file (on error here it is already gone)."""
    fd, name = tempfile.mkstemp(prefix=".upload.", suffix=suffix, dir=s.store.root / "uploads")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as fh:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > s.max_upload_bytes:
                    raise HTTPException(413, f"upload exceeds the limit of {s.max_upload_bytes:,} bytes")
                digest.update(chunk)
                fh.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), digest.hexdigest()
