"""Real-browser tests (Chromium via Playwright) of the web app's daily-use features (issue 15):
the CRF toggle changes the overlay, the lasso fills a polygon, a scribble file is imported and
trained on, deleting an image keeps the others and their strokes, and a model file from another
project predicts without training. Lean on purpose: one server, two pages.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from app_helpers import canvas_rgba, chromium, interior_scribble, serve
from PIL import Image

pytestmark = pytest.mark.browser

SIDE = 160


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hrdv2 serve` without a server-side data folder, stopped after the module."""
    with serve(tmp_path_factory.mktemp("daily")) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data) -> dict:
    """A 160x160 micrograph crop, its mirror, sparse scribbles from the ground truth, and the
    (y, x) centre of its largest particle."""
    from scipy import ndimage

    from hrdv2.io import read_image, read_labels

    out = tmp_path_factory.mktemp("files")
    image = read_image(shared_data / "superalloy" / "isb_1.png")[:SIDE, :SIDE]
    gt = read_labels(shared_data / "superalloy" / "isb_1_gt.png")[:SIDE, :SIDE]
    scribble = interior_scribble(gt)
    paths = {"image": out / "crop.png", "mirror": out / "mirror.png", "scribble": out / "crop_scribble.png"}
    Image.fromarray(np.ascontiguousarray(image)).save(paths["image"])
    Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(paths["mirror"])
    Image.fromarray(scribble).save(paths["scribble"])
    blobs, n = ndimage.label(gt == 1)
    largest = blobs == 1 + int(np.argmax(ndimage.sum(np.ones_like(blobs), blobs, range(1, n + 1))))
    depth = ndimage.distance_transform_edt(largest)
    return {**paths, "particle": tuple(int(v) for v in np.argwhere(depth == depth.max())[0]), "target": largest}


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.wait_for_selector("body[data-ready='1']")
    page.evaluate("""() => { window.__jobKinds = [];
        new MutationObserver(() => document.querySelectorAll('#jobs .job').forEach(j => window.__jobKinds.push(j.dataset.kind)))
          .observe(document.querySelector('#jobs'), {childList: true, subtree: true}); }""")
    return page, errors


def _new_project(page, name: str) -> int:
    page.fill("#new-project-name", name)
    page.click("#create-project")
    page.wait_for_function(f"document.querySelector('#project-select').selectedOptions[0]?.text === '{name}'")
    page.wait_for_function("document.body.dataset.project === document.querySelector('#project-select').value")
    return int(page.evaluate("document.body.dataset.project"))


def _image_ready(page) -> int:
    page.wait_for_function("document.querySelector('#image').complete && document.querySelector('#image').naturalWidth > 0")
    return int(page.evaluate("new URLSearchParams(location.hash.slice(1)).get('i')"))


def _poll(fn, what: str, timeout: float = 60):
    deadline = time.time() + timeout
    while not (value := fn()):
        assert time.time() < deadline, what
        time.sleep(0.1)
    return value


def _scribbles(page, server, iid) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.request.get(f"{server}/api/images/{iid}/scribbles.png").body())))


def _overlay(page) -> np.ndarray:
    return canvas_rgba(page, "#overlay")[..., :3]


