"""HTTP API of the web app's daily-use features (issue 15): feature / CRF / device settings,
loading a model file, importing a label image, the lasso (polygon) stroke, deleting images and
projects, reordering classes, the phase-fraction table and the most uncertain regions, with
their refusals (hostile model files, label images of the wrong size or with unknown ids,
deleting what does not exist).

Images are a 160x160 crop of ../shared/data/superalloy/isb_1 (particles in a matrix).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import skops.io as sio
import tifffile
from app_helpers import interior_scribble, png, wait_job
from fastapi.testclient import TestClient
from PIL import Image

from hrdv2.app.server import create_app
from hrdv2.io import read_image, read_labels



@pytest.fixture(scope="module")
def scribble(micrograph) -> np.ndarray:
    """Sparse scribbles from the ground truth: 5x5 squares deep inside each class's regions."""
    return interior_scribble(micrograph[1])


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(tmp_path / "projects")) as c:
        yield c


def _project(client, name="p", classes=("particle", "matrix")) -> tuple[int, list[dict]]:
    pid = client.post("/api/projects", json={"name": name}).json()["id"]
    client.patch(f"/api/projects/{pid}", json={"classifier": "logistic"})
    made = [client.post(f"/api/projects/{pid}/classes", json={"name": n, "color": c}).json()
            for n, c in zip(classes, ("#ff0000", "#00ff00", "#0000ff"))]
    return pid, made


def _upload(client, pid: int, arr: np.ndarray, name: str = "img.png") -> dict:
    r = client.post(f"/api/projects/{pid}/images", files={"file": (name, png(arr), "image/png")})
    assert r.status_code == 201, r.text
    return r.json()[0]


def _import(client, iid: int, data: bytes, name: str = "labels.png"):
    return client.post(f"/api/images/{iid}/scribbles", files={"file": (name, data, "application/octet-stream")})


def _train(client, pid: int, iid: int) -> dict:
    job = wait_job(client, client.post(f"/api/projects/{pid}/train", json={"image_id": iid}).json())
    assert job["state"] == "done", job
    return job


