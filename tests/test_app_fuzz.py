"""Fuzz the web app's HTTP API from its own OpenAPI schema (schemathesis, in-process ASGI).

Every operation gets valid and invalid requests generated from the schema (ids out of range,
wrong types, missing fields, odd strings), and valid ones against the rows of a real project
(its ids in the path, everything else generated). No answer may be a 5xx, and afterwards the SQLite store must pass
``PRAGMA integrity_check``. Examples per operation are few and the run is derandomised, so the
test takes well under a minute and fails the same way twice.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import schemathesis
from app_helpers import png
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from hrdv2.app.server import create_app
from hrdv2.io import read_image

EXAMPLES = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 12}  # per operation and run: ~1000 requests, ~25 s
BUDGET_S = 180.0  # a guard against a hang, far above the usual run (~65 s on an idle 2-core machine)


def _without_lifespan(app):
    """The app for schemathesis: its lifespan (startup, shutdown) is driven by the test's own
    client instead, so shutting down (jobs stopped, database closed) happens before the check."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


def _seed(client: TestClient, image: np.ndarray) -> dict[str, object]:
    """A project with two classes, one image, strokes and a trained model; returns the ids, for
    the path parameters of the runs against existing rows."""
    pid = client.post("/api/projects", json={"name": "fuzzed"}).json()["id"]
    client.patch(f"/api/projects/{pid}", json={"classifier": "logistic"})
    a = client.post(f"/api/projects/{pid}/classes", json={"name": "dark", "color": "#ff0000"}).json()
    b = client.post(f"/api/projects/{pid}/classes", json={"name": "bright", "color": "#00ff00"}).json()
    iid = client.post(f"/api/projects/{pid}/images", files={"file": ("m.png", png(image), "image/png")}).json()[0]["id"]
    for cls, y in ((a, 10), (b, 50)):
        r = client.post(f"/api/images/{iid}/strokes", json={"tool": "brush", "class_id": cls["id"], "radius": 3,
                                                              "points": [[5, y], [60, y]]})
        assert r.status_code == 201, r.text
    job = client.post(f"/api/projects/{pid}/train", json={"image_id": iid}).json()
    deadline = time.time() + 60
    while job["state"] not in ("done", "failed"):
        assert time.time() < deadline
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["state"] == "done", job
    assert client.get("/api/features/options").status_code == 200  # imports torch now, not inside the budget
    return {"project_id": pid, "image_id": iid, "class_id": a["id"], "job_id": job["id"]}


def test_fuzz_api_no_server_errors_and_store_intact(tmp_path, shared_data):
    image = read_image(shared_data / "superalloy" / "isb_1.png")[:64, :64]
    data = tmp_path / "data"
    data.mkdir()
    (data / "crop.png").write_bytes(png(image))
    project_dir = tmp_path / "projects"
    app = create_app(project_dir, data)
    failures: list[str] = []
    calls = 0
    statuses: dict[int, int] = {}
    with TestClient(app) as client:
        seeded = _seed(client, image)
        started = time.time()
        schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(app))
        operations = [result.ok() for result in schema.get_all_operations()]
        # deletions last, so the seeded rows stay for every other operation's "existing rows" pass
        operations.sort(key=lambda op: op.method.upper() == "DELETE")
        assert len(operations) >= 30, "the schema lost operations"
        for operation in operations:
            existing = {k: v for k, v in seeded.items() if f"{{{k}}}" in operation.path}
            runs = [(mode, n, {}) for mode, n in EXAMPLES.items()]
            if existing:  # random ids mostly name nothing (404): also fuzz the rest against real rows
                runs.append((GenerationMode.POSITIVE, EXAMPLES[GenerationMode.POSITIVE], existing))
            for mode, n, path_parameters in runs:

                @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
                @settings(max_examples=n, deadline=None, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                def run(case) -> None:
                    nonlocal calls
                    calls += 1
                    body = "" if type(case.body).__name__ == "NotSet" else f" body={case.body!r:.200}"
                    request = f"{case.method} {case.formatted_path} query={case.query}{body}"
                    try:
                        response = case.call()
                    except Exception as exc:  # the in-process client re-raises what a server answers with 500
                        failures.append(f"{request} -> {type(exc).__name__}: {exc}")
                        return
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code >= 500:
                        failures.append(f"{request} -> {response.status_code} {response.text[:200]}")

                try:
                    run()
                except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                    assert mode == GenerationMode.NEGATIVE, operation.label
            assert time.time() - started < BUDGET_S, f"fuzzing ran past {BUDGET_S} s after {calls} requests"
        assert client.get("/api/health").status_code == 200  # still answering
    assert not failures, f"{len(failures)} of {calls} requests answered 5xx:\n" + "\n".join(failures[:20])
    assert calls >= 5 * len(operations)
    print(f"{calls} requests over {len(operations)} operations in {time.time() - started:.1f} s: {sorted(statuses.items())}")
    with sqlite3.connect(project_dir / "hrdv2.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