def test_import_train_crf_toggle_and_lasso(server, browser, files):
    page, errors = _open(browser, server)
    pid = _new_project(page, "daily")
    page.select_option("#classifier", "logistic")
    page.set_input_files("#upload", str(files["image"]))
    iid = _image_ready(page)
    for n in (1, 2):
        page.click("#add-class")
        page.wait_for_function(f"document.querySelectorAll('#classes li').length === {n}")
    # import the scribble file: one label layer, drawn on the page, exactly the file's pixels on the server
    page.set_input_files("#import-scribbles", str(files["scribble"]))
    _poll(lambda: len(page.request.get(f"{server}/api/images/{iid}/strokes").json()) == 1, "import not saved")
    scribble = np.asarray(Image.open(files["scribble"]))
    assert np.array_equal(_scribbles(page, server, iid), scribble)
    y, x = np.argwhere(scribble == 2)[0]
    colour = page.evaluate(f"Array.from(document.querySelector('#scribbles').getContext('2d').getImageData({x}, {y}, 1, 1).data)")
    classes = page.request.get(f"{server}/api/projects/{pid}/classes").json()
    assert colour[:3] == [int(classes[1]["color"][i: i + 2], 16) for i in (1, 3, 5)]
    # train on it: the overlay appears
    page.click("#train")
    page.wait_for_function("document.querySelector('#overlay').dataset.state === 'ready'", timeout=120_000)
    plain_version = page.evaluate("document.querySelector('#overlay').dataset.version")
    plain = _overlay(page)
    page.wait_for_function("document.querySelector('#model-info').dataset.source === 'trained in this project'")
    assert page.locator("#model-info").text_content().startswith("Model v1 (trained in this project): classical")
    # CRF on: the same model, a new version, and the overlay changes
    page.click("#advanced summary")
    page.fill("#crf-sxy_bilateral", "60")
    page.fill("#crf-compat_bilateral", "20")
    page.check("#crf")

    def settled():  # the CRF saved, and the overlay shows the model version that carries it
        p = page.request.get(f"{server}/api/projects/{pid}").json()
        shown = page.evaluate("document.querySelector('#overlay').dataset.version")
        return p if p["crf"]["enabled"] and shown == str(p["model_version"]) else None

    project = _poll(settled, "the overlay never showed the CRF's prediction")
    assert project["has_model"] and project["crf"]["sxy_bilateral"] == 60 and project["crf"]["compat_bilateral"] == 20
    assert project["model_version"] != int(plain_version)
    changed = (_overlay(page) != plain).any(axis=-1).sum()
    assert changed > 20, f"the CRF changed only {changed} overlay pixels"
    # lasso: a triangle dragged on the image is filled with the selected class on the server
    page.click("#tool-lasso")
    page.click("#classes li:nth-child(1) .key")
    page.wait_for_function("document.querySelectorAll('#jobs .job').length === 0")  # progress rows move the layout
    box = page.locator("#image").bounding_box()
    scale = box["width"] / SIDE
    tri = [(30, 100), (100, 100), (30, 150)]
    page.mouse.move(box["x"] + tri[0][0] * scale, box["y"] + tri[0][1] * scale)
    page.mouse.down()
    for px, py in tri[1:] + tri[:1]:
        page.mouse.move(box["x"] + px * scale, box["y"] + py * scale, steps=8)
    page.mouse.up()
    _poll(lambda: len(page.request.get(f"{server}/api/images/{iid}/strokes").json()) == 2, "polygon not saved")
    s = _scribbles(page, server, iid)
    yy, xx = np.mgrid[:SIDE, :SIDE] + 0.5
    inside = (xx > 32) & (yy > 102) & ((xx - 30) / 70 + (yy - 100) / 50 < 0.95)
    assert (s[inside] == 1).all(), "the lasso left pixels inside the polygon unfilled"
    assert s[60, 140] == scribble[60, 140] and s[155, 155] == scribble[155, 155]
    strokes = page.request.get(f"{server}/api/images/{iid}/strokes").json()
    assert [st["tool"] for st in strokes] == ["labels", "polygon"]
    assert page.get_attribute("#dl-scribbles", "href") == f"/api/images/{iid}/scribbles.png"
    assert errors == [], errors
    page.close()


