"""HTTP API of the web app (FastAPI TestClient): every endpoint, and every refusal the issue names.

Images are real micrograph crops (../shared/data/superalloy/isb_1: dark particles in a bright
matrix) so training and prediction are checked against what the image shows.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from app_helpers import png, wait_job
from fastapi.testclient import TestClient
from PIL import Image

from hrdv2.app.server import create_app
from hrdv2.io import read_labels



@pytest.fixture
def dirs(tmp_path, micrograph) -> tuple[Path, Path]:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "crop.png").write_bytes(png(micrograph[0]))
    (data / "sub" / "nested.png").write_bytes(png(micrograph[0][:64, :64]))
    (data / "notes.txt").write_text("not an image")
    (data / "fake.png").write_text("not an image either")
    (tmp_path / "secret.png").write_bytes(png(micrograph[0][:32, :32]))
    (data / "escape.png").symlink_to(tmp_path / "secret.png")
    (data / "loop").symlink_to(data / "loop")
    return tmp_path / "projects", data


@pytest.fixture
def client(dirs):
    with TestClient(create_app(dirs[0], dirs[1])) as c:
        yield c


def _project(client: TestClient, name: str = "p") -> dict:
    r = client.post("/api/projects", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


def _upload(client: TestClient, pid: int, data: bytes, name: str = "img.png", status: int = 201):
    r = client.post(f"/api/projects/{pid}/images", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == status, r.text
    return r.json()


def _two_classes(client: TestClient, pid: int) -> tuple[dict, dict]:
    a = client.post(f"/api/projects/{pid}/classes", json={"name": "particle", "color": "#FF0000"})
    b = client.post(f"/api/projects/{pid}/classes", json={"name": "matrix", "color": "#00ff00"})
    assert a.status_code == b.status_code == 201
    return a.json(), b.json()


def _paint_from_gt(client: TestClient, iid: int, gt: np.ndarray, classes: tuple[dict, dict], n: int = 6) -> None:
    """Dot strokes at pixels well inside each class's region."""
    from scipy import ndimage

    for value, cls in zip((1, 2), classes):
        dist = ndimage.distance_transform_edt(np.pad(gt == value, 1))[1:-1, 1:-1]
        ys, xs = np.nonzero(dist >= 4)
        pick = np.linspace(0, len(ys) - 1, n).astype(int)
        for y, x in zip(ys[pick], xs[pick]):
            r = client.post(f"/api/images/{iid}/strokes",
                            json={"tool": "brush", "class_id": cls["id"], "radius": 2.0, "points": [[x + 0.5, y + 0.5]]})
            assert r.status_code == 201, r.text


@pytest.fixture
def trained(client, micrograph):
    """A project with one painted micrograph and a trained (classical, logistic) model."""
    image, gt = micrograph
    p = _project(client)
    client.patch(f"/api/projects/{p['id']}", json={"classifier": "logistic"})
    img = _upload(client, p["id"], png(image))[0]
    classes = _two_classes(client, p["id"])
    _paint_from_gt(client, img["id"], gt, classes)
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={"image_id": img["id"]}).json())
    assert job["state"] == "done", job
    return p, img, classes


# -- server, schema, options -----------------------------------------------------------------
def test_health_info_and_openapi(client):
    assert client.get("/api/health").json()["status"] == "ok"
    info = client.get("/api/info").json()
    assert info["data_dir"] is True and info["max_upload_bytes"] > 0
    paths = client.get("/openapi.json").json()["paths"]
    for route in client.app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/api/"):
            assert path in paths, f"{path} missing from the OpenAPI schema"
    page = client.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_feature_options_report_weights(client):
    from hrdv2.backbones import list_backbones

    opts = client.get("/api/features/options").json()
    assert opts["kinds"] == ["classical", "deep", "hybrid"]
    assert {b["name"] for b in opts["backbones"]} == set(list_backbones())
    for b in opts["backbones"]:
        assert b["available"] or (b["reason"] and "not in" in b["reason"])


# -- projects --------------------------------------------------------------------------------
def test_projects_create_list_get_patch(client):
    p = _project(client, "alloy")
    assert p["features"]["kind"] == "classical" and p["model_version"] == 0
    assert [q["name"] for q in client.get("/api/projects").json()] == ["alloy"]
    assert client.get(f"/api/projects/{p['id']}").json()["name"] == "alloy"
    r = client.patch(f"/api/projects/{p['id']}", json={"name": "alloy 2", "classifier": "logistic", "auto_train": True})
    assert r.status_code == 200 and r.json()["classifier"] == "logistic" and r.json()["auto_train"] is True
    assert client.get("/api/projects").json()[0]["name"] == "alloy 2"


def test_project_refusals(client):
    assert client.get("/api/projects/999").status_code == 404
    assert client.patch("/api/projects/999", json={"name": "x"}).status_code == 404
    assert client.post("/api/projects", json={"name": ""}).status_code == 422
    p = _project(client)
    assert client.patch(f"/api/projects/{p['id']}", json={"classifier": "svm"}).status_code == 422
    assert client.patch(f"/api/projects/{p['id']}", json={"bogus": 1}).status_code == 422


def test_deep_features_refused_without_weights(client):
    opts = client.get("/api/features/options").json()
    p = _project(client)
    for b in opts["backbones"]:
        r = client.patch(f"/api/projects/{p['id']}", json={"features": {"kind": "deep", "backbone": b["name"]}})
        if b["available"]:
            assert r.status_code == 200
        else:
            assert r.status_code == 409 and "unavailable" in r.json()["detail"] and b["reason"] in r.json()["detail"]
    assert client.get(f"/api/projects/{p['id']}").json()["features"]["kind"] in ("classical", "deep")


