"""End-to-end: a real Chromium (Debian's, driven by Playwright) against a real `hrdv2 serve`.

A person's session: create a project, upload a micrograph, define two classes, paint with the
mouse, train on classical features, see the overlay, reload (strokes survive), add a second
image from the server folder, apply to all, download the label image and the CSV.
Needs /usr/bin/chromium and the playwright package (.ci/install-browser.sh installs both).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import canvas_rgba, chromium, serve

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PARTICLE, MATRIX = "#ff2d55", "#2dd4bf"


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    """`hrdv2 serve` with the superalloy folder as its server-side data, stopped after the module."""
    with serve(tmp_path_factory.mktemp("app"), data=shared_data / "superalloy") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def _stroke_plan(gt: np.ndarray) -> dict[int, list[list[tuple[float, float]]]]:
    """Short strokes deep inside regions of each class of the ground truth (so the brush stays inside)."""
    from scipy import ndimage

    plan: dict[int, list[list[tuple[float, float]]]] = {}
    for value, n in ((1, 4), (2, 4)):
        dist = ndimage.distance_transform_edt(np.pad(gt == value, 1))[1:-1, 1:-1]  # the border counts as an edge
        taken = np.zeros_like(dist, bool)
        strokes = []
        for _ in range(n):
            y, x = np.unravel_index(np.argmax(np.where(taken, 0, dist)), dist.shape)
            half = min(dist[y, x] - 6, 12)  # brush radius 3: its edge stays >= 3 px inside the region
            assert half >= 2, "ground truth has no region wide enough for a stroke"
            strokes.append([(x + 0.5 - half, y + 0.5), (x + 0.5, y + 0.5), (x + 0.5 + half, y + 0.5)])
            taken[max(0, y - 40): y + 40, max(0, x - 40): x + 40] = True
        plan[value] = strokes
    return plan


def _to_screen(page, x: float, y: float, width: int) -> tuple[float, float]:
    box = page.locator("#image").bounding_box()
    scale = box["width"] / width
    return box["x"] + x * scale, box["y"] + y * scale


def _paint(page, points, width):
    x0, y0 = _to_screen(page, *points[0], width)
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*_to_screen(page, x, y, width), steps=6)
    page.mouse.up()


def _canvas_colours(page, selector: str, points: list[tuple[int, int]]) -> list[list[int]]:
    return page.evaluate(
        """([sel, pts]) => {
            const c = document.querySelector(sel);
            const ctx = c.getContext('2d');
            return pts.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data));
        }""",
        [selector, points],
    )


def _rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[i: i + 2], 16) for i in (1, 3, 5)]


def _wait_strokes(page, server: str, image_id: int, n: int) -> None:
    """Wait until the server holds exactly ``n`` strokes for the image (they are saved per stroke)."""
    deadline = time.time() + 20
    while len(page.request.get(f"{server}/api/images/{image_id}/strokes").json()) != n:
        assert time.time() < deadline, f"the server does not hold the {n} strokes painted"
        time.sleep(0.1)


def _wait_jobs_idle(page, timeout=180_000):
    page.wait_for_function(
        "[...document.querySelectorAll('#jobs .job')].every(j => ['done', 'failed', 'cancelled'].includes(j.dataset.state))",
        timeout=timeout)


def test_paint_train_reload_apply_download(server, browser, shared_data, tmp_path):
    from hrdv2.io import read_labels

    image_path = shared_data / "superalloy" / "isb_1.png"
    gt = read_labels(shared_data / "superalloy" / "isb_1_gt.png")  # 1 = particles, 2 = matrix
    height, width = gt.shape
    plan = _stroke_plan(gt)

    page = browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_selector("body[data-ready='1']")

    # project + upload
    page.fill("#new-project-name", "superalloy")
    page.click("#create-project")
    page.wait_for_function("document.querySelector('#project-select').selectedOptions[0]?.text === 'superalloy'")
    page.wait_for_function("document.body.dataset.project === document.querySelector('#project-select').value")
    page.set_input_files("#upload", str(image_path))
    page.wait_for_selector(".thumb.selected")
    page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth > 0")
    image_id = int(page.evaluate("new URLSearchParams(location.hash.slice(1)).get('i')"))
    project_id = int(page.evaluate("new URLSearchParams(location.hash.slice(1)).get('p')"))

    # two classes, named and coloured through the page
    for i, (name, colour) in enumerate((("particle", PARTICLE), ("matrix", MATRIX)), start=1):
        page.click("#add-class")
        row = page.locator(f"#classes li:nth-child({i})")
        row.locator(".class-name").fill(name)
        row.locator(".class-name").press("Enter")
        row.locator(".class-color").fill(colour)
        page.wait_for_function(
            """([i, name, colour]) => {
                const li = document.querySelector(`#classes li:nth-child(${i})`);
                return li && li.querySelector('.class-name').value === name && li.querySelector('.class-color').value === colour;
            }""", arg=[i, name, colour])
    deadline = time.time() + 20
    while True:  # renames and colour changes reach the server
        classes = page.request.get(f"{server}/api/projects/{project_id}/classes").json()
        if [(c["name"], c["color"]) for c in classes] == [("particle", PARTICLE), ("matrix", MATRIX)]:
            break
        assert time.time() < deadline, f"class edits not saved: {classes}"
        time.sleep(0.1)

    # paint with the mouse: brush 6 px wide, strokes inside particles and inside the matrix
    page.locator("#brush-size").fill("6")
    for value, strokes in plan.items():
        page.click(f"#classes li:nth-child({value}) .key")
        for points in strokes:
            _paint(page, points, width)
    n_strokes = sum(len(s) for s in plan.values())
    _wait_strokes(page, server, image_id, n_strokes)

    # the brush outline follows the pointer at the brush's on-screen size
    box = page.locator("#image").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    cursor = page.locator("#cursor").bounding_box()
    assert cursor is not None and abs(cursor["width"] - 6 * box["width"] / width) < 2.5
    assert abs(cursor["x"] + cursor["width"] / 2 - cx) < 1.5
    # wheel zooms about the pointer, right-drag pans, Fit restores
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"document.querySelector('#image').getBoundingClientRect().width > {box['width'] * 1.3}")
    zoomed = page.locator("#image").bounding_box()
    assert abs(zoomed["x"] + zoomed["width"] / 2 - cx) < 2 and abs(zoomed["y"] + zoomed["height"] / 2 - cy) < 2
    page.mouse.down(button="right")
    page.mouse.move(cx + 80, cy + 40, steps=4)
    page.mouse.up(button="right")
    panned = page.locator("#image").bounding_box()
    assert abs(panned["x"] - zoomed["x"] - 80) < 1.5 and abs(panned["y"] - zoomed["y"] - 40) < 1.5
    _wait_strokes(page, server, image_id, n_strokes)  # panning painted nothing
    page.click("#fit")
    assert page.locator("#image").bounding_box() == pytest.approx(box, abs=1)
    # one more stroke, taken back with Ctrl+Z
    _paint(page, plan[2][0], width)
    _wait_strokes(page, server, image_id, n_strokes + 1)
    page.keyboard.press("Control+z")
    _wait_strokes(page, server, image_id, n_strokes)
    saved = page.request.get(f"{server}/api/images/{image_id}/strokes").json()
    assert [s["class_id"] for s in saved] == [classes[0]["id"]] * 4 + [classes[1]["id"]] * 4
    # the server's scribble map puts each stroke's class where it was painted
    from PIL import Image

    scribbles = np.asarray(Image.open(io.BytesIO(page.request.get(f"{server}/api/images/{image_id}/scribbles.png").body())))
    for value, strokes in plan.items():
        for points in strokes:
            x, y = points[1]
            assert scribbles[int(y), int(x)] == value

    # train with classical features; a progress row must show up, then the overlay
    assert page.locator("#feature-kind").input_value() == "classical"
    page.evaluate("""() => { window.__jobKinds = [];
        new MutationObserver(() => document.querySelectorAll('#jobs .job').forEach(j => window.__jobKinds.push(j.dataset.kind)))
          .observe(document.querySelector('#jobs'), {childList: true, subtree: true}); }""")
    page.click("#train")
    page.wait_for_function("document.querySelector('#overlay').dataset.state === 'ready'", timeout=180_000)
    assert "train" in page.evaluate("window.__jobKinds")
    overlay = canvas_rgba(page, "#overlay")
    assert overlay.shape == (height, width, 4) and (overlay[..., 3] == 255).all()
    for value, colour in ((1, PARTICLE), (2, MATRIX)):
        under = overlay[scribbles == value]
        hits = (under[:, :3] == _rgb(colour)).all(axis=1).mean()
        assert hits >= 0.9, f"class {value}: only {hits:.0%} of the pixels under its strokes are shown as that class"
    _wait_jobs_idle(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_trained.png"))

    # reload: the same project and image reopen and every stroke is drawn again
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth > 0")
    assert page.evaluate("new URLSearchParams(location.hash.slice(1)).get('i')") == str(image_id)
    page.wait_for_function("document.querySelector('#overlay').dataset.state === 'ready'", timeout=60_000)
    for value, colour in ((1, PARTICLE), (2, MATRIX)):
        centres = [(int(s[1][0]), int(s[1][1])) for s in plan[value]]
        for px in _canvas_colours(page, "#scribbles", centres):
            assert px[:3] == _rgb(colour) and px[3] == 255, f"stroke of class {value} missing after reload: {px}"

    # a second image from the server folder, then apply to all
    page.select_option("#data-files", "isb_0.png")
    page.click("#add-data")
    page.wait_for_function("document.querySelectorAll('.thumb').length === 2")
    _wait_jobs_idle(page)
    page.click("#apply-all")
    page.wait_for_function("document.querySelector('#message').textContent.includes('Applied the model to 2 image(s)')",
                           timeout=180_000)
    # the message comes first, then the project and the prediction are refreshed (the download
    # links are briefly disabled meanwhile); the button is enabled again when that is done
    page.wait_for_function("!document.querySelector('#apply-all').disabled", timeout=60_000)

    # download the label image of the micrograph we painted: its shape, its classes
    # from the moment the image is switched, the label link is off or points at this image (it used
    # to keep the previous image's link until the new one had loaded): hold the new image's loading
    # back and look at the link meanwhile
    held: list = []
    pyramid = f"**/api/images/{image_id}/pyramid"
    page.route(pyramid, lambda route: held.append(route))
    page.click(".thumb[data-file-id] >> nth=0")
    page.wait_for_function(f"new URLSearchParams(location.hash.slice(1)).get('i') === '{image_id}'")
    deadline = time.time() + 20
    while not held:
        assert time.time() < deadline, "the image's pyramid was never requested"
        page.wait_for_timeout(20)
    link = page.evaluate("(() => { const a = document.querySelector('#dl-labels'); "
                         "return a.classList.contains('disabled') ? null : a.getAttribute('href'); })()")
    assert link in (None, f"/api/images/{image_id}/labels.png"), link
    for route in held:
        route.continue_()
    page.unroute(pyramid)
    page.wait_for_function("!document.querySelector('#dl-labels').classList.contains('disabled')")
    with page.expect_download() as info:
        page.click("#dl-labels")
    labels_path = tmp_path / "labels.png"
    info.value.save_as(labels_path)
    labels = read_labels(labels_path)
    assert labels.shape == (height, width)
    assert set(np.unique(labels)) == {1, 2}
    for value, strokes in plan.items():
        for points in strokes:
            x, y = points[1]
            assert labels[int(y), int(x)] == value
    assert (labels == gt).mean() > 0.75, "prediction disagrees with the ground truth on most pixels"

    with page.expect_download() as info:
        page.click("#dl-csv")
    rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
    assert [r["file"] for r in rows] == ["isb_1.png", "isb_0.png"]
    for r in rows:
        assert abs(float(r["particle"]) + float(r["matrix"]) - 1) < 1e-4
    assert errors == [], f"JavaScript errors in the page: {errors}"
    page.close()


def test_stack_pages_class_delete_and_unavailable_deep_features(server, browser, shared_data, tmp_path):
    """A multi-page TIFF is browsed page by page; deleting a class asks first; backbones whose
    weights cannot be had are listed as "unavailable: no weights", with the reason."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(server)
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#new-project-name", "empty")
    page.click("#create-project")
    page.wait_for_function("document.querySelector('#project-select').selectedOptions[0]?.text === 'empty'")
    page.wait_for_function("document.body.dataset.project === document.querySelector('#project-select').value")
    listed = {o[0]: o[1:] for o in page.evaluate(
        "[...document.querySelectorAll('#backbone option')].map(o => [o.value, o.text, o.disabled, o.title])")}
    served = page.request.get(f"{server}/api/features/options").json()["backbones"]
    assert sorted(listed) == sorted(b["name"] for b in served)
    for b in served:
        text, disabled, title = listed[b["name"]]
        assert disabled == (not b["available"])
        if not b["available"]:
            assert "unavailable: no weights" in text and title == b["reason"]
    if not any(b["available"] for b in served):  # this machine has no weights: the note says why
        assert page.locator("#feature-note").is_visible()
        assert "no weights" in page.locator("#feature-note").text_content()
        kinds = page.evaluate("[...document.querySelectorAll('#feature-kind option')].map(o => [o.value, o.disabled])")
        assert kinds == [["classical", False], ["deep", True], ["hybrid", True]]
    # model settings go to the server
    page.select_option("#classifier", "random_forest")
    page.check("#auto-train")
    pid = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('p')")
    deadline = time.time() + 10
    while (page.request.get(f"{server}/api/projects/{pid}").json()["classifier"], page.request.get(
            f"{server}/api/projects/{pid}").json()["auto_train"]) != ("random_forest", True):
        assert time.time() < deadline, "classifier / auto-train changes were not saved"
        time.sleep(0.1)

    # a 3-page 16-bit stack: one thumbnail, pages turned with the arrows
    import tifffile

    from hrdv2.io import read_image

    base = read_image(shared_data / "superalloy" / "isb_1.png")[:200, :240].astype(np.uint16) * 250
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([base, base[::-1], base[:, ::-1]]), photometric="minisblack")
    page.set_input_files("#upload", str(tmp_path / "stack.tif"))
    page.wait_for_selector(".thumb.selected")
    assert page.locator(".thumb").count() == 1
    assert page.locator("#page-label").text_content() == "page 1/3"
    page.click("#page-next")
    page.wait_for_function("document.querySelector('#page-label').textContent === 'page 2/3'")
    page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth === 240")
    # delete a class: refused when the dialog is dismissed, done when accepted
    page.click("#add-class")
    page.click("#add-class")
    page.wait_for_function("document.querySelectorAll('#classes li').length === 2")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#classes li:nth-child(1) .class-delete")
    assert page.locator("#classes li").count() == 2
    page.once("dialog", lambda d: d.accept())
    page.click("#classes li:nth-child(1) .class-delete")
    page.wait_for_function("document.querySelectorAll('#classes li').length === 1")
    pid = page.evaluate("new URLSearchParams(location.hash.slice(1)).get('p')")
    assert [c["name"] for c in page.request.get(f"{server}/api/projects/{pid}/classes").json()] == ["class 2"]
    page.close()
