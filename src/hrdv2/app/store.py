"""The app's persistent state: an embedded SQLite database plus files under the project folder.

Layout of ``project_dir``::

    hrdv2.sqlite                 projects, images, classes, strokes (one row per stroke)
    pixels/<sha256>.npy          decoded pages, content-addressed (uploads and --data images)
    uploads/<sha256>.<ext>       uploaded originals, as received
    cache/features/              feature cache (by content hash; survives restarts)
    projects/<id>/model.skops    the last trained model
    projects/<id>/predictions/   label maps and probabilities per image

Each stroke is committed as soon as it arrives, so a closed tab or a restarted server loses
nothing. Undo marks a stroke ``undone``; a new stroke drops the undone ones (redo history).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.errors import HRDv2Error
from hrdv2.io import write_npy

from .schemas import MAX_CLASSES, CrfSettings, FeatureSettings

SCHEMA_VERSION = 2
# columns added after version 1: (table, column, declaration); added to older databases on open
_ADDED_COLUMNS = [
    ("projects", "crf", "TEXT NOT NULL DEFAULT '{}'"),
    ("projects", "model_source", "TEXT"),
    ("strokes", "runs", "TEXT"),
]
# strokes that label pixels (what training learns from): brush lines, filled polygons, imported layers
LABELLING_TOOLS = ("brush", "polygon", "labels")
DEFAULT_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, features TEXT NOT NULL, classifier TEXT NOT NULL,
    auto_train INTEGER NOT NULL DEFAULT 0, model_version INTEGER NOT NULL DEFAULT 0,
    has_model INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL, source TEXT NOT NULL, origin TEXT NOT NULL, n_pages INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images(
    id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE, page INTEGER NOT NULL,
    width INTEGER NOT NULL, height INTEGER NOT NULL, dtype TEXT NOT NULL, channels INTEGER NOT NULL,
    sha TEXT NOT NULL, prediction_version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS classes(
    id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL, color TEXT NOT NULL, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS strokes(
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    tool TEXT NOT NULL, class_id INTEGER REFERENCES classes(id) ON DELETE CASCADE, radius REAL NOT NULL,
    points TEXT NOT NULL, undone INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS strokes_image ON strokes(image_id, undone);
CREATE INDEX IF NOT EXISTS images_project ON images(project_id);
"""


class NotFound(LookupError):
    """An id that names no project / image / class in this store (answered with 404)."""


class TooManyClasses(HRDv2Error):
    """A class beyond the 255 that fit the 8-bit label images (answered with 422)."""