# -- classes ---------------------------------------------------------------------------------
def test_classes_add_rename_recolour_delete(client, micrograph):
    p = _project(client)
    a, b = _two_classes(client, p["id"])
    assert (a["value"], b["value"], a["color"]) == (1, 2, "#ff0000")
    r = client.patch(f"/api/classes/{a['id']}", json={"name": "gamma prime", "color": "#0000ff"})
    assert r.json()["name"] == "gamma prime" and r.json()["color"] == "#0000ff"
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": 3, "points": [[5, 5]]})
    client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": b["id"], "radius": 3, "points": [[50, 50]]})
    r = client.delete(f"/api/classes/{a['id']}")
    assert r.status_code == 200 and r.json()["strokes_removed"] == 1
    left = client.get(f"/api/projects/{p['id']}/classes").json()
    assert [(c["name"], c["value"]) for c in left] == [("matrix", 1)]  # values stay 1..K
    strokes = client.get(f"/api/images/{img['id']}/strokes").json()
    assert [s["class_id"] for s in strokes] == [b["id"]]
    scribbles = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/scribbles.png").content)))
    assert scribbles[50, 50] == 1 and scribbles[5, 5] == 0


def test_class_refusals(client):
    p = _project(client)
    _two_classes(client, p["id"])
    assert client.post(f"/api/projects/{p['id']}/classes", json={"name": "matrix", "color": "#123456"}).status_code == 409
    assert client.post(f"/api/projects/{p['id']}/classes", json={"name": "x", "color": "red"}).status_code == 422
    assert client.post("/api/projects/999/classes", json={"name": "x", "color": "#123456"}).status_code == 404
    assert client.get("/api/projects/999/classes").status_code == 404
    assert client.patch("/api/classes/999", json={"name": "y"}).status_code == 404
    assert client.delete("/api/classes/999").status_code == 404


