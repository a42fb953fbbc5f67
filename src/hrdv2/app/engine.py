"""The app's compute side: strokes to scribble maps, features (disk cache + memory LRU),
training, prediction and apply-to-all. Everything slow here runs inside a background job.

Class ids in scribbles, label images and probability channels are the class *values* 1..K
(the class's rank in the project's class list), so the files the app writes match the CLI's.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from hrdv2.errors import HRDv2Error, ModelFileError, ShapeError, WeightsUnavailableError
from hrdv2.io import atomic_path, write_npy, write_text_atomic

from .jobs import Job
from .raster import rasterise
from .schemas import BackboneOption, FeatureSettings
from .store import Store


def weights_status(name: str, failed_loads: dict[str, str]) -> BackboneOption:
    """Whether a backbone's pretrained weights are on this machine (no download is attempted here:
    listing options must not fetch gigabytes). ``failed_loads``: reasons of loads that failed at
    training time (the engine's), reported too."""
    from hrdv2.backbones.registry import resolve
    from hrdv2.backbones.weights import how_to_supply

    import torch

    spec = resolve(name)
    if name in failed_loads:
        return BackboneOption(name=name, available=False, reason=failed_loads[name])
    if spec.filename and (Path(torch.hub.get_dir()) / "checkpoints" / spec.filename).is_file():
        return BackboneOption(name=name, available=True)
    where = Path(torch.hub.get_dir()) / "checkpoints"
    return BackboneOption(
        name=name, available=False, reason=f"{spec.filename or spec.timm_name} is not in {where}. {how_to_supply(spec)}"
    )


def feature_config(settings: FeatureSettings, device: str = "cpu"):
    """The library's FeatureConfig for the page's feature settings, computed on ``device``
    (raises ConfigError, a 422, for settings the library refuses, e.g. an unknown filter)."""
    from hrdv2.features.sets import FeatureConfig

    classical = {"filters": settings.filters, "sigmas": tuple(settings.sigmas)}
    if settings.kind == "classical":
        return FeatureConfig(kind="classical", device=device, **classical)
    deep = {"backbone": settings.backbone, "stride": settings.stride, "shifts": tuple(settings.shifts),
            "flips": settings.flips, "pca_components": settings.pca_components}
    return FeatureConfig(kind=settings.kind, device=device, **deep, **(classical if settings.kind == "hybrid" else {}))


class Engine:
    """Features, models and predictions for all projects of one store."""

    def __init__(self, store: Store, memory_bytes: int = 1_500_000_000, device: str = "cpu", large_side: int = 4096):
        from hrdv2.engine import BackboneCache

        self.store = store
        self.device = device
        self.large_side = large_side  # images with a longer side are tiled, trained on and predicted block-wise
        self.backbones = BackboneCache()  # every project's feature engines share the loaded backbones
        self.failed_loads: dict[str, str] = {}
        self._cache = None
        self._mem: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._mem_bytes = memory_bytes
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._models: dict[int, tuple[int, Any]] = {}
        self._saving: dict[int, threading.Thread] = {}
        self._save_lock = threading.Lock()
        self._saving_lock = threading.Lock()  # a save is published only once started (joinable)
        self._predictions_lock = threading.Lock()

    # -- features ----------------------------------------------------------------------------
    @property
    def cache(self):
        """The on-disk feature cache (content hash + config key), shared by all projects."""
        if self._cache is None:
            from hrdv2.features.cache import FeatureCache

            self._cache = FeatureCache(self.store.root / "cache" / "features")
        return self._cache

    def weights_status(self, name: str) -> BackboneOption:
        return weights_status(name, self.failed_loads)

    def project_config(self, project_id: int):
        """The FeatureConfig of the project's current settings (what the next training uses)."""
        return feature_config(self.store.get_project(project_id)["features"], self.device_for(project_id))

    def device_for(self, project_id: int) -> str:
        """The project's device setting, or the server's (``--device``) for "server"."""
        chosen = self.store.get_project(project_id)["features"].device
        return self.device if chosen == "server" else chosen

    def features(self, image: dict, config: Any, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Features of ``image`` under ``config`` (a FeatureConfig: the project's for training, the
        model's own for prediction), via the memory LRU and the disk cache."""
        from hrdv2.engine import FeatureEngine

        config = config.replace(device=self.device_for(image["project_id"]))
        key = (image["sha"], config.key())
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                return self._mem[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # a second request for the same features waits for the first
            with self._lock:
                if key in self._mem:
                    return self._mem[key]
            try:
                pixels = self.store.pixels(image)
                engine = FeatureEngine(config, backbones=self.backbones)
                feats = self.cache.get_or_compute(pixels, config, lambda: engine.compute(pixels, progress))
            except WeightsUnavailableError as exc:
                self.failed_loads[config.backbone] = str(exc)
                raise
            feats = np.asarray(feats, dtype=np.float32)
            with self._lock:
                self._mem[key] = feats
                while len(self._mem) > 1 and sum(a.nbytes for a in self._mem.values()) > self._mem_bytes:
                    self._mem.popitem(last=False)
        return feats

    def features_job(self, job: Job, image_id: int) -> dict:
        image = self.store.get_image(image_id)
        config = self.project_config(image["project_id"])
        job.report(0, 1, stage=f"features for {image['name']}")
        feats = self.features(image, config, job.progress_callback(f"features for {image['name']}"))
        return {"image_id": image_id, "n_features": int(feats.shape[-1])}

    # -- scribbles ---------------------------------------------------------------------------
    def scribbles(self, image: dict) -> np.ndarray:
        values = {c["id"]: c["value"] for c in self.store.list_classes(image["project_id"])}
        return rasterise(self.store.list_strokes(image["id"]), (image["height"], image["width"]), values)

    # -- models ------------------------------------------------------------------------------
    def model_path(self, project_id: int) -> Path:
        return self.store.project_path(project_id) / "model.skops"

    def model(self, project_id: int):
        """The project's current model: from memory, else from its skops file (trusted-types check)."""
        return self.versioned_model(project_id)[1]

    def versioned_model(self, project_id: int) -> tuple[int, Any]:
        """(version, model) read together: a caller that tags results with a version must take
        both from here (reading the version separately let a CRF change in between tag the old
        model's prediction with the new version, which then never got redone)."""
        project = self.store.get_project(project_id)
        version = project["model_version"]
        if not project["has_model"]:
            raise HRDv2Error("no trained model for the current classes and feature settings: paint strokes of at least "
                             "two classes and press Train.")
        cached = self._models.get(project_id)
        if cached and cached[0] == version:
            return version, cached[1]
        path = self.model_path(project_id)
        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file() or json.loads(meta.read_text())["version"] != version:
            raise HRDv2Error(f"{path}: the model file is missing or older than the last training; press Train again.")
        from hrdv2.segmentation import Segmenter

        try:
            seg = Segmenter.load(path)
        except HRDv2Error:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path}: cannot be loaded ({exc}); press Train to build a new model.") from exc
        self._models[project_id] = (version, seg)
        return version, seg

    def _save_in_background(self, project_id: int, version: int, seg: Any) -> None:
        """Write the skops file off the critical path (the overlay should not wait ~0.5 s for it).
        Saves are serialised; a save superseded by a newer model is skipped."""

        def work() -> None:
            with self._save_lock:
                if self._models.get(project_id, (None,))[0] != version:
                    return
                seg.save(self.model_path(project_id))  # atomic: temp file + rename
                write_text_atomic(self.model_path(project_id).with_suffix(".json"), json.dumps({"version": version}))

        thread = threading.Thread(target=work, name=f"hrdv2-save-{project_id}")
        with self._saving_lock:  # started before it is published: wait_saved never joins an unstarted thread
            thread.start()
            self._saving[project_id] = thread

    def wait_saved(self, project_id: int | None = None) -> None:
        """Block until the model file(s) being written are on disk."""
        with self._saving_lock:
            threads = list(self._saving.values()) if project_id is None else [self._saving.get(project_id)]
        for t in threads:
            if t is not None:
                t.join()

    def train_job(self, job: Job, project_id: int, image_id: int | None) -> dict:
        from hrdv2.segmentation import Segmenter

        project = self.store.get_project(project_id)
        classes = self.store.list_classes(project_id)
        labelled = self.store.images_with_strokes(project_id)
        if not labelled:
            raise HRDv2Error("nothing to learn from: paint strokes of at least two classes, then press Train.")
        todo = labelled + ([image_id] if image_id is not None and image_id not in labelled else [])
        n = len(todo) + 1
        config = feature_config(project["features"], self.device_for(project_id))
        images, scribbles, feats = [], [], []
        from .large import is_large, scribbled_blocks

        for k, iid in enumerate(todo):
            image = self.store.get_image(iid)
            stage = f"features {k + 1}/{len(todo)}: {image['name']}"
            job.report(k / n, stage=stage)
            if is_large(image, self.large_side):  # only the blocks holding scribbles are featurised
                if iid in labelled:
                    for px, sc, f in scribbled_blocks(config, self.backbones, self.store.pixels(image),
                                                      self.scribbles(image), job.progress_callback(stage, k / n, 1 / n)):
                        images.append(px), scribbles.append(sc), feats.append(f)
                continue
            f = self.features(image, config, job.progress_callback(stage, k / n, 1 / n))
            if iid in labelled:
                images.append(self.store.pixels(image))
                scribbles.append(self.scribbles(image))
                feats.append(f)
        present = sorted(set(np.unique(np.concatenate([s[s > 0] for s in scribbles]))))
        if len(present) < 2:
            have = [c["name"] for c in classes if c["value"] in present]
            raise HRDv2Error(f"strokes of at least two classes are needed to train; only {have or 'none'} painted so far.")
        job.report(len(todo) / n, stage="training")
        seg = Segmenter(
            features=config,
            classifier=project["classifier"],
            class_names=[c["name"] for c in classes],
            random_state=0,
            backbones=self.backbones,
        )
        seg.fit(images, scribbles, feats)
        job.report(len(todo) / n + 0.5 / n, stage="saving model")
        with self._predictions_lock:  # a class deleted meanwhile shifted the values this model learnt
            now = [c["id"] for c in self.store.list_classes(project_id)]
            if now[:len(classes)] != [c["id"] for c in classes]:
                raise HRDv2Error("a class was deleted while training; press Train again.")
            if self.project_config(project_id).key() != config.key():
                raise HRDv2Error("the feature settings changed while training; press Train again.")
            crf = self.store.get_project(project_id)["crf"]  # as set now (a CRF change re-predicts only)
            seg.crf, seg.crf_params = crf.enabled, crf.params()
            version = self.store.bump_model_version(project_id, has_model=True)
        self._models[project_id] = (version, seg)
        self._save_in_background(project_id, version, seg)
        note = None
        if image_id is not None:
            job.report(len(todo) / n + 0.75 / n, stage="predicting")
            try:
                self.predict(self.store.get_image(image_id), seg, version)
            except ShapeError as exc:  # the model is fine; this image does not fit it (grey vs RGB)
                image_id, note = None, str(exc)
        return {"model_version": version, "image_id": image_id, "classes": [int(v) for v in present], "note": note}

    # -- prediction --------------------------------------------------------------------------
    def prediction_paths(self, image: dict) -> tuple[Path, Path]:
        folder = self.store.project_path(image["project_id"]) / "predictions"
        return folder / f"{image['id']}.labels.png", folder / f"{image['id']}.proba.npy"

    def predict(self, image: dict, seg: Any, version: int, progress: Callable | None = None) -> np.ndarray:
        """Predict one image, store labels (uint8 PNG) and probabilities (float16 .npy); return labels.

        Features come from the *model's* own config, never from the project's current settings.
        A large image is predicted block-wise (bounded memory; see ``large``)."""
        from .large import is_large

        if is_large(image, self.large_side):
            return self._predict_large(image, seg, version, progress)
        feats = self.features(image, seg.compute_config, progress)
        n_classes = max(len(self.store.list_classes(image["project_id"])), 1)
        proba_model = np.asarray(seg.predict_proba(self.store.pixels(image), features=feats), dtype=np.float32)
        values = [int(v) for v in np.asarray(seg.classes_).ravel()]
        proba = np.zeros((image["height"], image["width"], max(n_classes, max(values))), np.float32)
        for col, value in enumerate(values):
            proba[..., value - 1] = proba_model[..., col]
        labels = (np.asarray(values, np.uint8)[np.argmax(proba_model, axis=-1)]).astype(np.uint8)
        label_path, proba_path = self.prediction_paths(image)
        with self._predictions_lock:  # a retired model's late result must not overwrite a newer one
            if self.store.get_project(image["project_id"])["model_version"] != version:
                return labels
            with atomic_path(label_path) as tmp:  # fast PNG: this write sits between stroke and overlay
                Image.fromarray(labels).save(tmp, format="PNG", compress_level=1)
            write_npy(proba_path, proba.astype(np.float16))
            self.store.set_prediction_version(image["id"], version)
        return labels

    def _predict_large(self, image: dict, seg: Any, version: int, progress: Callable | None) -> np.ndarray:
        from .large import predict_blockwise

        if seg.compute_config.uses_deep or seg.backbones is None:
            seg.backbones = self.backbones
        n_classes = max(len(self.store.list_classes(image["project_id"])), 1)
        label_path, _ = self.prediction_paths(image)
        staging = label_path.parent / ".large"
        labels = predict_blockwise(seg, self.store.pixels(image), staging, image["id"], n_classes, progress)
        with self._predictions_lock:  # a retired model's late result must not overwrite a newer one
            if self.store.get_project(image["project_id"])["model_version"] != version:
                return labels
            for name in (f"{image['id']}.labels.zarr", f"{image['id']}.proba.npy"):
                target = label_path.parent / name
                if target.is_dir():
                    import shutil

                    shutil.rmtree(target)
                os.replace(staging / name, target)
            with atomic_path(label_path) as tmp:
                Image.fromarray(labels).save(tmp, format="PNG", compress_level=1)
            self.store.set_prediction_version(image["id"], version)
        return labels

    def update_features(self, project_id: int, settings: FeatureSettings) -> bool:
        """New feature settings retire the model trained under the old ones (and its predictions):
        a model is never applied to features it was not trained on. Returns whether they changed."""
        with self._predictions_lock:
            before = self.store.get_project(project_id)
            self.store.update_project(project_id, features=settings)
            if feature_config(before["features"]).key() == feature_config(settings).key():
                return False  # e.g. a stride chosen for classical features: the features are the same
            if before["has_model"] or before["model_version"]:
                self.store.bump_model_version(project_id, has_model=False)
                self._models.pop(project_id, None)
                self.drop_predictions(project_id)
            return True

    def drop_predictions(self, project_id: int) -> None:
        """Delete every stored prediction file and the phase-fraction CSV of a project."""
        import shutil

        folder = self.store.project_path(project_id)
        for path in [*(folder / "predictions").glob("*"), folder / "phase_fractions.csv"]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def update_crf(self, project_id: int, crf: Any) -> bool:
        """New CRF settings: the model is kept (the CRF only refines its probabilities) but becomes
        a new model version carrying them, so every prediction is redone with the new clean-up."""
        with self._predictions_lock:
            before = self.store.get_project(project_id)
            if before["crf"] == crf:
                return False
            self.store.update_project(project_id, crf=crf)
            if not before["has_model"]:
                return True
            seg = copy.copy(self.model(project_id))
            seg.crf, seg.crf_params = crf.enabled, crf.params()
            version = self.store.bump_model_version(project_id, has_model=True, source=before["model_source"])
            self._models[project_id] = (version, seg)
        self._save_in_background(project_id, version, seg)
        return True

    def install(self, project_id: int, seg: Any, source: str | None, before: Callable[[], None] | None = None) -> int:
        """Make ``seg`` the project's current model (a new version); ``before`` runs first under the
        same lock (settings that must change with it)."""
        with self._predictions_lock:
            if before is not None:
                before()
            version = self.store.bump_model_version(project_id, has_model=True, source=source)
            self._models[project_id] = (version, seg)
        self._save_in_background(project_id, version, seg)
        return version

    def forget(self, project_id: int) -> None:
        """Drop what the engine holds of a deleted project."""
        self.wait_saved(project_id)
        self._models.pop(project_id, None)
        with self._saving_lock:
            self._saving.pop(project_id, None)

    def delete_class(self, class_id: int) -> int:
        """Delete a class with its strokes, retire the model and drop every stored prediction and
        the phase-fraction CSV of its project (their class values and columns no longer match)."""
        project_id = self.store.get_class(class_id)["project_id"]
        with self._predictions_lock:
            removed = self.store.delete_class(class_id)  # marks the predictions absent first
            self._models.pop(project_id, None)
            self.drop_predictions(project_id)
        return removed

    def reorder_classes(self, project_id: int, class_ids: list[int]) -> bool:
        """New class order: values shift, so the model and every prediction are retired (as on delete)."""
        with self._predictions_lock:
            changed = self.store.reorder_classes(project_id, class_ids)
            if changed:
                self._models.pop(project_id, None)
                self.drop_predictions(project_id)
        return changed

    def predict_job(self, job: Job, image_id: int) -> dict:
        image = self.store.get_image(image_id)
        version, seg = self.versioned_model(image["project_id"])
        self.predict(image, seg, version, job.progress_callback(f"features for {image['name']}", 0, 0.8))
        return {"image_id": image_id, "model_version": version}

    def apply_all_job(self, job: Job, project_id: int) -> dict:
        version, seg = self.versioned_model(project_id)
        images = self.store.list_images(project_id)
        classes = self.store.list_classes(project_id)
        rows, skipped = [], []
        for k, image in enumerate(images):
            stage = f"image {k + 1}/{len(images)}: {image['name']}" + (f" p{image['page'] + 1}" if image["n_pages"] > 1 else "")
            job.report(k, len(images), stage=stage)
            try:
                labels = self.predict(image, seg, version, job.progress_callback(stage, k, 0.8))
            except ShapeError as exc:  # e.g. an RGB image in a project trained on grey ones
                skipped.append({"image_id": image["id"], "name": image["name"], "reason": str(exc)})
                continue
            counts = np.bincount(labels.ravel(), minlength=len(classes) + 1)
            rows.append([image["name"], image["page"]] + [counts[c["value"]] / labels.size for c in classes])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "page"] + [c["name"] for c in classes])  # the columns `hrdv2 apply` writes
        for row in rows:
            writer.writerow(row[:2] + [f"{v:.6f}" for v in row[2:]])
        with self._predictions_lock:  # columns and values of a retired model must not be written
            if self.store.get_project(project_id)["model_version"] != version:
                raise HRDv2Error("the model changed while applying it (retrained, or a class was deleted); "
                                 "press 'Apply to all' again.")
            write_text_atomic(self.store.project_path(project_id) / "phase_fractions.csv", buf.getvalue())
        return {"n_images": len(rows), "model_version": version, "skipped": skipped}