def test_delete_image_keeps_others_and_a_loaded_model_predicts_without_training(server, browser, files, tmp_path):
    req = browser.new_context().request
    # a model trained in another project (through the API)
    src = req.post(f"{server}/api/projects", data={"name": "source"}).json()["id"]
    req.patch(f"{server}/api/projects/{src}", data={"classifier": "logistic"})
    for name, colour in (("particle", "#ff0000"), ("matrix", "#00ff00")):
        req.post(f"{server}/api/projects/{src}/classes", data={"name": name, "color": colour})
    up = req.post(f"{server}/api/projects/{src}/images", multipart={
        "file": {"name": "crop.png", "mimeType": "image/png", "buffer": files["image"].read_bytes()}}).json()[0]
    req.post(f"{server}/api/images/{up['id']}/scribbles", multipart={
        "file": {"name": "s.png", "mimeType": "image/png", "buffer": files["scribble"].read_bytes()}})
    job = req.post(f"{server}/api/projects/{src}/train", data={"image_id": up["id"]}).json()
    _poll(lambda: req.get(f"{server}/api/jobs/{job['id']}").json()["state"] == "done", "training failed", 120)
    model = tmp_path / "source-model.skops"
    model.write_bytes(req.get(f"{server}/api/projects/{src}/model.skops").body())

    page, errors = _open(browser, server)
    pid = _new_project(page, "target")
    page.set_input_files("#upload", [str(files["image"]), str(files["mirror"])])
    page.wait_for_function("document.querySelectorAll('.thumb').length === 2")
    images = page.request.get(f"{server}/api/projects/{pid}/images").json()
    page.click("#add-class")
    cid = _poll(lambda: page.request.get(f"{server}/api/projects/{pid}/classes").json(), "no class")[0]["id"]
    for im in images:  # a stroke on each image
        page.request.post(f"{server}/api/images/{im['id']}/strokes",
                          data={"tool": "brush", "class_id": cid, "radius": 4, "points": [[40, 40], [60, 50]]})
    kept = page.request.get(f"{server}/api/images/{images[0]['id']}/strokes").json()
    # delete the second image through its thumbnail: dismissed keeps it, accepted deletes only it
    page.once("dialog", lambda d: d.dismiss())
    page.click(f".thumb[data-file-id='{images[1]['file_id']}'] .thumb-delete")
    assert page.locator(".thumb").count() == 2
    page.once("dialog", lambda d: d.accept())
    page.click(f".thumb[data-file-id='{images[1]['file_id']}'] .thumb-delete")
    page.wait_for_function("document.querySelectorAll('.thumb').length === 1")
    assert [i["id"] for i in page.request.get(f"{server}/api/projects/{pid}/images").json()] == [images[0]["id"]]
    assert page.request.get(f"{server}/api/images/{images[0]['id']}/strokes").json() == kept
    assert page.request.get(f"{server}/api/images/{images[1]['id']}").status == 404
    _image_ready(page)
    # the kept image's stroke is drawn again once its strokes are fetched (asynchronously, after the image)
    page.wait_for_function("document.querySelector('#scribbles').getContext('2d').getImageData(50, 45, 1, 1).data[3] === 255",
                           timeout=15_000)
    # load the other project's model: its classes arrive, the image is predicted, nothing is trained
    page.set_input_files("#load-model", str(model))
    page.wait_for_function("document.querySelector('#overlay').dataset.state === 'ready'", timeout=60_000)
    page.wait_for_function("document.querySelector('#model-info').dataset.source === 'source-model.skops'")
    assert "train" not in page.evaluate("window.__jobKinds") and "predict" in page.evaluate("window.__jobKinds")
    names = [c["name"] for c in page.request.get(f"{server}/api/projects/{pid}/classes").json()]
    assert names == ["class 1", "matrix"]  # the project's own first class keeps its name
    ours = np.frombuffer(page.request.get(f"{server}/api/images/{images[0]['id']}/prediction").body(), np.uint8)
    theirs = np.frombuffer(req.get(f"{server}/api/images/{up['id']}/prediction").body(), np.uint8)
    assert np.array_equal(ours, theirs), "the loaded model predicts differently from where it was trained"
    # click tool (issue 14): each click goes where the object shown is most wrong (the probe's
    # protocol: left = add, right = remove), then Finish makes the object labels of the class.
    # Threshold: offline, the training-free click segmenter on these classical features reaches
    # IoU 0.15 after one click and 0.89-0.94 after 4-5 on this particle; 0.8 within 6 clicks
    # leaves room for where a click lands, not for a tool that ignores clicks or their sign.
    from scipy import ndimage

    from hrdv2.probe.clicks import next_click

    page.click("#tool-click")
    page.click("#classes li:nth-child(2) .key")
    target = files["target"]

    def click_and_read(x: int, y: int, positive: bool, n: int) -> tuple[list[dict], np.ndarray]:
        """Click image pixel (x, y) on the page; the page's clicks and the object it shows for them."""
        box = page.locator("#image").bounding_box()  # measured per click: the layout may move between clicks
        scale = box["width"] / SIDE
        page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale,
                         button="left" if positive else "right")
        page.wait_for_function(f"JSON.parse(document.querySelector('#clickmask')?.dataset.clicks || '[]').length === {n}",
                               timeout=30_000)
        placed = json.loads(page.evaluate("document.querySelector('#clickmask').dataset.clicks"))
        assert abs(placed[-1]["x"] - x) <= 1 and abs(placed[-1]["y"] - y) <= 1 and placed[-1]["positive"] == positive
        shown = page.request.post(f"{server}/api/images/{images[0]['id']}/click-object", data={"clicks": placed}).json()
        assert page.evaluate("document.querySelector('#clickmask').dataset.area") == str(shown["area"])
        shown_mask = np.zeros((SIDE, SIDE), bool)
        for yy, x0, x1 in shown["runs"]:
            shown_mask[yy, x0:x1] = True
        return placed, shown_mask

    clicks: list[dict] = []
    mask, best = None, 0.0
    for _ in range(6):
        c = next_click(target, mask)
        if c is None:
            break
        clicks, mask = click_and_read(c.x, c.y, c.positive, len(clicks) + 1)
        iou = (mask & target).sum() / (mask | target).sum()
        best = max(best, iou)
        if iou >= 0.8:
            break
    assert iou >= 0.8, f"clicks {clicks} reach IoU {iou:.2f} with the particle (best {best:.2f})"
    # a right click on the selected pixel farthest outside the particle takes that spot out
    outside = ndimage.distance_transform_edt(~target) * mask
    y, x = (int(v) for v in np.unravel_index(np.argmax(outside), outside.shape))
    assert outside[y, x] > 0, "nothing selected outside the particle to remove"
    clicks, mask = click_and_read(x, y, False, len(clicks) + 1)
    iou = (mask & target).sum() / (mask | target).sum()
    assert not mask[clicks[-1]["y"], clicks[-1]["x"]] and iou >= 0.8, f"after the negative click: IoU {iou:.2f}"
    page.click("#click-finish")
    _poll(lambda: page.request.get(f"{server}/api/images/{images[0]['id']}/strokes").json()[-1]["tool"] == "labels",
          "the clicked object was not saved")
    labels = _scribbles(page, server, images[0]["id"])
    assert (labels[mask] == 2).all(), "finishing did not make the object's pixels labels of the class"
    assert page.evaluate("document.querySelector('#clickmask').dataset.area") == "0"
    assert errors == [], errors
    page.close()


def test_job_rows_and_messages_do_not_move_the_image(server, browser):
    """The top bar has a fixed height, so a point measured before a job row or a message comes or
    goes is still the same image pixel after (a job row leaving 800 ms after its job ended once
    moved the image 4 px between a test's measuring and its click)."""
    page, errors = _open(browser, server)

    def viewport_top() -> float:
        return page.evaluate("document.querySelector('#viewport').getBoundingClientRect().top")

    before = viewport_top()
    page.evaluate("""() => {
        for (let i = 0; i < 4; i++) {
          const row = document.createElement('div');
          row.className = 'job';
          row.innerHTML = `<span class="job-label">job ${i}</span><progress max="1" value="0.5"></progress>`;
          document.querySelector('#jobs').append(row);
        }
        document.querySelector('#message').textContent = 'a long message '.repeat(60);
      }""")
    assert viewport_top() == before
    # every row is still reachable: the job list scrolls inside the bar
    assert page.evaluate("(j => j.scrollHeight > j.clientHeight)(document.querySelector('#jobs'))")
    page.evaluate("document.querySelectorAll('#jobs .job').forEach(r => r.remove())")
    assert viewport_top() == before
    assert not errors
    page.close()