# -- images ----------------------------------------------------------------------------------
def test_upload_formats_and_pages(client, micrograph):
    image = micrograph[0]
    p = _project(client)
    grey = _upload(client, p["id"], png(image), "grey.png")
    assert len(grey) == 1 and (grey[0]["width"], grey[0]["height"], grey[0]["channels"]) == (160, 160, 1)
    rgb = np.stack([image, 255 - image, image // 2], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    jpg = _upload(client, p["id"], buf.getvalue(), "colour.jpg")
    assert jpg[0]["channels"] == 3
    buf = io.BytesIO()
    tifffile.imwrite(buf, (image.astype(np.uint16) * 200))
    t16 = _upload(client, p["id"], buf.getvalue(), "deep.tif")
    assert t16[0]["dtype"] == "uint16"
    display = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{t16[0]['id']}/display.png").content)))
    assert display.dtype == np.uint8 and display.min() == 0 and display.max() == 255  # 16-bit rescaled to show
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([image, image[::-1], image[:, ::-1]]), photometric="minisblack")
    stack = _upload(client, p["id"], buf.getvalue(), "stack.tif")
    assert [s["page"] for s in stack] == [0, 1, 2] and {s["n_pages"] for s in stack} == {3}
    assert len({s["file_id"] for s in stack}) == 1
    listed = client.get(f"/api/projects/{p['id']}/images").json()
    assert [i["name"] for i in listed] == ["grey.png", "colour.jpg", "deep.tif"] + ["stack.tif"] * 3
    assert client.get(f"/api/images/{stack[1]['id']}").json()["page"] == 1
    thumb = Image.open(io.BytesIO(client.get(f"/api/images/{grey[0]['id']}/thumb.png").content))
    assert max(thumb.size) <= 160
    shown = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{grey[0]['id']}/display.png").content)))
    assert np.array_equal(shown, image)


def test_upload_refusals(dirs, micrograph):
    with TestClient(create_app(dirs[0], max_upload_bytes=20_000, max_pixels=100_000)) as c:
        p = _project(c)
        noise = np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8)
        r = c.post(f"/api/projects/{p['id']}/images", files={"file": ("big.png", png(noise), "image/png")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        _upload(c, p["id"], b"hello, I am text pretending" * 10, "evil.png", status=415)
        _upload(c, p["id"], b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "broken.png", status=415)
        _upload(c, p["id"], b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", status=415)
        huge = io.BytesIO()
        Image.fromarray(np.zeros((400, 400), np.uint8)).save(huge, format="PNG")  # compresses tiny, 160k px
        _upload(c, p["id"], huge.getvalue(), "bomb.png", status=413)
        _upload(c, 999, png(micrograph[0][:20, :20]), status=404)
        ok = _upload(c, p["id"], png(micrograph[0][:40, :40]), "../../etc/passwd.png")
        assert ok[0]["name"] == "passwd.png"  # the client's name is a label, never a path
        assert not any(Path(dirs[0]).rglob("passwd.png"))
        assert c.get("/api/images/999").status_code == 404
        assert c.get("/api/projects/999/images").status_code == 404


def test_data_folder_listing_and_add(client):
    files = client.get("/api/data").json()
    assert files["available"] and files["files"] == ["crop.png", "escape.png", "fake.png", "sub/nested.png"]
    p = _project(client)
    r = client.post(f"/api/projects/{p['id']}/images/from-data", json={"path": "sub/nested.png"})
    assert r.status_code == 201 and r.json()[0]["source"] == "data" and r.json()[0]["width"] == 64


@pytest.mark.parametrize("path,status", [
    ("../secret.png", 400), ("sub/../../secret.png", 400), ("/etc/passwd", 400), ("..\\secret.png", 400),
    ("escape.png", 400),  # symlink leading out of the data folder
    ("missing.png", 404), ("notes.txt", 404), ("fake.png", 415), ("sub", 404),
    ("a" * 300 + ".png", 404), ("sub/" + "é" * 200 + ".png", 404),  # names too long for the file system
    ("loop/x.png", 400),  # a symlink loop
])
def test_data_folder_refusals(client, path, status):
    p = _project(client)
    r = client.post(f"/api/projects/{p['id']}/images/from-data", json={"path": path})
    assert r.status_code == status, r.text


def test_data_folder_absent(dirs):
    with TestClient(create_app(dirs[0])) as c:
        assert c.get("/api/data").json() == {"available": False, "files": []}
        p = _project(c)
        assert c.post(f"/api/projects/{p['id']}/images/from-data", json={"path": "crop.png"}).status_code == 404


# -- strokes ---------------------------------------------------------------------------------
def test_strokes_paint_erase_undo_redo(client, micrograph):
    p = _project(client)
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    a, b = _two_classes(client, p["id"])
    url = f"/api/images/{img['id']}"
    s1 = client.post(f"{url}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": 3, "points": [[10, 10], [40, 10]]})
    assert s1.status_code == 201 and s1.json()["points"] == [[10, 10], [40, 10]]
    client.post(f"{url}/strokes", json={"tool": "eraser", "radius": 2, "points": [[25.5, 5], [25.5, 15]]})
    scr = np.asarray(Image.open(io.BytesIO(client.get(f"{url}/scribbles.png").content)))
    assert scr[10, 12] == 1 and scr[10, 25] == 0 and scr[20, 20] == 0
    assert scr[7, 20] == 1 and scr[5, 20] == 0  # radius 3 around y = 10, pixel centres
    undo = client.post(f"{url}/undo").json()
    assert undo["changed"] and [s["tool"] for s in undo["strokes"]] == ["brush"]
    redo = client.post(f"{url}/redo").json()
    assert redo["changed"] and [s["tool"] for s in redo["strokes"]] == ["brush", "eraser"]
    assert client.post(f"{url}/redo").json()["changed"] is False
    client.post(f"{url}/undo")
    client.post(f"{url}/strokes", json={"tool": "brush", "class_id": b["id"], "radius": 1, "points": [[80, 80]]})
    assert client.post(f"{url}/redo").json()["changed"] is False  # a new stroke drops the redo history
    assert [s["class_id"] for s in client.get(f"{url}/strokes").json()] == [a["id"], b["id"]]
    client.post(f"{url}/undo")
    client.post(f"{url}/undo")
    assert client.post(f"{url}/undo").json() == {"changed": False, "strokes": []}


@pytest.mark.parametrize("body", [
    {"tool": "brush", "radius": 3, "points": [[1, 1]]},  # brush without class
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": []},  # no points
    {"tool": "brush", "class_id": "CLS", "radius": -1, "points": [[1, 1]]},
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": [[1, 2, 3]]},
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": [[1, "x"]]},
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": [[float("nan"), 1]]},
    {"tool": "pencil", "class_id": "CLS", "radius": 3, "points": [[1, 1]]},
    {"tool": "eraser", "class_id": "CLS", "radius": 3, "points": [[1, 1]]},  # eraser takes no class
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": [[1, 1]], "extra": True},
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": [[5000, 5000]]},  # outside the image
    {"tool": "brush", "class_id": "CLS", "radius": 3, "points": "1,1"},
])
def test_malformed_strokes_refused(client, micrograph, body):
    p = _project(client)
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    a, _ = _two_classes(client, p["id"])
    body = {k: (a["id"] if v == "CLS" else v) for k, v in body.items()}
    r = client.post(f"/api/images/{img['id']}/strokes", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert client.get(f"/api/images/{img['id']}/strokes").json() == []


def test_stroke_refusals_unknown_ids(client, micrograph):
    p, q = _project(client), _project(client, "other")
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    foreign, _ = _two_classes(client, q["id"])
    stroke = {"tool": "brush", "class_id": 999, "radius": 3, "points": [[1, 1]]}
    assert client.post(f"/api/images/{img['id']}/strokes", json=stroke).status_code == 404
    stroke["class_id"] = foreign["id"]
    assert client.post(f"/api/images/{img['id']}/strokes", json=stroke).status_code == 422
    for method, url in [("post", "/api/images/999/strokes"), ("get", "/api/images/999/strokes"),
                        ("post", "/api/images/999/undo"), ("post", "/api/images/999/redo"),
                        ("get", "/api/images/999/scribbles.png"), ("get", "/api/images/999/display.png"),
                        ("get", "/api/images/999/thumb.png"), ("post", "/api/images/999/features"),
                        ("get", "/api/images/999/prediction"), ("get", "/api/images/999/labels.png"),
                        ("get", "/api/images/999/probabilities.tif"), ("post", "/api/images/999/predict"),
                        ("post", "/api/projects/999/train"), ("post", "/api/projects/999/apply"),
                        ("get", "/api/projects/999/model.skops"), ("get", "/api/projects/999/phase_fractions.csv"),
                        ("get", "/api/projects/999/results.zip"), ("get", "/api/jobs/0123456789ab"),
                        ("post", "/api/jobs/0123456789ab/cancel"), ("get", "/api/jobs/0123456789ab/events")]:
        kwargs = {"json": stroke if url.endswith("strokes") and method == "post" else {}} if method == "post" else {}
        assert getattr(client, method)(url, **kwargs).status_code == 404, url


# -- jobs, features, training, prediction, exports -------------------------------------------
def test_features_job_progress_events_and_cache(client, micrograph, dirs):
    p = _project(client)
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    job = client.post(f"/api/images/{img['id']}/features").json()
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["state"] == "done" and events[-1]["result"]["n_features"] > 1
    fractions = [e["done"] / e["total"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    cache = Path(dirs[0]) / "cache" / "features"
    cached = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert cached, "features were not written to the on-disk cache"
    again = wait_job(client, client.post(f"/api/images/{img['id']}/features").json())
    assert again["state"] == "done" and sorted(p.name for p in cache.rglob("*") if p.is_file()) == cached


def test_cancel_job(client):
    started, release = threading.Event(), threading.Event()

    def slow(job):
        started.set()
        for i in range(1000):
            job.report(i, 1000, stage="waiting")
            release.wait(0.01)
        return {"finished": True}

    job = client.app.state.hrdv2.jobs.submit("test", slow)
    assert started.wait(5)
    r = client.post(f"/api/jobs/{job.id}/cancel")
    assert r.status_code == 200
    final = wait_job(client, client.get(f"/api/jobs/{job.id}").json(), timeout=5)
    assert final["state"] == "cancelled" and final["result"] is None


def test_train_refuses_without_two_classes(client, micrograph):
    p = _project(client)
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    a, _ = _two_classes(client, p["id"])
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={}).json())
    assert job["state"] == "failed" and "paint" in job["error"]
    client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": 3, "points": [[5, 5]]})
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={"image_id": img["id"]}).json())
    assert job["state"] == "failed" and "two classes" in job["error"] and "particle" in job["error"]
    assert client.get(f"/api/images/{img['id']}/prediction").status_code == 404
    assert client.post(f"/api/projects/{p['id']}/apply").status_code == 422
    assert client.get(f"/api/projects/{p['id']}/model.skops").status_code == 422
    q = _project(client, "other")
    assert client.post(f"/api/projects/{q['id']}/train", json={"image_id": img["id"]}).status_code == 404


def test_train_predict_overlay(client, trained, micrograph):
    p, img, _ = trained
    _, gt = micrograph
    assert client.get(f"/api/projects/{p['id']}").json()["model_version"] == 1
    assert client.get(f"/api/images/{img['id']}").json()["prediction_version"] == 1
    r = client.get(f"/api/images/{img['id']}/prediction")
    assert r.headers["x-width"] == "160" and r.headers["x-model-version"] == "1"
    labels = np.frombuffer(r.content, np.uint8).reshape(160, 160)
    assert set(np.unique(labels)) <= {1, 2}
    assert (labels == gt).mean() > 0.8, "prediction should follow the particles of the micrograph"
    unc = np.frombuffer(client.get(f"/api/images/{img['id']}/prediction?view=uncertainty").content, np.uint8)
    assert unc.max() <= 128  # 1 - max probability of 2 classes is at most 0.5
    assert client.get(f"/api/images/{img['id']}/prediction?view=bogus").status_code == 422
    downloaded = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/labels.png").content)))
    assert np.array_equal(downloaded, labels)
    proba = tifffile.imread(io.BytesIO(client.get(f"/api/images/{img['id']}/probabilities.tif").content))
    assert proba.shape == (160, 160, 2) and proba.dtype == np.float32
    assert np.allclose(proba.sum(-1), 1, atol=2e-3)
    # probabilities are stored as float16: only near-ties may round to the other class
    decided = np.abs(proba[..., 0] - proba[..., 1]) > 2e-3
    assert decided.mean() > 0.99 and np.array_equal((np.argmax(proba, -1) + 1)[decided], labels[decided])


def test_apply_all_exports_and_model_file(client, trained, micrograph, tmp_path):
    p, img, classes = trained
    image, _ = micrograph
    other = _upload(client, p["id"], png(np.ascontiguousarray(image[::-1])), "flipped.png")[0]
    assert client.get(f"/api/images/{other['id']}/prediction").status_code == 404
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/apply").json())
    assert job["state"] == "done" and job["result"]["n_images"] == 2
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/projects/{p['id']}/phase_fractions.csv").text)))
    assert [(r["file"], r["page"]) for r in rows] == [("img.png", "0"), ("flipped.png", "0")]
    for row, iid in zip(rows, (img["id"], other["id"])):
        labels = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{iid}/labels.png").content)))
        assert float(row["particle"]) == pytest.approx((labels == 1).mean(), abs=1e-5)
        assert float(row["particle"]) + float(row["matrix"]) == pytest.approx(1, abs=1e-5)
    z = zipfile.ZipFile(io.BytesIO(client.get(f"/api/projects/{p['id']}/results.zip").content))
    assert sorted(z.namelist()) == sorted([f"labels/{img['id']}_img.png.png", f"labels/{other['id']}_flipped.png.png",
                                           "phase_fractions.csv", "model.skops"])
    # the model file is a skops file the library (and so `hrdv2 apply`) loads and that predicts the same
    model_bytes = client.get(f"/api/projects/{p['id']}/model.skops").content
    (tmp_path / "m.skops").write_bytes(model_bytes)
    from hrdv2.segmentation import Segmenter

    seg = Segmenter.load(tmp_path / "m.skops")
    served = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/labels.png").content)))
    assert np.array_equal(np.asarray(seg.predict(image)), served)
    from click.testing import CliRunner

    from hrdv2.cli.main import cli

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "img.png").write_bytes(png(image))
    run = CliRunner().invoke(cli, ["apply", str(tmp_path / "m.skops"), str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert run.exit_code == 0, run.output
    assert np.array_equal(read_labels(next((tmp_path / "out").glob("img*.png"))), served)
    cli_rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "phase_fractions.csv").read_text())))
    assert float(cli_rows[0]["particle"]) == pytest.approx(float(rows[0]["particle"]), abs=1e-6)
    # predict endpoint (an image opened after training) refreshes a stale prediction
    client.post(f"/api/images/{img['id']}/strokes",
                json={"tool": "brush", "class_id": classes[1]["id"], "radius": 2, "points": [[150, 150]]})
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={}).json())
    assert job["state"] == "done" and client.get(f"/api/images/{other['id']}").json()["prediction_version"] == 1
    job = wait_job(client, client.post(f"/api/images/{other['id']}/predict").json())
    assert job["state"] == "done" and client.get(f"/api/images/{other['id']}").json()["prediction_version"] == 2