def _labels(client, iid: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{iid}/labels.png").content)))


def _scribbles(client, iid: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{iid}/scribbles.png").content)))


@pytest.fixture
def trained(client, micrograph, scribble):
    pid, classes = _project(client)
    img = _upload(client, pid, micrograph[0])
    assert _import(client, img["id"], png(scribble)).status_code == 201
    _train(client, pid, img["id"])
    return pid, img, classes


# -- labels in -------------------------------------------------------------------------------
def test_import_label_image_as_an_undoable_layer_then_train(client, micrograph, scribble):
    pid, classes = _project(client)
    img = _upload(client, pid, micrograph[0])
    buf = io.BytesIO()
    tifffile.imwrite(buf, scribble)
    r = _import(client, img["id"], buf.getvalue(), "labels.tif")
    assert r.status_code == 201, r.text
    layer = r.json()
    assert layer["tool"] == "labels" and {run[0] for run in layer["runs"]} == {c["id"] for c in classes}
    assert np.array_equal(_scribbles(client, img["id"]), scribble)  # exactly the imported pixels
    # a brush stroke on top wins where it paints; undo takes the stroke, then the whole layer, back
    client.post(f"/api/images/{img['id']}/strokes", json={"tool": "eraser", "radius": 200, "points": [[80, 80]]})
    assert _scribbles(client, img["id"]).max() == 0
    client.post(f"/api/images/{img['id']}/undo")
    assert np.array_equal(_scribbles(client, img["id"]), scribble)
    job = _train(client, pid, img["id"])
    assert job["result"]["classes"] == [1, 2]
    assert (_labels(client, img["id"]) == micrograph[1]).mean() > 0.8
    client.post(f"/api/images/{img['id']}/undo")
    assert client.get(f"/api/images/{img['id']}/strokes").json() == []


def test_import_refusals(client, micrograph, scribble):
    pid, _ = _project(client)
    img = _upload(client, pid, micrograph[0])
    cases = [
        (png(scribble[:100]), 422, "is 160x100 (WxH) but image 'img.png' is 160x160"),
        (png(np.where(scribble == 2, 7, scribble).astype(np.uint8)), 422, "class id(s) [7]"),
        (png(np.zeros_like(scribble)), 422, "labels no pixel"),
        (png(np.dstack([scribble, scribble * 2, scribble])), 422, "single-channel"),
        (b"not an image at all", 415, "labels.png"),
    ]
    for data, status, text in cases:
        r = _import(client, img["id"], data)
        assert r.status_code == status and text in r.json()["detail"], r.text
        assert "\n" not in r.json()["detail"]
    jpeg = io.BytesIO()
    Image.fromarray(scribble).save(jpeg, format="JPEG")
    assert _import(client, img["id"], jpeg.getvalue(), "l.jpg").status_code == 415
    assert _import(client, 999, png(scribble)).status_code == 404
    assert client.get(f"/api/images/{img['id']}/strokes").json() == []  # nothing half-imported


# -- lasso -----------------------------------------------------------------------------------
def test_polygon_stroke_fills_its_inside(client, micrograph):
    pid, classes = _project(client)
    img = _upload(client, pid, micrograph[0])
    tri = [[20, 20], [120, 20], [20, 120]]
    r = client.post(f"/api/images/{img['id']}/strokes",
                    json={"tool": "polygon", "class_id": classes[1]["id"], "radius": 1, "points": tri})
    assert r.status_code == 201, r.text
    s = _scribbles(client, img["id"])
    yy, xx = np.mgrid[:160, :160] + 0.5
    inside = (xx > 20) & (yy > 20) & (xx + yy < 140)
    assert (s[inside] == 2).all() and (s[~inside] == 0).sum() >= (~inside).sum() - 200  # edge pixels may differ
    assert s[10, 10] == 0 and s[100, 100] == 0
    for body in ({"tool": "polygon", "class_id": classes[0]["id"], "radius": 1, "points": [[1, 1], [5, 5]]},
                 {"tool": "polygon", "radius": 1, "points": tri}):
        assert client.post(f"/api/images/{img['id']}/strokes", json=body).status_code == 422


# -- settings --------------------------------------------------------------------------------
def test_feature_settings_retire_the_model_device_and_refusals_do_not(client, trained):
    pid, img, _ = trained
    base = client.get(f"/api/projects/{pid}").json()["features"]
    assert base["filters"] == "default" and base["sigmas"] == [1, 2, 4, 8, 16] and base["device"] == "server"
    # device: where features are computed, not what they are: the model stays
    r = client.patch(f"/api/projects/{pid}", json={"features": {**base, "device": "cpu"}})
    assert r.status_code == 200 and r.json()["has_model"] is True
    # refusals change nothing
    for bad, text in (({"filters": "default,bogus"}, "bogus"), ({"sigmas": []}, "sigmas"),
                      ({"pca_components": 0}, "pca_components"), ({"device": "tpu"}, "device")):
        r = client.patch(f"/api/projects/{pid}", json={"features": {**base, **bad}})
        assert r.status_code == 422 and text in r.text, r.text
    import torch

    if not torch.cuda.is_available():
        r = client.patch(f"/api/projects/{pid}", json={"features": {**base, "device": "cuda"}})
        assert r.status_code == 422 and "cuda" in r.json()["detail"].lower()
    assert client.get(f"/api/projects/{pid}").json()["has_model"] is True
    # deep-only fields do not change classical features: the model stays
    r = client.patch(f"/api/projects/{pid}", json={"features": {**base, "flips": True, "shifts": [1], "pca_components": 8}})
    assert r.json()["has_model"] is True
    # sigmas and filters do: the model and its predictions are retired
    for change in ({"sigmas": [1, 4]}, {"filters": "all"}):
        _train(client, pid, img["id"])
        r = client.patch(f"/api/projects/{pid}", json={"features": {**base, **change}})
        assert r.status_code == 200 and r.json()["has_model"] is False, change
        assert client.get(f"/api/images/{img['id']}/labels.png").status_code == 404
    job = _train(client, pid, img["id"])
    info = client.get(f"/api/projects/{pid}/model").json()
    assert info["features"]["filters"] == list(__import__("hrdv2.features.classical", fromlist=["x"]).ALL_FILTERS)
    assert info["matches_settings"] is True and info["source"] == "trained in this project"
    assert job["result"]["model_version"] == info["model_version"]


def test_crf_toggle_keeps_the_model_and_changes_the_prediction(client, trained):
    pid, img, _ = trained
    before = client.get(f"/api/projects/{pid}").json()
    labels_plain = _labels(client, img["id"])
    r = client.patch(f"/api/projects/{pid}", json={"crf": {"enabled": True, "sxy_bilateral": 60, "compat_bilateral": 20}})
    assert r.status_code == 200
    after = r.json()
    assert after["has_model"] is True and after["model_version"] == before["model_version"] + 1
    assert after["crf"]["enabled"] is True and after["crf"]["sxy_bilateral"] == 60
    assert client.get(f"/api/images/{img['id']}").json()["prediction_version"] != after["model_version"]
    assert wait_job(client, client.post(f"/api/images/{img['id']}/predict").json())["state"] == "done"
    labels_crf = _labels(client, img["id"])
    assert (labels_crf != labels_plain).sum() > 20, "the CRF changed nothing"
    assert client.get(f"/api/projects/{pid}/model").json()["crf"] is True
    # the model file carries the CRF too; switching it off gives the plain prediction back
    client.patch(f"/api/projects/{pid}", json={"crf": {"enabled": False}})
    assert wait_job(client, client.post(f"/api/images/{img['id']}/predict").json())["state"] == "done"
    assert np.array_equal(_labels(client, img["id"]), labels_plain)
    assert client.patch(f"/api/projects/{pid}", json={"crf": {"enabled": True, "n_iter": 0}}).status_code == 422


# -- models in -------------------------------------------------------------------------------
def test_load_a_model_from_another_project_predicts_without_training(client, trained, micrograph):
    pid, img, _ = trained
    client.patch(f"/api/projects/{pid}", json={"features": {"sigmas": [1, 2, 4, 8]}})
    _train(client, pid, img["id"])
    model = client.get(f"/api/projects/{pid}/model.skops").content
    other = client.post("/api/projects", json={"name": "other"}).json()["id"]
    target = _upload(client, other, micrograph[0], "same.png")
    r = client.post(f"/api/projects/{other}/model", files={"file": ("from-p.skops", model, "application/octet-stream")})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["has_model"] and p["model_source"] == "from-p.skops" and p["features"]["sigmas"] == [1, 2, 4, 8]
    assert p["classifier"] == "logistic"
    assert [c["name"] for c in client.get(f"/api/projects/{other}/classes").json()] == ["particle", "matrix"]
    info = client.get(f"/api/projects/{other}/model").json()
    assert info["source"] == "from-p.skops" and info["features"]["kind"] == "classical" and info["matches_settings"]
    job = wait_job(client, client.post(f"/api/images/{target['id']}/predict").json())
    assert job["state"] == "done" and job["kind"] == "predict"
    assert np.array_equal(_labels(client, target["id"]), _labels(client, img["id"]))


def test_hostile_or_foreign_model_files_are_refused_in_one_line(client, trained, tmp_path):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    from hrdv2.segmentation import Segmenter

    pid, _, _ = trained
    (tmp_path / "m.skops").write_bytes(client.get(f"/api/projects/{pid}/model.skops").content)
    state = Segmenter.load(tmp_path / "m.skops")._state()
    marker = tmp_path / "ran"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch();"
    from numpy.testing._private.utils import runstring

    hostile = Pipeline([("text", FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": "O"})),
                        ("join", FunctionTransformer(np.sum)), ("run", FunctionTransformer(runstring)),
                        ("clf", state["model"].steps[-1][1])])
    svc = SVC().fit(np.random.default_rng(0).random((20, state["n_features_in"])), np.arange(20) % 2 + 1)
    other = client.post("/api/projects", json={"name": "victim"}).json()["id"]
    cases = [
        (sio.dumps({**state, "model": hostile}), 422, "FunctionTransformer"),
        (sio.dumps({**state, "model": svc}), 422, "sklearn.svm._classes.SVC"),
        (b"PK\x03\x04 a damaged zip", 422, "evil.skops"),
        (b"just text", 415, "not a model file"),
    ]
    for data, status, text in cases:
        r = client.post(f"/api/projects/{other}/model", files={"file": ("evil.skops", data, "application/octet-stream")})
        assert r.status_code == status and text in r.json()["detail"], r.text
        assert "\n" not in r.json()["detail"] and str(tmp_path) not in r.json()["detail"]
    assert not marker.exists(), "the hostile model's code ran"
    after = client.get(f"/api/projects/{other}").json()
    assert after["has_model"] is False and client.get(f"/api/projects/{other}/classes").json() == []
    assert client.post("/api/projects/999/model", files={"file": ("m.skops", b"PK\x03\x04", "x")}).status_code == 404


# -- deleting and reordering -------------------------------------------------------------------
def test_delete_an_image_keeps_the_others_and_their_strokes(client, trained, micrograph):
    pid, img, classes = trained
    second = _upload(client, pid, np.ascontiguousarray(micrograph[0][::-1]), "flipped.png")
    client.post(f"/api/images/{second['id']}/strokes",
                json={"tool": "brush", "class_id": classes[0]["id"], "radius": 3, "points": [[50, 50], [60, 60]]})
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([micrograph[0], micrograph[0][:, ::-1]]))
    stack = client.post(f"/api/projects/{pid}/images", files={"file": ("stack.tif", buf.getvalue(), "image/tiff")}).json()
    kept_strokes = client.get(f"/api/images/{img['id']}/strokes").json()
    r = client.delete(f"/api/images/{second['id']}")
    assert r.status_code == 200 and [i["id"] for i in r.json()] == [second["id"]]
    assert client.get(f"/api/images/{second['id']}").status_code == 404
    assert client.get(f"/api/images/{img['id']}/strokes").json() == kept_strokes
    assert client.get(f"/api/projects/{pid}").json()["has_model"] is True
    assert client.get(f"/api/images/{img['id']}/labels.png").status_code == 200
    # a page deletes its whole file (every page); the others stay
    r = client.delete(f"/api/images/{stack[1]['id']}")
    assert sorted(i["id"] for i in r.json()) == sorted(i["id"] for i in stack)
    assert [i["id"] for i in client.get(f"/api/projects/{pid}/images").json()] == [img["id"]]
    assert client.delete(f"/api/images/{second['id']}").status_code == 404
    assert client.delete("/api/images/0").status_code == 422


def test_delete_a_project_keeps_the_others(client, trained, micrograph):
    pid, img, _ = trained
    other, _ = _project(client, "other")
    kept = _upload(client, other, micrograph[0], "same-pixels.png")  # shares the pixel file
    folder = client.app.state.hrdv2.store.root / "projects" / str(pid)
    assert folder.is_dir()
    r = client.delete(f"/api/projects/{pid}")
    assert r.status_code == 200 and r.json()["images_removed"] == 1
    assert client.get(f"/api/projects/{pid}").status_code == 404 and not folder.exists()
    assert client.get(f"/api/images/{img['id']}").status_code == 404
    assert client.get(f"/api/images/{kept['id']}/display.png").status_code == 200
    assert [p["id"] for p in client.get("/api/projects").json()] == [other]
    assert client.delete(f"/api/projects/{pid}").status_code == 404


def test_reorder_classes_retires_the_model_and_keeps_strokes(client, trained):
    pid, img, classes = trained
    before = _scribbles(client, img["id"])
    ids = [c["id"] for c in classes]
    r = client.put(f"/api/projects/{pid}/classes/order", json={"class_ids": ids[::-1]})
    assert r.status_code == 200 and [(c["id"], c["value"]) for c in r.json()] == [(ids[1], 1), (ids[0], 2)]
    assert client.get(f"/api/projects/{pid}").json()["has_model"] is False
    assert client.get(f"/api/images/{img['id']}/labels.png").status_code == 404
    after = _scribbles(client, img["id"])
    assert np.array_equal(after, np.choose(before, [0, 2, 1]).astype(np.uint8))  # values follow the new order
    for bad in ([ids[0]], [ids[0], ids[0]], [ids[0], 999]):
        assert client.put(f"/api/projects/{pid}/classes/order", json={"class_ids": bad}).status_code == 422


# -- results ---------------------------------------------------------------------------------
def test_fractions_of_current_predictions_and_uncertain_regions(client, trained, micrograph):
    pid, img, _ = trained
    other = _upload(client, pid, np.ascontiguousarray(micrograph[0][:, ::-1]), "mirror.png")
    table = client.get(f"/api/projects/{pid}/fractions").json()
    assert table["classes"] == ["particle", "matrix"]
    rows = {r["image_id"]: r for r in table["rows"]}
    assert rows[other["id"]]["current"] is False and rows[other["id"]]["fractions"] is None
    labels = _labels(client, img["id"])
    assert rows[img["id"]]["fractions"] == pytest.approx([(labels == 1).mean(), (labels == 2).mean()], abs=1e-6)
    got = list(csv.DictReader(io.StringIO(client.get(f"/api/projects/{pid}/fractions.csv").text)))
    assert [(r["file"], r["page"]) for r in got] == [("img.png", "0")]
    assert float(got[0]["particle"]) == pytest.approx((labels == 1).mean(), abs=1e-6)
    regions = client.get(f"/api/images/{img['id']}/uncertain?n=3").json()
    assert len(regions) == 3 and regions[0]["score"] >= regions[1]["score"] >= regions[2]["score"]
    proba = tifffile.imread(io.BytesIO(client.get(f"/api/images/{img['id']}/probabilities.tif").content))
    unsure = 1 - proba.max(-1)
    top = regions[0]
    window = unsure[top["y"]:top["y"] + top["height"], top["x"]:top["x"] + top["width"]].mean()
    assert window == pytest.approx(top["score"], abs=2e-3) and window > unsure.mean()
    assert client.get(f"/api/images/{other['id']}/uncertain").status_code == 404
    assert client.get("/api/projects/999/fractions").status_code == 404


# -- large images ------------------------------------------------------------------------------
def test_large_image_tiles_and_blockwise_training_and_prediction(tmp_path, shared_data):
    """With ``large_side=200`` a 518x518 micrograph is 'large': shown through a pyramid, trained
    on its scribbled blocks only and predicted block-wise, giving the library's labels exactly."""
    from hrdv2.segmentation import Segmenter

    image = read_image(shared_data / "superalloy" / "isb_1.png")
    gt = read_labels(shared_data / "superalloy" / "isb_1_gt.png")
    with TestClient(create_app(tmp_path / "projects", large_side=200)) as client:
        pid, _ = _project(client)
        img = _upload(client, pid, image)
        info = client.get(f"/api/images/{img['id']}/pyramid").json()
        assert info["tiled"] is True and info["levels"] == [[518, 518], [259, 259], [130, 130]]
        assert Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/display.png").content)).size == (130, 130)
        t = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/tile.png?level=0&ty=0&tx=1").content)))
        assert np.array_equal(t, image[:512, 512:])  # a 512-px tile, cut at the right edge
        assert client.get(f"/api/images/{img['id']}/tile.png?level=0&ty=2&tx=0").status_code == 404
        assert client.get(f"/api/images/{img['id']}/tile.png?level=3").status_code == 404
        scribble = np.zeros_like(gt)
        for value, (y, x) in ((1, (40, 40)), (2, (400, 420))):
            ys, xs = np.nonzero(gt == value)
            near = np.argsort((ys - y) ** 2 + (xs - x) ** 2)[:60]
            scribble[ys[near], xs[near]] = value
        assert _import(client, img["id"], png(scribble)).status_code == 201
        job = _train(client, pid, img["id"])
        assert job["result"]["image_id"] == img["id"]
        folder = client.app.state.hrdv2.store.root / "projects" / str(pid) / "predictions"
        assert (folder / f"{img['id']}.labels.zarr").is_dir()
        client.app.state.hrdv2.engine.wait_saved()
        (tmp_path / "m.skops").write_bytes(client.get(f"/api/projects/{pid}/model.skops").content)
        labels = _labels(client, img["id"])
        assert np.array_equal(labels, Segmenter.load(tmp_path / "m.skops").predict(image))
        assert (labels == gt).mean() > 0.7
        r = client.get(f"/api/images/{img['id']}/prediction?level=2")
        assert (r.headers["x-width"], r.headers["x-height"]) == ("130", "130")
        unsure = client.get(f"/api/images/{img['id']}/prediction?view=uncertainty&level=1")
        assert unsure.headers["x-width"] == "259" and len(unsure.content) == 259 * 259
        proba = tifffile.imread(io.BytesIO(client.get(f"/api/images/{img['id']}/probabilities.tif").content))
        decided = np.abs(proba[..., 0] - proba[..., 1]) > 2e-3  # float16 on disk: near-ties may flip
        assert proba.shape == (518, 518, 2) and np.array_equal((np.argmax(proba, -1) + 1)[decided], labels[decided])
        assert len(client.get(f"/api/images/{img['id']}/uncertain").json()) == 5


# -- click tool ------------------------------------------------------------------------------
def test_click_tool_selects_an_object_and_commits_it_as_labels(client, micrograph):
    from scipy import ndimage

    image, gt = micrograph
    pid, classes = _project(client)
    img = _upload(client, pid, image)
    blobs, n = ndimage.label(gt == 1)  # particles
    sizes = ndimage.sum(np.ones_like(blobs), blobs, range(1, n + 1))
    target = blobs == (np.argmax(sizes) + 1)
    cy, cx = np.argwhere(ndimage.distance_transform_edt(target) == ndimage.distance_transform_edt(target).max())[0]
    clicks = [{"x": float(cx), "y": float(cy), "positive": True}]
    r = client.post(f"/api/images/{img['id']}/click-object", json={"clicks": clicks})
    assert r.status_code == 200, r.text
    obj = r.json()
    mask = np.zeros(gt.shape, bool)
    for y, x0, x1 in obj["runs"]:
        mask[y, x0:x1] = True
    assert obj["area"] == mask.sum() >= 100 and mask[cy, cx]
    precision = (mask & target).sum() / mask.sum()  # one click: part of the particle, and nothing else
    assert precision > 0.9, f"the click selects outside the particle (precision {precision:.2f})"
    # a negative click on a selected pixel far from the first click takes that spot out of the object
    ys, xs = np.nonzero(mask)
    far = int(np.argmax((ys - cy) ** 2 + (xs - cx) ** 2))
    neg = clicks + [{"x": float(xs[far]), "y": float(ys[far]), "positive": False}]
    after = np.zeros(gt.shape, bool)
    for y, x0, x1 in client.post(f"/api/images/{img['id']}/click-object", json={"clicks": neg}).json()["runs"]:
        after[y, x0:x1] = True
    assert not after[ys[far], xs[far]] and after[cy, cx]
    r = client.post(f"/api/images/{img['id']}/click-object/commit", json={"clicks": clicks, "class_id": classes[0]["id"]})
    assert r.status_code == 201 and r.json()["tool"] == "labels"
    assert np.array_equal(_scribbles(client, img["id"]) == 1, mask)
    for body, status in (({"clicks": clicks}, 422), ({"clicks": [], "class_id": classes[0]["id"]}, 422),
                         ({"clicks": [{"x": 500, "y": 5}], "class_id": classes[0]["id"]}, 422)):
        assert client.post(f"/api/images/{img['id']}/click-object/commit", json=body).status_code == status


def test_waiting_for_a_save_that_is_still_starting_never_joins_an_unstarted_thread(tmp_path, monkeypatch):
    """A model download waits for the background save; if it asked while the save thread was
    registered but not yet started, join() raised "cannot join thread before it is started" (a
    500 the API fuzz test hit once). Thread start-up is slowed here to open that window wide."""
    import threading
    import time

    import hrdv2.app.engine as engine_module
    from hrdv2.app.engine import Engine
    from hrdv2.app.store import Store

    real_thread = threading.Thread

    class SlowStart(real_thread):
        def start(self) -> None:
            time.sleep(0.3)
            super().start()

    class FakeModel:
        def save(self, path) -> None:
            path.write_bytes(b"model")

    engine = Engine(Store(tmp_path / "store"))
    engine._models[1] = (7, FakeModel())
    errors: list[BaseException] = []

    def wait() -> None:
        time.sleep(0.1)  # inside SlowStart's sleep: the save is being started
        try:
            engine.wait_saved(1)
        except BaseException as exc:  # the failure under test
            errors.append(exc)

    saver = real_thread(target=lambda: engine._save_in_background(1, 7, FakeModel()))
    waiter = real_thread(target=wait)
    monkeypatch.setattr(engine_module.threading, "Thread", SlowStart)  # only the engine's save thread is slow
    saver.start()
    waiter.start()
    saver.join(10)
    waiter.join(10)
    assert not errors, errors
    assert engine.model_path(1).read_bytes() == b"model"  # the waiter returned after the save was written