def array_sha(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


class Store:
    """Thread-safe access to the database and the files beside it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("pixels", "uploads", "cache/features", "projects"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "hrdv2.sqlite", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._pixels: OrderedDict[str, np.ndarray] = OrderedDict()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers -----------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            with self._db:
                cur = self._db.execute(sql, args)
                return int(cur.lastrowid or 0) if sql.lstrip().upper().startswith("INSERT") else cur.rowcount

    def project_path(self, project_id: int) -> Path:
        path = self.root / "projects" / str(int(project_id))
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- projects ----------------------------------------------------------------------------
    def _project_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        n = self._one("SELECT COUNT(*) FROM images WHERE project_id=?", (row["id"],))[0]
        return {
            "id": row["id"],
            "name": row["name"],
            "features": FeatureSettings(**json.loads(row["features"])),
            "classifier": row["classifier"],
            "auto_train": bool(row["auto_train"]),
            "crf": CrfSettings(**json.loads(row["crf"] or "{}")),
            "model_source": row["model_source"],
            "model_version": row["model_version"],
            "has_model": bool(row["has_model"]),
            "n_images": n,
            "has_phase_fractions": (self.root / "projects" / str(row["id"]) / "phase_fractions.csv").is_file(),
        }

    def create_project(self, name: str, classifier: str = "logistic") -> dict[str, Any]:
        pid = self._write(
            "INSERT INTO projects(name, features, classifier, created) VALUES (?,?,?,?)",
            (name, FeatureSettings().model_dump_json(), classifier, time.time()),
        )
        return self.get_project(pid)

    def list_projects(self) -> list[dict[str, Any]]:
        return [self._project_dict(r) for r in self._all("SELECT * FROM projects ORDER BY id")]

    def get_project(self, project_id: int) -> dict[str, Any]:
        row = self._one("SELECT * FROM projects WHERE id=?", (project_id,))
        if row is None:
            raise NotFound(f"project {project_id} does not exist")
        return self._project_dict(row)

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        self.get_project(project_id)
        columns = {"name": str, "features": lambda f: f.model_dump_json(), "classifier": str, "auto_train": int,
                   "crf": lambda c: c.model_dump_json(), "model_source": str}
        for key, value in fields.items():
            if value is not None:
                self._write(f"UPDATE projects SET {key}=? WHERE id=?", (columns[key](value), project_id))
        return self.get_project(project_id)

    def bump_model_version(self, project_id: int, has_model: bool, source: str | None = None) -> int:
        """A new model (``has_model``) or the end of the old one (a class was deleted): every stored
        prediction becomes stale either way. ``source``: the file a loaded model came from."""
        self._write("UPDATE projects SET model_version=model_version+1, has_model=?, model_source=? WHERE id=?",
                    (int(has_model), source, project_id))
        return self.get_project(project_id)["model_version"]

    def delete_project(self, project_id: int) -> None:
        """Delete a project's rows (its files, images, classes and strokes go with it)."""
        self.get_project(project_id)
        self._write("DELETE FROM projects WHERE id=?", (project_id,))

    # -- images ------------------------------------------------------------------------------
    def _image_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        keys = ("id", "project_id", "file_id", "page", "width", "height", "dtype", "channels", "prediction_version")
        out = {k: row[k] for k in keys}
        out.update(name=row["fname"], n_pages=row["n_pages"], source=row["source"], sha=row["sha"])
        return out

    _IMAGE_SQL = "SELECT images.*, files.name AS fname, files.n_pages, files.source FROM images JOIN files ON files.id=images.file_id"

    def add_file(self, project_id: int, name: str, source: str, origin: str, pages: list[np.ndarray]) -> list[dict]:
        """Store the decoded pages of one file (content-addressed) and register them as images."""
        self.get_project(project_id)
        shas = []
        for page in pages:
            sha = array_sha(page)
            target = self.root / "pixels" / f"{sha}.npy"
            if not target.exists():
                write_npy(target, page)
            shas.append(sha)
        with self._lock:
            with self._db:
                fid = self._db.execute(
                    "INSERT INTO files(project_id, name, source, origin, n_pages, created) VALUES (?,?,?,?,?,?)",
                    (project_id, name, source, origin, len(pages), time.time()),
                ).lastrowid
                for i, (page, sha) in enumerate(zip(pages, shas)):
                    self._db.execute(
                        "INSERT INTO images(project_id, file_id, page, width, height, dtype, channels, sha) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (project_id, fid, i, page.shape[1], page.shape[0], str(page.dtype), 1 if page.ndim == 2 else page.shape[2], sha),
                    )
        return [self._image_dict(r) for r in self._all(self._IMAGE_SQL + " WHERE file_id=? ORDER BY page", (fid,))]

    def list_images(self, project_id: int) -> list[dict[str, Any]]:
        self.get_project(project_id)
        rows = self._all(self._IMAGE_SQL + " WHERE images.project_id=? ORDER BY images.file_id, images.page", (project_id,))
        return [self._image_dict(r) for r in rows]

    def get_image(self, image_id: int) -> dict[str, Any]:
        row = self._one(self._IMAGE_SQL + " WHERE images.id=?", (image_id,))
        if row is None:
            raise NotFound(f"image {image_id} does not exist")
        return self._image_dict(row)

    def delete_file(self, image_id: int) -> list[dict[str, Any]]:
        """Delete the file an image is a page of: all its pages and their strokes (nothing of any
        other image). Returns the deleted images; their pixels stay if another image shares them."""
        image = self.get_image(image_id)
        pages = self._all(self._IMAGE_SQL + " WHERE file_id=?", (image["file_id"],))
        gone = [self._image_dict(r) for r in pages]
        self._write("DELETE FROM files WHERE id=?", (image["file_id"],))
        for im in gone:
            if self._one("SELECT COUNT(*) FROM images WHERE sha=?", (im["sha"],))[0] == 0:
                for suffix in (".npy", ".display.png", ".thumb.png"):
                    (self.root / "pixels" / f"{im['sha']}{suffix}").unlink(missing_ok=True)
                with self._lock:
                    self._pixels.pop(im["sha"], None)
        return gone

    def pixels(self, image: dict[str, Any]) -> np.ndarray:
        """The decoded page (read-only array), kept in a small in-memory LRU."""
        sha = image["sha"]
        with self._lock:
            if sha in self._pixels:
                self._pixels.move_to_end(sha)
                return self._pixels[sha]
        arr = np.load(self.root / "pixels" / f"{sha}.npy", allow_pickle=False)
        arr.setflags(write=False)
        with self._lock:
            self._pixels[sha] = arr
            while len(self._pixels) > 8:
                self._pixels.popitem(last=False)
        return arr

    def set_prediction_version(self, image_id: int, version: int) -> bool:
        """Record that the stored prediction is of model ``version``; refused (False) when that
        model is no longer the project's current one (retrained, or retired by a class deletion)."""
        return self._write(
            "UPDATE images SET prediction_version=? WHERE id=? AND "
            "?=(SELECT model_version FROM projects WHERE projects.id=images.project_id)",
            (version, image_id, version),
        ) > 0

    # -- classes -----------------------------------------------------------------------------
    def list_classes(self, project_id: int) -> list[dict[str, Any]]:
        self.get_project(project_id)
        rows = self._all("SELECT * FROM classes WHERE project_id=? ORDER BY position, id", (project_id,))
        return [
            {"id": r["id"], "project_id": r["project_id"], "name": r["name"], "color": r["color"], "value": i + 1}
            for i, r in enumerate(rows)
        ]

    def get_class(self, class_id: int) -> dict[str, Any]:
        row = self._one("SELECT project_id FROM classes WHERE id=?", (class_id,))
        if row is None:
            raise NotFound(f"class {class_id} does not exist")
        return next(c for c in self.list_classes(row["project_id"]) if c["id"] == class_id)

    def add_class(self, project_id: int, name: str, color: str) -> dict[str, Any]:
        """Append a class; refuses the 256th (class values must fit the 8-bit label images)."""
        with self._lock:  # count and insert as one step, so parallel requests cannot pass the cap
            self.get_project(project_id)
            n, pos = self._one("SELECT COUNT(*), COALESCE(MAX(position), 0) + 1 FROM classes WHERE project_id=?",
                               (project_id,))
            if n >= MAX_CLASSES:
                raise TooManyClasses(
                    f"project {project_id} already has {n} classes, the most an 8-bit label image can hold "
                    f"(values 1..{MAX_CLASSES}); delete a class before adding another."
                )
            cid = self._write("INSERT INTO classes(project_id, name, color, position) VALUES (?,?,?,?)",
                              (project_id, name, color, pos))
        return self.get_class(cid)

    def update_class(self, class_id: int, name: str | None, color: str | None) -> dict[str, Any]:
        self.get_class(class_id)
        if name is not None:
            self._write("UPDATE classes SET name=? WHERE id=?", (name, class_id))
        if color is not None:
            self._write("UPDATE classes SET color=? WHERE id=?", (color, class_id))
        return self.get_class(class_id)

    def reorder_classes(self, project_id: int, class_ids: list[int]) -> bool:
        """New class order (values 1..K follow it). The model learnt the old values, so like a
        deletion it is retired and every prediction marked absent; strokes keep their classes.
        Returns whether the order changed."""
        with self._lock:
            now = [c["id"] for c in self.list_classes(project_id)]
            if sorted(now) != sorted(class_ids) or len(set(class_ids)) != len(class_ids):
                raise HRDv2Error(f"class order {class_ids} must list each class of project {project_id} once: {now}.")
            if now == class_ids:
                return False
            with self._db:
                for pos, cid in enumerate(class_ids, start=1):
                    self._db.execute("UPDATE classes SET position=? WHERE id=?", (pos, cid))
                self._db.execute("UPDATE images SET prediction_version=0 WHERE project_id=?", (project_id,))
                self._db.execute("UPDATE projects SET model_version=model_version+1, has_model=0, model_source=NULL "
                                 "WHERE id=?", (project_id,))
        return True

    def delete_class(self, class_id: int) -> int:
        """Delete a class and every stroke painted with it; returns the number of strokes removed.

        Class values above it shift down, so in the same transaction the model is retired
        (``model_version`` + 1, no model) and every stored prediction of the project is marked
        absent: a label image with the old values must never be served again.
        """
        project_id = self.get_class(class_id)["project_id"]
        with self._lock:
            with self._db:
                n = self._db.execute("DELETE FROM strokes WHERE class_id=?", (class_id,)).rowcount
                self._db.execute("DELETE FROM classes WHERE id=?", (class_id,))
                self._db.execute("UPDATE images SET prediction_version=0 WHERE project_id=?", (project_id,))
                self._db.execute("UPDATE projects SET model_version=model_version+1, has_model=0, model_source=NULL WHERE id=?",
                                 (project_id,))
        return n

    # -- strokes -----------------------------------------------------------------------------
    @staticmethod
    def _stroke_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "image_id": row["image_id"],
            "tool": row["tool"],
            "class_id": row["class_id"],
            "radius": row["radius"],
            "points": [tuple(p) for p in json.loads(row["points"])],
            "runs": [tuple(r) for r in json.loads(row["runs"])] if row["runs"] else None,
        }

    def add_label_layer(self, image_id: int, runs: list[list[int]]) -> dict[str, Any]:
        """An imported label image as one undoable stroke: (class_id, row, x0, x1) runs."""
        with self._lock:
            with self._db:
                self._db.execute("DELETE FROM strokes WHERE image_id=? AND undone=1", (image_id,))
                sid = self._db.execute(
                    "INSERT INTO strokes(image_id, tool, class_id, radius, points, runs, created) VALUES (?,?,?,?,?,?,?)",
                    (image_id, "labels", None, 0.0, "[]", json.dumps(runs, separators=(",", ":")), time.time()),
                ).lastrowid
        return self._stroke_dict(self._one("SELECT * FROM strokes WHERE id=?", (sid,)))

    def add_stroke(self, image_id: int, tool: str, class_id: int | None, radius: float, points: list) -> dict[str, Any]:
        with self._lock:
            with self._db:
                self._db.execute("DELETE FROM strokes WHERE image_id=? AND undone=1", (image_id,))
                sid = self._db.execute(
                    "INSERT INTO strokes(image_id, tool, class_id, radius, points, created) VALUES (?,?,?,?,?,?)",
                    (image_id, tool, class_id, float(radius), json.dumps([[round(x, 2), round(y, 2)] for x, y in points]), time.time()),
                ).lastrowid
        return self._stroke_dict(self._one("SELECT * FROM strokes WHERE id=?", (sid,)))

    def list_strokes(self, image_id: int) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM strokes WHERE image_id=? AND undone=0 ORDER BY id", (image_id,))
        return [self._stroke_dict(r) for r in rows]

    def undo(self, image_id: int) -> bool:
        row = self._one("SELECT MAX(id) FROM strokes WHERE image_id=? AND undone=0", (image_id,))
        if row[0] is None:
            return False
        self._write("UPDATE strokes SET undone=1 WHERE id=?", (row[0],))
        return True

    def redo(self, image_id: int) -> bool:
        row = self._one("SELECT MIN(id) FROM strokes WHERE image_id=? AND undone=1", (image_id,))
        if row[0] is None:
            return False
        self._write("UPDATE strokes SET undone=0 WHERE id=?", (row[0],))
        return True

    def images_with_strokes(self, project_id: int) -> list[int]:
        rows = self._all(
            "SELECT DISTINCT images.id FROM images JOIN strokes ON strokes.image_id=images.id "
            f"WHERE images.project_id=? AND strokes.undone=0 AND strokes.tool IN {LABELLING_TOOLS} ORDER BY images.id",
            (project_id,),
        )
        return [r[0] for r in rows]
