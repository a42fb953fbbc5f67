"""What a Dask worker keeps between tasks: the loaded model, the backbone, block contexts.

A task names what it needs with a small, picklable *spec* (:class:`ModelRef` for a trained
model, :class:`EngineSpec` for a feature config); the worker's :class:`WorkerState` turns the
spec into a loaded object once and keeps it, so a worker loads a model (and its backbone) once
per run, not once per task. The state lives on the worker through :class:`StatePlugin` (a
``distributed.WorkerPlugin``), never in a module global; outside a Dask worker (the threaded or
synchronous schedulers of a notebook) the caller owns a ``WorkerState`` and passes it in.

Model bytes travel once: the client scatters a :class:`ModelRef` (digest + file bytes) to every
worker with ``broadcast=True``, and each task receives that same object by reference.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distributed import WorkerPlugin

PLUGIN_NAME = "hrdv2-state"
MAX_CONTEXTS = 8  # block contexts (open reader + BlockFeatures + writers) kept per worker


@dataclass(frozen=True)
class ModelRef:
    """A trained model's file bytes and their digest (the cache key); ``crf`` and ``device``
    override the model's settings (runtime choices, as ``hrdv2 apply --crf/--device`` make them)."""

    digest: str
    data: bytes = field(repr=False)
    crf: bool | None = None
    device: str | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, crf: bool | None = None, device: str | None = None) -> "ModelRef":
        data = Path(path).read_bytes()
        return cls(hashlib.sha256(data).hexdigest(), data, crf, device)

    @classmethod
    def from_segmenter(cls, seg: Any) -> "ModelRef":
        """Serialise an in-memory Segmenter (through its own ``save``: the same allow-listed file)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = seg.save(Path(tmp) / "model.skops")
            return cls.from_file(path, crf=seg.crf, device=seg.features.device)

    @property
    def key(self) -> tuple:
        return ("model", self.digest, self.crf, self.device)

    def load(self, state: "WorkerState") -> Any:
        from hrdv2.segmentation import Segmenter

        with tempfile.TemporaryDirectory() as tmp:  # Segmenter.load reads (and validates) a file
            path = Path(tmp) / f"{self.digest[:16]}.skops"
            path.write_bytes(self.data)
            seg = Segmenter.load(path)
        seg.backbones = state.backbones
        if self.crf is not None:
            seg.crf = self.crf
        if self.device is not None and self.device != seg.features.device:
            seg.features = seg.features.replace(device=self.device)
        return seg


@dataclass(frozen=True)
class EngineSpec:
    """A feature config and ViT compute dtype: a worker builds one FeatureEngine per spec."""

    config: Any  # hrdv2.features.sets.FeatureConfig (a frozen dataclass)
    dtype: str = "float32"

    @property
    def key(self) -> tuple:
        return ("engine", self.config.key(), self.dtype)

    def load(self, state: "WorkerState") -> Any:
        from hrdv2.engine import FeatureEngine

        return FeatureEngine(self.config, backbones=state.backbones, dtype=self.dtype)


class WorkerState:
    """Loaded models / engines by spec key, one BackboneCache, and a bounded LRU of block contexts."""

    def __init__(self) -> None:
        from hrdv2.engine import BackboneCache

        self.backbones = BackboneCache()
        self._resources: dict[tuple, Any] = {}
        self._contexts: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many specs this worker has loaded (tests: once per model)

    def resolve(self, spec: ModelRef | EngineSpec) -> Any:
        """The Segmenter of a ModelRef / the FeatureEngine of an EngineSpec, loaded once."""
        with self._lock:
            if spec.key not in self._resources:
                self._resources[spec.key] = spec.load(self)
                self.loads += 1
            return self._resources[spec.key]

    def context(self, key: Any, build: Callable[[], Any]) -> Any:
        """A per-job object (reader, BlockFeatures, attached writers) built once, LRU-bounded."""
        with self._lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                return self._contexts[key]
            ctx = build()
            self._contexts[key] = ctx
            while len(self._contexts) > MAX_CONTEXTS:
                _, old = self._contexts.popitem(last=False)
                close = getattr(old, "close", None)
                if close is not None:
                    close()
            return ctx


class StatePlugin(WorkerPlugin):
    """Gives every worker (also those started later to replace a dead one) a WorkerState."""

    name = PLUGIN_NAME
    idempotent = True  # registering again (a second run on the same cluster) keeps the loaded models

    def setup(self, worker: Any) -> None:
        import warnings

        # scikit-learn notes that a daemonic worker runs forests with n_jobs=1: intended here (one
        # thread per worker process), so say nothing once per task
        warnings.filterwarnings("ignore", message="Inside a Dask worker with daemon=True", category=UserWarning)
        self.state = WorkerState()

    def teardown(self, worker: Any) -> None:
        self.state = None  # type: ignore[assignment]


def worker_state(local: WorkerState | None = None) -> WorkerState:
    """This worker's state (from its StatePlugin), or ``local`` when not running on a Dask worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        worker = None
    if worker is not None:
        plugin = worker.plugins.get(PLUGIN_NAME)
        if plugin is not None and getattr(plugin, "state", None) is not None:
            return plugin.state
    if local is not None:
        return local
    raise RuntimeError("hrdv2 task outside a worker with the hrdv2 StatePlugin; register it with "
                       "client.register_plugin(StatePlugin()) first.")
