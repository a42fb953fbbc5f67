"""Shared fixtures. ``shared_data`` is the real labelled data beside the checkout
(../shared/data); it is verified against its MANIFEST once per session and its absence is a
failure, never a skip."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

# CI (CI=true) replays the same generated cases every run, so a red build is reproducible; on a
# developer's machine each run explores new cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    manifest = SHARED_DATA / "MANIFEST.sha256"
    assert manifest.exists(), f"{SHARED_DATA} is missing: tests need ../shared/data beside the checkout"
    bad = []
    for line in manifest.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        if hashlib.sha256((SHARED_DATA / name).read_bytes()).hexdigest() != digest:
            bad.append(name)
    assert not bad, f"files in {SHARED_DATA} differ from MANIFEST.sha256: {bad[:5]}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_backbone():
    """A real DINOv2 ViT-S/14 architecture with random (untrained) weights."""
    from hrdv2.backbones import load_backbone

    return load_backbone("dinov2_vits14", weights="random")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    one thread is as fast, and on a loaded CI machine OpenMP threads that spin while waiting for
    each other make every op ~20x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def micrograph(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """A 160x160 crop of superalloy/isb_1 and its ground truth (1 = particles, 2 = matrix)."""
    from hrdv2.io import read_image, read_labels

    crop = (slice(0, 160), slice(0, 160))
    image = read_image(shared_data / "superalloy" / "isb_1.png")[crop]
    gt = read_labels(shared_data / "superalloy" / "isb_1_gt.png")[crop]
    assert set(np.unique(gt)) == {1, 2}
    return np.ascontiguousarray(image), np.ascontiguousarray(gt)


@pytest.fixture(scope="session")
def napari_display():
    """An X display for the napari tests (tests/test_napari_*.py): napari's canvas needs OpenGL,
    which Qt's offscreen platform lacks. Uses $DISPLAY if set, else starts Xvfb (installed by
    .ci/install-browser.sh) for the session."""
    import shutil
    import subprocess

    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    assert xvfb, "the napari tests need an X display: install Xvfb (bash .ci/install-browser.sh does) or set DISPLAY"
    read, write = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    assert number, "Xvfb did not start (no display number reported)"
    os.environ["DISPLAY"] = f":{number}"
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    # Qt keeps its X connection until the interpreter exits (and aborts if it breaks before), so
    # Xvfb must outlive this session: a watcher stops it once this pytest process is gone.
    subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; kill {proc.pid}"],
                     start_new_session=True)
    yield os.environ["DISPLAY"]