def test_deleting_a_class_retires_the_model(client, trained):
    p, img, classes = trained
    assert client.get(f"/api/projects/{p['id']}").json()["has_model"] is True
    client.delete(f"/api/classes/{classes[0]['id']}")
    after = client.get(f"/api/projects/{p['id']}").json()
    assert after["has_model"] is False and after["model_version"] == 2  # stored predictions are now stale
    assert client.post(f"/api/projects/{p['id']}/apply").status_code == 422
    assert client.post(f"/api/images/{img['id']}/predict").status_code == 422


def test_everything_survives_a_restart(dirs, micrograph):
    image, gt = micrograph
    with TestClient(create_app(dirs[0], dirs[1])) as c:
        p = _project(c)
        img = _upload(c, p["id"], png(image))[0]
        classes = _two_classes(c, p["id"])
        _paint_from_gt(c, img["id"], gt, classes)
        assert wait_job(c, c.post(f"/api/projects/{p['id']}/train", json={"image_id": img["id"]}).json())["state"] == "done"
        strokes = c.get(f"/api/images/{img['id']}/strokes").json()
        labels = c.get(f"/api/images/{img['id']}/labels.png").content
    cache_files = sorted(f for f in (Path(dirs[0]) / "cache").rglob("*") if f.is_file())
    with TestClient(create_app(dirs[0], dirs[1])) as c:
        assert c.get(f"/api/images/{img['id']}/strokes").json() == strokes
        assert c.get(f"/api/images/{img['id']}/labels.png").content == labels
        assert [x["name"] for x in c.get(f"/api/projects/{p['id']}/classes").json()] == ["particle", "matrix"]
        job = wait_job(c, c.post(f"/api/projects/{p['id']}/apply").json())  # model loaded from its skops file
        assert job["state"] == "done"
        assert c.get(f"/api/images/{img['id']}/labels.png").content == labels
    assert sorted(f for f in (Path(dirs[0]) / "cache").rglob("*") if f.is_file()) == cache_files  # no recompute


