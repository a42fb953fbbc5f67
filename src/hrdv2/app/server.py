"""FastAPI application factory: the JSON API under /api, the page (static files) at /.

``create_app(project_dir, data_dir)`` wires the store, the compute engine and the job pool;
the routes live in ``routes_projects`` (projects, classes, jobs, training, exports) and
``routes_images`` (images, strokes, predictions).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

import hrdv2
from hrdv2.errors import HRDv2Error

from .deps import AppState, state
from .engine import Engine
from .jobs import JobManager
from .schemas import Health, JobIdPath, JobOut, ServerInfo
from .store import NotFound, Store

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 256 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000


def create_app(
    project_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_hosts: list[str] | None = None,
    workers: int = 2,
    device: str = "cpu",
    large_side: int = 4096,
) -> FastAPI:
    """The web app over ``project_dir`` (created if missing); ``data_dir`` is the read-only
    server-side folder images may be added from. ``allowed_hosts``: Host header allow-list
    (None = no check; ``hrdv2 serve`` passes the loopback names when bound to 127.0.0.1).
    ``large_side``: images with a longer side are shown as tiles and trained / predicted block-wise."""
    from .routes_images import router as images_router
    from .clicks import router as clicks_router
    from .routes_manage import router as manage_router
    from .routes_results import router as results_router
    from .routes_projects import router as projects_router
    from .security import RequestGuard

    project_dir = Path(project_dir).expanduser()
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser().resolve()
        if not data_dir.is_dir():
            raise HRDv2Error(f"--data {data_dir}: not a folder. Give the folder holding your images.")
    from hrdv2.device import resolve_device

    device = str(resolve_device(device))  # a bad --device fails here, before the server starts
    store = Store(project_dir)
    app_state = AppState(store, Engine(store, device=device, large_side=large_side), JobManager(workers), data_dir, max_upload_bytes, max_pixels)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app_state.jobs.shutdown()
        app_state.engine.wait_saved()
        store.close()

    # no /docs or /redoc: they load their JavaScript from a CDN, and this app must work offline;
    # the schema itself is at /openapi.json
    app = FastAPI(title="hrdv2", version=hrdv2.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Scribble-based segmentation of micrographs: projects, images, strokes, training, export.")
    app.state.hrdv2 = app_state
    # multipart overhead on top of the file itself is small; 1 MiB of slack is generous
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts, max_body_bytes=max_upload_bytes + (1 << 20))

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # only location and message: echoing the input could hold NaN, which JSON cannot carry
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HRDv2Error)
    async def _user_error(_: Request, exc: HRDv2Error) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/api/health", response_model=Health, tags=["server"])
    def health() -> Health:
        return Health(version=hrdv2.__version__)

    @app.get("/api/info", response_model=ServerInfo, tags=["server"])
    def info(request: Request) -> ServerInfo:
        s = state(request)
        return ServerInfo(version=hrdv2.__version__, data_dir=s.data_dir is not None,
                          max_upload_bytes=s.max_upload_bytes, max_pixels=s.max_pixels)

    @app.get("/api/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
    def get_job(job_id: JobIdPath, request: Request) -> JobOut:
        return _job(request, job_id).out()

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"])
    def cancel_job(job_id: JobIdPath, request: Request) -> JobOut:
        job = _job(request, job_id)
        job.cancel()
        return job.out()

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def job_events(job_id: JobIdPath, request: Request) -> StreamingResponse:
        """Server-sent events: one ``data: <JobOut JSON>`` per change, ending when the job ends."""
        job = _job(request, job_id)

        async def stream() -> AsyncIterator[str]:
            seen = -1
            while True:
                seen = await asyncio.to_thread(job.wait_change, seen, 10.0)
                yield f"data: {json.dumps(job.out().model_dump())}\n\n"
                if job.finished or await request.is_disconnected():
                    return

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    app.include_router(projects_router)
    app.include_router(images_router)
    app.include_router(manage_router)
    app.include_router(results_router)
    app.include_router(clicks_router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _job(request: Request, job_id: str):
    job = state(request).jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id!r} does not exist (jobs are forgotten when the server restarts)")
    return job
