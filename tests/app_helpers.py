"""Scaffolding shared by the web-app tests (one copy, not one per module): a real `hrdv2 serve`
and Debian's Chromium for the browser tests, PNG bytes and job polling for the TestClient tests.
Test modules import it as ``from app_helpers import ...`` (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
JOB_ENDS = ("done", "failed", "cancelled")


def interior_scribble(gt: np.ndarray, squares: int = 6, depth: float = 5) -> np.ndarray:
    """Sparse scribbles from a ground truth with classes 1 and 2: ``squares`` 5x5 squares per class,
    centred at least ``depth`` px inside that class's regions (never across a boundary)."""
    from scipy import ndimage

    out = np.zeros_like(gt)
    for value in (1, 2):
        dist = ndimage.distance_transform_edt(np.pad(gt == value, 1))[1:-1, 1:-1]
        ys, xs = np.nonzero(dist >= depth)
        for k in np.linspace(0, len(ys) - 1, squares).astype(int):
            out[ys[k] - 2: ys[k] + 3, xs[k] - 2: xs[k] + 3] = value
    return out


def png(arr: np.ndarray) -> bytes:
    """``arr`` encoded as PNG bytes, as a browser would upload it."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def wait_job(client: Any, job: dict, timeout: float = 120) -> dict:
    """Poll ``/api/jobs/ID`` through a TestClient until the job has ended; its last state."""
    deadline = time.time() + timeout
    while job["state"] not in JOB_ENDS:
        assert time.time() < deadline, f"job {job} did not finish in {timeout} s"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(root: Path, data: Path | None = None, timeout: float = 60) -> Iterator[str]:
    """`hrdv2 serve` in a subprocess on a free loopback port (projects in ROOT/projects, its log in
    ROOT/server.log); yields the base URL once /api/health answers, stops the server after."""
    import httpx

    log_path = root / "server.log"
    cmd = [sys.executable, "-m", "hrdv2.cli.main", "serve", "--project-dir", str(root / "projects")]
    if data is not None:
        cmd += ["--data", str(data)]
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + timeout
            while True:
                assert proc.poll() is None, f"server exited early: {log_path.read_text()}"
                try:
                    if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, f"server did not answer /api/health within {timeout} s"
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (installed by `make browser`)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `make browser` (.ci/install-browser.sh)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def canvas_rgba(page: Any, selector: str) -> np.ndarray:
    """The whole canvas as the page shows it, (H, W, 4) uint8."""
    url = page.evaluate("(sel) => document.querySelector(sel).toDataURL('image/png')", selector)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))