# -- request guards --------------------------------------------------------------------------
def test_host_allow_list_and_cross_origin_refusal(dirs):
    app = create_app(dirs[0], allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.post("/api/projects", json={"name": "a"}, headers={"Origin": "http://localhost:8000"}).status_code == 201
        assert c.post("/api/projects", json={"name": "b"}, headers={"Origin": "http://evil.example"}).status_code == 403
        assert c.post("/api/projects", json={"name": "b"}, headers={"Origin": "null"}).status_code == 403
        assert [p["name"] for p in c.get("/api/projects").json()] == ["a"]
    with TestClient(app, base_url="http://rebound.example") as c:
        assert c.get("/api/projects").status_code == 400


def test_serve_cli_warns_off_loopback(monkeypatch, dirs, tmp_path):
    from click.testing import CliRunner

    import uvicorn
    from hrdv2.cli.serve import serve

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    runner = CliRunner()
    r = runner.invoke(serve, ["--project-dir", str(tmp_path / "p"), "--port", "8123"])
    assert r.exit_code == 0 and "warning" not in r.output and calls[-1]["host"] == "127.0.0.1"
    r = runner.invoke(serve, ["--project-dir", str(tmp_path / "p"), "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "warning" in r.output and calls[-1]["host"] == "0.0.0.0"
    r = runner.invoke(serve, ["--project-dir", str(tmp_path / "p"), "--data", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "nope" in str(r.output) + str(r.exception)


def test_rgb_image_in_a_grey_project_is_skipped_with_the_reason(client, trained, micrograph):
    p, img, _ = trained
    grey = micrograph[0]
    rgb = _upload(client, p["id"], png(np.stack([grey, grey // 2, 255 - grey], axis=-1)), "colour.png")[0]
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={"image_id": rgb["id"]}).json())
    assert job["state"] == "done" and job["result"]["image_id"] is None and "channel" in job["result"]["note"]
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/apply").json())
    assert job["state"] == "done" and job["result"]["n_images"] == 1
    assert [s["name"] for s in job["result"]["skipped"]] == ["colour.png"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/projects/{p['id']}/phase_fractions.csv").text)))
    assert [r["file"] for r in rows] == ["img.png"]


def test_download_of_an_image_with_a_non_ascii_name(client, trained, dirs, micrograph):
    p, _, _ = trained
    (dirs[1] / "µm_échantillon.png").write_bytes(png(micrograph[0][:, ::-1].copy()))
    added = client.post(f"/api/projects/{p['id']}/images/from-data", json={"path": "µm_échantillon.png"})
    assert added.status_code == 201 and added.json()[0]["name"] == "µm_échantillon.png"
    iid = added.json()[0]["id"]
    assert wait_job(client, client.post(f"/api/images/{iid}/predict").json())["state"] == "done"
    r = client.get(f"/api/images/{iid}/labels.png")
    assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="_m__chantillon_labels.png"'
    assert client.get(f"/api/images/{iid}/probabilities.tif").status_code == 200


# -- issue 10: ids, stroke cost, class count, stale predictions, loopback, body limits -------
def _id_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every API operation that takes a database id in its path."""
    paths = client.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops
            if any(f"{{{k}}}" in path for k in ("project_id", "image_id", "class_id"))]


@pytest.mark.parametrize("bad", [2**63, 2**64, 10**30, 0, -1, -(2**63) - 1])
def test_ids_out_of_range_are_422_on_every_route(client, bad):
    routes = _id_routes(client)
    assert len(routes) >= 25
    for method, template in routes:
        url = template.replace("{project_id}", str(bad)).replace("{image_id}", str(bad)).replace("{class_id}", str(bad))
        r = client.request(method, url)
        assert r.status_code == 422, (method, url, r.status_code, r.text)
        assert any(e["loc"][0] == "path" for e in r.json()["detail"]), r.text


def test_largest_id_is_a_plain_404(client):
    top = 2**63 - 1
    for method, template in _id_routes(client):
        url = template.replace("{project_id}", str(top)).replace("{image_id}", str(top)).replace("{class_id}", str(top))
        body = {"tool": "brush", "class_id": 1, "radius": 1, "points": [[1, 1]]} if url.endswith("/strokes") else None
        body = {"name": "x", "color": "#123456"} if url.endswith("/classes") and method == "POST" else body
        body = {"path": "crop.png"} if url.endswith("from-data") else body
        body = {} if url.endswith("/train") else body
        r = client.request(method, url, json=body) if body is not None else client.request(method, url)
        assert r.status_code in (404, 422) and r.status_code != 500, (method, url, r.text)
        if method in ("GET", "DELETE") or url.endswith(("/train", "/strokes", "/predict", "/apply", "/undo")):
            assert r.status_code == 404, (method, url, r.text)


def test_ids_in_bodies_are_bounded(client, micrograph):
    p = _project(client)
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    for bad in (2**63, 10**30, 0, -5):
        r = client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": bad, "radius": 2, "points": [[3, 3]]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "class_id", r.text
        r = client.post(f"/api/projects/{p['id']}/train", json={"image_id": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "image_id", r.text
    assert client.get(f"/api/images/{img['id']}/strokes").json() == []


def _reference_cover(points: np.ndarray, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Distance from every pixel centre to the polyline, by brute force (small images only)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    pts = points if len(points) > 1 else np.vstack([points, points])
    best = np.full(shape, np.inf)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        dx, dy = x1 - x0, y1 - y0
        seg2 = dx * dx + dy * dy
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / seg2, 0, 1) if seg2 > 0 else 0.0
        best = np.minimum(best, np.hypot(xx - x0 - t * dx, yy - y0 - t * dy))
    return best


def test_both_stroke_methods_match_the_definition(monkeypatch):
    """Row spans are exact; the dilation used for huge strokes errs only within ~1 px of the edge."""
    from hrdv2.app import raster
    from hrdv2.app.raster import stroke_mask

    monkeypatch.setattr(raster, "_BAND_PIXELS", 300)  # count row spans in many bands, as on a large image

    rng = np.random.default_rng(7)
    for trial in range(40):
        shape = (int(rng.integers(8, 70)), int(rng.integers(8, 70)))
        pts = rng.uniform(-25, 95, (int(rng.integers(1, 9)), 2))
        if trial % 4 == 0:
            pts = np.round(pts)  # axis-parallel and integer cases
        radius = float(rng.choice([0.5, 1.0, 2.5, 6.0, 17.0]))
        dist = _reference_cover(pts, radius, shape)
        for exact in (True, False):
            painted = np.zeros(shape, bool)
            found = stroke_mask(pts, radius, shape, exact=exact)
            if found is not None:
                (r0, c0), mask = found
                painted[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]] = mask
            wrong = painted != (dist <= radius)
            tolerance = 1e-9 if exact else 1.5
            assert not (wrong & (np.abs(dist - radius) > tolerance)).any(), (trial, exact, radius, pts.tolist())
            if not exact and radius >= 6:  # the radii that take this path: few pixels differ
                assert wrong.sum() <= max(3, 0.1 * (dist <= radius).sum()), (trial, radius)


def test_a_maximal_stroke_is_drawn_in_bounded_time(client, micrograph):
    """20000 points at radius 512 took minutes per rasterisation; now it is one linear pass."""
    from hrdv2.app.schemas import MAX_BRUSH_RADIUS, MAX_STROKE_POINTS

    big = np.tile(micrograph[0], (3, 3))  # 480 x 480
    p = _project(client)
    img = _upload(client, p["id"], png(big))[0]
    a, b = _two_classes(client, p["id"])
    t = np.linspace(0, 1, MAX_STROKE_POINTS)
    corner = np.stack([20 + 19 * np.cos(173 * t), 20 + 19 * np.sin(211 * t)], axis=1)  # a dense scribble near (20, 20)
    url = f"/api/images/{img['id']}"
    start = time.perf_counter()
    r = client.post(f"{url}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": MAX_BRUSH_RADIUS,
                                            "points": corner.round(2).tolist()})
    assert r.status_code == 201, r.text
    scr = np.asarray(Image.open(io.BytesIO(client.get(f"{url}/scribbles.png").content)))
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"one maximal stroke took {elapsed:.1f} s to store and draw"
    from scipy.spatial import cKDTree

    yy, xx = np.mgrid[0:480, 0:480] + 0.5
    dist, _ = cKDTree(corner.round(2)).query(np.stack([xx.ravel(), yy.ravel()], 1))
    dist = dist.reshape(480, 480)  # distance to the nearest point: at most ~0.02 px more than to the polyline
    assert (scr[dist <= MAX_BRUSH_RADIUS - 1.5] == 1).all() and (scr[dist > MAX_BRUSH_RADIUS + 1.5] == 0).all()
    assert 0 < (scr == 0).sum() < scr.size
    # the same stroke again, everywhere in the image, as the eraser
    spread = np.stack([240 + 230 * np.cos(173 * t), 240 + 230 * np.sin(211 * t)], axis=1)
    start = time.perf_counter()
    r = client.post(f"{url}/strokes", json={"tool": "eraser", "radius": MAX_BRUSH_RADIUS, "points": spread.round(2).tolist()})
    assert r.status_code == 201, r.text
    scr = np.asarray(Image.open(io.BytesIO(client.get(f"{url}/scribbles.png").content)))
    assert time.perf_counter() - start < 5.0 and not scr.any()


def test_a_stroke_too_costly_to_draw_is_refused_at_once(client):
    """Only a huge, dense stroke over a large image is left over; it is refused before storing."""
    p = _project(client)
    img = _upload(client, p["id"], png(np.zeros((2000, 2000), np.uint8)), "large.png")[0]
    a, _ = _two_classes(client, p["id"])
    scatter = np.random.default_rng(0).uniform(0, 2000, (20000, 2)).round(2).tolist()
    start = time.perf_counter()
    r = client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": 512, "points": scatter})
    assert r.status_code == 422 and "too costly" in r.json()["detail"] and "smaller brush" in r.json()["detail"]
    assert time.perf_counter() - start < 5.0
    assert client.get(f"/api/images/{img['id']}/strokes").json() == []
    ok = client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": a["id"], "radius": 50,
                                                               "points": scatter[:2000]})
    assert ok.status_code == 201  # a long stroke with a browser-sized brush is fine


def test_at_most_255_classes(client, micrograph):
    p = _project(client)
    store = client.app.state.hrdv2.store
    for k in range(253):
        store.add_class(p["id"], f"c{k}", "#123456")
    last = client.post(f"/api/projects/{p['id']}/classes", json={"name": "c253", "color": "#abcdef"})
    top = client.post(f"/api/projects/{p['id']}/classes", json={"name": "c254", "color": "#abcdef"})
    assert last.status_code == top.status_code == 201 and top.json()["value"] == 255
    r = client.post(f"/api/projects/{p['id']}/classes", json={"name": "one too many", "color": "#abcdef"})
    assert r.status_code == 422 and "255" in r.json()["detail"] and "delete a class" in r.json()["detail"]
    assert len(client.get(f"/api/projects/{p['id']}/classes").json()) == 255
    img = _upload(client, p["id"], png(micrograph[0]))[0]
    client.post(f"/api/images/{img['id']}/strokes", json={"tool": "brush", "class_id": top.json()["id"], "radius": 2, "points": [[9, 9]]})
    scr = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{img['id']}/scribbles.png").content)))
    assert scr[9, 9] == 255 and scr.dtype == np.uint8
    client.delete(f"/api/classes/{top.json()['id']}")
    assert client.post(f"/api/projects/{p['id']}/classes", json={"name": "again", "color": "#abcdef"}).status_code == 201


def test_deleting_a_class_drops_stored_predictions(client, trained):
    p, img, classes = trained
    s = client.app.state.hrdv2
    assert wait_job(client, client.post(f"/api/projects/{p['id']}/apply").json())["state"] == "done"
    iid = img["id"]
    for path in ("labels.png", "prediction", "probabilities.tif"):
        assert client.get(f"/api/images/{iid}/{path}").status_code == 200
    assert client.get(f"/api/projects/{p['id']}").json()["has_phase_fractions"] is True
    old_model, old_version = s.engine.model(p["id"]), client.get(f"/api/projects/{p['id']}").json()["model_version"]
    client.delete(f"/api/classes/{classes[1]['id']}")
    for path in ("labels.png", "prediction", "probabilities.tif"):
        r = client.get(f"/api/images/{iid}/{path}")
        assert r.status_code == 404 and "no prediction" in r.json()["detail"], path
    assert client.get(f"/api/images/{iid}").json()["prediction_version"] == 0
    assert client.get(f"/api/projects/{p['id']}/phase_fractions.csv").status_code == 404
    assert client.get(f"/api/projects/{p['id']}").json()["has_phase_fractions"] is False
    assert client.get(f"/api/projects/{p['id']}/results.zip").status_code == 404
    # a prediction of the retired model that finishes late is not stored either
    s.engine.predict(s.store.get_image(iid), old_model, old_version)
    assert client.get(f"/api/images/{iid}/labels.png").status_code == 404


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.1", True), ("127.0.1", True), ("0x7f.1", True), ("0177.0.0.1", True),
    ("2130706433", True), ("127.255.255.254", True), ("localhost", True), ("LocalHost.", True),
    ("::1", True), ("[::1]", True), ("0:0:0:0:0:0:0:1", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False), ("10.0.0.1", False),
    ("128.0.0.1", False), ("127.0.0.1 x", False),
])
def test_loopback_spellings(host, loopback):
    from hrdv2.app.security import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["127.1", "0x7f.0.0.1", "[::1]", "localhost"])
def test_serve_keeps_the_host_check_on_any_loopback_spelling(monkeypatch, tmp_path, host):
    from click.testing import CliRunner

    import uvicorn
    from hrdv2.cli.serve import serve

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append((app, kw)))
    r = CliRunner().invoke(serve, ["--project-dir", str(tmp_path / "p"), "--host", host])
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    app, kw = apps[-1]
    assert kw["host"] == host.strip("[]")
    with TestClient(app) as c:
        assert c.get("/api/projects", headers={"Host": "rebound.example"}).status_code == 400  # DNS rebinding
        assert c.get("/api/projects", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/api/projects", headers={"Host": f"{host}:8000"}).status_code == 200  # as typed


def test_over_limit_body_is_413_chunked_or_not(dirs):
    head = (b'--B0UND\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n\x89PNG\r\n\x1a\n")
    body = head + bytes(1_500_000) + b"\r\n--B0UND--\r\n"  # over the 20 kB limit + 1 MiB of slack
    headers = {"Content-Type": "multipart/form-data; boundary=B0UND"}
    with TestClient(create_app(dirs[0], max_upload_bytes=20_000)) as c:
        p = _project(c)
        url = f"/api/projects/{p['id']}/images"
        declared = c.post(url, content=body, headers=headers)
        chunked = c.post(url, content=(body[i:i + 65536] for i in range(0, len(body), 65536)), headers=headers)
        for r in (declared, chunked):
            assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
        assert c.get(url).json() == []
        big_json = b'{"name": "' + b"x" * 1_500_000 + b'"}'
        for content in (big_json, (big_json[i:i + 65536] for i in range(0, len(big_json), 65536))):
            r = c.post("/api/projects", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == 413, r.text
        small = head + bytes(100_000) + b"\r\n--B0UND--\r\n"  # within the slack: the upload's own limit says 413
        r = c.post(url, content=(small[i:i + 4096] for i in range(0, len(small), 4096)), headers=headers)
        assert r.status_code == 413 and "20,000" in r.json()["detail"]
        assert _project(c, "still answering")["name"] == "still answering"


@pytest.mark.parametrize("app_reply", [400, 500, None])
def test_body_limit_wins_over_the_apps_own_answer(app_reply):
    """Whatever the app makes of a body cut off at the limit (a parser's 400, a crash, nothing),
    the client gets the 413 a declared Content-Length gets."""
    from hrdv2.app.security import RequestGuard

    async def app(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
            status = 200
        except Exception:
            if app_reply is None:
                raise
            status = app_reply
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"the app's own answer"})

    c = TestClient(RequestGuard(app, max_body_bytes=1000), raise_server_exceptions=False)  # no lifespan
    assert c.post("/", content=(b"x" * 300 for _ in range(3))).status_code == 200  # 900 bytes, chunked
    assert c.post("/", content=b"x" * 5000).status_code == 413  # declared
    r = c.post("/", content=(b"x" * 300 for _ in range(10)))  # 3000 bytes, chunked
    assert r.status_code == 413 and "limit of 1,000 bytes" in r.json()["detail"]


def test_changed_feature_settings_never_meet_the_old_model(client, trained, micrograph):
    """The model is applied with its own feature config; new feature settings retire it."""
    from hrdv2.app.schemas import FeatureSettings

    p, img, _ = trained
    engine = client.app.state.hrdv2.engine
    labels_before = client.get(f"/api/images/{img['id']}/labels.png").content
    # the project's settings move to deep features behind the model's back (as an old app did):
    # prediction still featurises with the model's classical config, so it needs no weights and
    # gives the same labels
    client.app.state.hrdv2.store.update_project(p["id"], features=FeatureSettings(kind="deep", stride=7))
    job = wait_job(client, client.post(f"/api/images/{img['id']}/predict").json())
    assert job["state"] == "done", job
    assert client.get(f"/api/images/{img['id']}/labels.png").content == labels_before
    # through the engine (what PATCH does) the change retires the model and its predictions
    client.app.state.hrdv2.store.update_project(p["id"], features=FeatureSettings())
    assert engine.update_features(p["id"], FeatureSettings(kind="deep", stride=7)) is True
    after = client.get(f"/api/projects/{p['id']}").json()
    assert after["has_model"] is False and after["features"]["stride"] == 7
    assert client.get(f"/api/images/{img['id']}/labels.png").status_code == 404
    r = client.post(f"/api/images/{img['id']}/predict")
    assert 400 <= r.status_code < 500 and "feature settings" in r.json()["detail"], r.text
    # a settings change that leaves the features as they are keeps the model
    r = client.patch(f"/api/projects/{p['id']}", json={"features": {"kind": "classical"}})
    assert r.status_code == 200
    job = wait_job(client, client.post(f"/api/projects/{p['id']}/train", json={"image_id": img["id"]}).json())
    assert job["state"] == "done", job
    r = client.patch(f"/api/projects/{p['id']}", json={"features": {"kind": "classical", "stride": 7}})
    assert r.status_code == 200 and r.json()["has_model"] is True
