"""The widget's work, without Qt: settings -> FeatureConfig, cached features, train, predict.

Everything here runs in napari thread workers (never on the GUI thread). Features are cached
in memory per page content and feature-config key, so in live mode a new stroke costs only a
retrain plus a predict; training and prediction go through :class:`hrdv2.segmentation.Segmenter`
and model files through its safe loader, exactly as ``hrdv2 train`` / ``apply`` and the web app.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrdv2.engine import BackboneCache
from hrdv2.errors import ConfigError, HRDv2Error, WeightsUnavailableError
from hrdv2.features.sets import FeatureConfig
from hrdv2.napari.layers import ImagePages, phase_fractions, scribbled_pages
from hrdv2.segmentation import Segmenter

Message = Callable[[str], None]
DEFAULT_CACHE_BYTES = 2 << 30  # in-memory features kept for re-training (a 512x512 grey page: ~38 MB)


@dataclass
class Settings:
    """What the widget's controls say; ``config()`` turns it into the library's FeatureConfig."""

    kind: str = "classical"
    backbone: str = "dinov2_vits14"
    weights: str | None = None
    stride: int | None = None
    shifts: tuple[int, ...] = (1, 2)
    flips: bool = False
    classifier: str = "random_forest"
    crf: bool = False
    device: str = "cpu"
    class_names: list[str] = field(default_factory=list)

    def config(self) -> FeatureConfig:
        deep = {"backbone": self.backbone, "weights": self.weights or None, "stride": self.stride,
                "shifts": tuple(self.shifts), "flips": self.flips, "device": self.device}
        return FeatureConfig(kind=self.kind, **(deep if self.kind != "classical" else {}))


@dataclass
class Prediction:
    """Labels (and 1 - max probability) of the pages ``pages`` of an image."""

    pages: list[int]
    labels: list[np.ndarray]
    uncertainty: list[np.ndarray] | None


def keep_triton_out() -> None:
    """Make ``import triton`` fail (ImportError) in this napari process unless it is loaded already.

    torchvision imports torch._dynamo, which probes for triton; libtriton bundles LLVM, and loading
    it after an OpenGL driver that uses LLVM (Mesa llvmpipe on remote/virtual displays, radeonsi)
    crashes the whole viewer (segfault, reproduced with napari 0.9 on Xvfb). hrdv2 never uses
    triton (no torch.compile); torch treats it as absent and runs as usual."""
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]


class FeatureMemo:
    """Features of recently seen pages, keyed by page content and feature-config key (LRU by bytes)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._store: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def page_key(page: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{page.shape}{page.dtype}".encode())
        h.update(np.ascontiguousarray(page).data)
        return h.hexdigest()

    def get(self, seg: Segmenter, page: np.ndarray) -> np.ndarray:
        key = (self.page_key(page), seg.compute_config.key())
        with self._lock:
            if key in self._store:
                self._store.move_to_end(key)
                self.hits += 1
                return self._store[key]
        feats = seg.featurise(page)  # the model's own FeatureEngine: the one owner of featurisation
        with self._lock:
            self.misses += 1
            self._store[key] = feats
            while len(self._store) > 1 and sum(a.nbytes for a in self._store.values()) > self.max_bytes:
                self._store.popitem(last=False)
        return feats

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


class Session:
    """One widget's state: the backbone cache, the feature memo and the current model."""

    def __init__(self, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        keep_triton_out()
        self.backbones = BackboneCache()
        self.memo = FeatureMemo(cache_bytes)
        self.model: Segmenter | None = None

    def _segmenter(self, config: FeatureConfig, settings: Settings, names: list[str]) -> Segmenter:
        return Segmenter(config, classifier=settings.classifier, crf=settings.crf, class_names=names,
                         backbones=self.backbones)

    def train(self, image: ImagePages, scribbles: np.ndarray, settings: Settings,
              warn: Message | None = None) -> Segmenter:
        """Fit a new model on every page that carries strokes; deep features without weights fall
        back to classical ones (``warn`` gets the reason), as ``hrdv2 features`` does."""
        pages = scribbled_pages(scribbles, image)
        imgs = [image.page(z) for z in pages]
        scrs = [np.asarray(scribbles[z] if image.is_stack else scribbles) for z in pages]
        top = max(int(s.max()) for s in scrs)
        names = list(settings.class_names[:top]) + [f"class {c}" for c in range(len(settings.class_names) + 1, top + 1)]
        seg = self._segmenter(settings.config(), settings, names)
        try:
            feats = [self.memo.get(seg, im) for im in imgs]
        except WeightsUnavailableError as exc:
            if warn is not None:
                warn(f"deep features unavailable, using classical features instead (no weights needed): {exc}")
            seg = self._segmenter(FeatureConfig(kind="classical"), settings, names)
            feats = [self.memo.get(seg, im) for im in imgs]
        where = [f"'{image.name}' page {z}" if image.is_stack else f"'{image.name}'" for z in pages]
        seg.fit(imgs, [s.astype(np.int64) for s in scrs], feats, names=where)
        self.model = seg
        return seg

    def predict(self, image: ImagePages, pages: list[int], uncertainty: bool = False,
                model: Segmenter | None = None) -> Iterator[tuple[int, int, Prediction | None]]:
        """Yield (done, total, None) per page, then (total, total, Prediction)."""
        seg = model or self.model
        if seg is None:
            raise HRDv2Error("no model yet: paint strokes of two classes and press Train, or load a model file.")
        labels, unc = [], []
        lut = seg.classes_.astype(np.uint8)
        for i, z in enumerate(pages):
            page = image.page(z)
            probs = seg.predict_proba(page, features=self._features_for(seg, page))
            labels.append(lut[np.argmax(probs, axis=-1)])
            if uncertainty:
                unc.append((1.0 - probs.max(axis=-1)).astype(np.float32))
            yield i + 1, len(pages), None
        yield len(pages), len(pages), Prediction(list(pages), labels, unc if uncertainty else None)

    def _features_for(self, seg: Segmenter, page: np.ndarray) -> np.ndarray:
        from hrdv2.features.sets import n_image_channels

        if n_image_channels(page) != getattr(seg, "n_channels_", n_image_channels(page)):
            return None  # predict_proba refuses with its own one-line message before featurising
        return self.memo.get(seg, page)

    def load(self, path: str | Path) -> Segmenter:
        """A model file through the Segmenter's safe loader (refuses foreign types before building)."""
        seg = Segmenter.load(path)
        seg.backbones = self.backbones
        self.model = seg
        return seg

    def save(self, path: str | Path) -> Path:
        if self.model is None:
            raise HRDv2Error("no model to save yet: train one first (or load one).")
        return self.model.save(path)


def fractions_csv(rows: list[tuple[str, int, np.ndarray]], names: list[str]) -> str:
    """CSV text of phase fractions: one row per (image, page), one column per class (as `hrdv2 apply`)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "page"] + list(names))
    for name, page, fr in rows:
        w.writerow([name, page] + [f"{v:.6f}" for v in fr])
    return buf.getvalue()


def apply_folder(seg: Segmenter, folder: str | Path, out_dir: str | Path) -> Iterator[tuple[int, int, str]]:
    """Segment every image (and multi-page TIFF) in ``folder`` into ``out_dir``: NAME_labels.png (stacks:
    .tif) plus phase_fractions.csv, as `hrdv2 apply` writes them. Yields (done, total, problem) per file;
    a file that fails is reported (``problem``) and skipped."""
    from hrdv2.io import check_writable, expand_inputs, read_stack, write_image, write_text_atomic

    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder; choose the folder of images to segment.")
    check_writable(out_dir, "folder")
    files = expand_inputs([folder])
    if not files:
        raise HRDv2Error(f"{folder}: no images found (png, jpg, tif, bmp, webp).")
    out_dir.mkdir(parents=True, exist_ok=True)
    lut = seg.classes_.astype(np.uint8)
    classes = [int(c) for c in seg.classes_]
    rows = []
    for i, path in enumerate(files):
        problem = ""
        try:
            pages = read_stack(path)
            labels = [lut[np.argmax(seg.predict_proba(page), axis=-1)] for page in pages]
            multi = len(labels) > 1
            write_image(out_dir / f"{path.stem}_labels{'.tif' if multi else '.png'}",
                        np.stack(labels) if multi else labels[0], pages=multi)
            rows.extend((str(path), z, phase_fractions(lab, classes)) for z, lab in enumerate(labels))
        except HRDv2Error as exc:
            problem = f"{path.name}: {exc}"
        yield i + 1, len(files), problem
    names = [seg.class_names[c - 1] if c - 1 < len(seg.class_names) else f"class {c}" for c in classes]
    if rows:
        write_text_atomic(out_dir / "phase_fractions.csv", fractions_csv(rows, names))
