"""The "hrdv2 segmentation" dock widget: paint scribbles, train, predict, save, apply.

All computing (features, training, prediction, folder runs) happens in napari thread workers;
the GUI thread only reads controls, copies the scribbles and writes results into layers. Every
problem ends up as one napari notification line (never a traceback), through :meth:`_fail`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
    QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from hrdv2.errors import HRDv2Error
from hrdv2.napari.classes import ClassTable
from hrdv2.napari.files import FileActions
from hrdv2.napari.layers import ImagePages, current_page, image_pages, label_array, phase_fractions
from hrdv2.napari.session import Prediction, Session, Settings
from hrdv2.segmentation import CLASSIFIERS

PREDICTION = "hrdv2 prediction"
UNCERTAINTY = "hrdv2 uncertainty"
BACKBONES = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_vits14_reg",
             "dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16")
LIVE_DELAY_MS = 600  # retrain this long after the last paint event


def one_line(exc: BaseException) -> str:
    """A user error's own message; anything else is a bug in hrdv2, said in one line too."""
    if isinstance(exc, HRDv2Error):
        return " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "not enough memory for this image: predict the current slice only, or crop the image."
    return f"hrdv2 bug ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); please report it."


class SegmentationWidget(FileActions, QWidget):
    """Scribble segmentation of the chosen image layer with :class:`hrdv2.segmentation.Segmenter`."""

    done = Signal(str)  # a job finished (its kind): tests and scripts wait on it

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.worker: Any = None
        self.live_pending = False
        self._shown_notes: set[str] = set()
        self._watched: Any = None
        self._named: set[int] = set()
        self.fractions: list[tuple[str, int, np.ndarray]] = []
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(LIVE_DELAY_MS)
        self.timer.timeout.connect(self._live_fire)
        self._build()
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.image_box, self.scribble_box = QComboBox(), QComboBox()
        self.scribble_box.currentTextChanged.connect(lambda *_: self._watch_scribbles())
        new_layer = QPushButton("New scribble layer")
        new_layer.clicked.connect(lambda: self._guard(self.new_scribble_layer))
        self.classes = ClassTable()
        self.classes.changed.connect(self._recolour)
        layers = QFormLayout()
        layers.addRow("image", self.image_box)
        layers.addRow("scribbles", self.scribble_box)
        layers.addRow(new_layer)
        layers.addRow(self.classes)

        self.kind = QComboBox()
        self.kind.addItems(["classical", "deep", "hybrid"])
        self.backbone = QComboBox()
        self.backbone.setEditable(True)
        self.backbone.addItems(BACKBONES)
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("default download, a .pth file, or 'random' (UNTRAINED)")
        self.stride = QSpinBox()
        self.stride.setRange(0, 32)
        self.stride.setSpecialValueText("patch size")
        self.shifts = QLineEdit("1,2")
        self.flips = QCheckBox("flips")
        self.classifier = QComboBox()
        self.classifier.addItems(list(CLASSIFIERS))
        self.classifier.setCurrentText(Settings.classifier)  # the library's default (random forest)
        self.crf = QCheckBox("CRF clean-up")
        feats = QFormLayout()
        for label, w in (("features", self.kind), ("backbone", self.backbone), ("weights", self.weights),
                         ("stride", self.stride), ("shifts", self.shifts), ("", self.flips),
                         ("classifier", self.classifier), ("", self.crf)):
            feats.addRow(label, w)

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self._guard(self.train))
        self.live = QCheckBox("live (retrain after painting)")
        self.scope = QComboBox()
        self.scope.addItems(["current slice", "whole stack"])
        self.predict_button = QPushButton("Predict")
        self.predict_button.clicked.connect(lambda: self._guard(self.predict))
        self.uncertainty = QCheckBox("uncertainty layer")
        self.progress = QProgressBar()
        self.status = QLabel("paint strokes of two classes, then Train")
        self.status.setWordWrap(True)
        run = QVBoxLayout()
        for row in ((self.train_button, self.live), (self.scope, self.predict_button, self.uncertainty)):
            line = QHBoxLayout()
            for w in row:
                line.addWidget(w)
            run.addLayout(line)
        run.addWidget(self.progress)
        run.addWidget(self.status)

        files = QHBoxLayout()
        for text, slot in (("Save model", self._save_dialog), ("Load model", self._load_dialog),
                           ("Apply to folder", self._folder_dialog)):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, s=slot: self._guard(s))
            files.addWidget(b)
        self.fraction_table = QTableWidget(0, 2)
        self.fraction_table.setHorizontalHeaderLabels(["class", "area fraction"])
        self.fraction_table.horizontalHeader().setStretchLastSection(True)
        self.fraction_table.setMinimumHeight(110)
        self.fraction_table.setMaximumHeight(160)
        export = QPushButton("Export phase fractions (CSV)")
        export.clicked.connect(lambda: self._guard(self._export_dialog))

        layout = QVBoxLayout(self)
        for title, inner in (("layers and classes", layers), ("features and classifier", feats),
                             ("train and predict", run), ("model files", files)):
            box = QGroupBox(title)
            box.setLayout(inner)
            layout.addWidget(box)
        layout.addWidget(QLabel("phase fractions of the prediction"))
        layout.addWidget(self.fraction_table)
        layout.addWidget(export)
        layout.addStretch(1)

    # ------------------------------------------------------------------ layers
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Labels

        for box, kind, skip in ((self.image_box, Image, UNCERTAINTY), (self.scribble_box, Labels, PREDICTION)):
            keep = box.currentText()
            names = [lay.name for lay in self.viewer.layers if isinstance(lay, kind) and lay.name != skip]
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if keep in names:
                box.setCurrentText(keep)
            box.blockSignals(False)
        for lay in self.viewer.layers:
            if id(lay) not in self._named:  # a renamed layer keeps its place in the pickers
                self._named.add(id(lay))
                lay.events.name.connect(self._refresh_layers)
        self._watch_scribbles()

    def _layer(self, box: QComboBox, what: str) -> Any:
        name = box.currentText()
        if not name or name not in self.viewer.layers:
            raise HRDv2Error(f"pick {what} first (the widget lists the viewer's layers of that kind).")
        return self.viewer.layers[name]

    def image(self) -> ImagePages:
        pages = image_pages(self._layer(self.image_box, "an image layer"))
        for note in pages.notes:
            if note not in self._shown_notes:
                self._shown_notes.add(note)
                self._notify(note, "warning")
        return pages

    def new_scribble_layer(self) -> Any:
        """An empty Labels layer of the image's (Z,) Y, X shape, chosen for scribbles, in paint mode."""
        image = self.image()
        layer = self.viewer.add_labels(np.zeros(image.shape, np.uint8), name=f"{image.name} scribbles")
        layer.colormap = self.classes.colormap()
        layer.brush_size = 5
        layer.mode = "paint"
        self.scribble_box.setCurrentText(layer.name)
        return layer

    def _recolour(self) -> None:
        cmap = self.classes.colormap()
        for name in (self.scribble_box.currentText(), PREDICTION):
            if name and name in self.viewer.layers:
                self.viewer.layers[name].colormap = cmap

    def _watch_scribbles(self) -> None:
        """Live mode listens to paint events of the chosen scribble layer only."""
        name = self.scribble_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is self._watched:
            return
        if self._watched is not None:
            for ev in (self._watched.events.paint, self._watched.events.data):
                ev.disconnect(self._on_paint)
        self._watched = layer
        if layer is not None:
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_paint)

    def _on_paint(self, *_: Any) -> None:
        if self.live.isChecked():
            self.timer.start()  # restarts: fires LIVE_DELAY_MS after the last stroke

    def _live_fire(self) -> None:
        if self.worker is not None:
            self.live_pending = True  # retrain once the running job is done
            return
        self._guard(self.train)

    # ------------------------------------------------------------------ settings
    def settings(self) -> Settings:
        text = self.shifts.text().strip()
        try:
            shifts = tuple(int(s) for s in text.split(",") if s.strip())
        except ValueError:
            raise HRDv2Error(f"shifts must be comma-separated whole numbers of pixels (e.g. 1,2), got {text!r}.") \
                from None
        return Settings(kind=self.kind.currentText(), backbone=self.backbone.currentText().strip(),
                        weights=self.weights.text().strip() or None, stride=self.stride.value() or None,
                        shifts=shifts, flips=self.flips.isChecked(), classifier=self.classifier.currentText(),
                        crf=self.crf.isChecked(), class_names=self.classes.names())

    def _show_model(self, seg: Any) -> None:
        """Set the controls to a (loaded or fallen-back) model's own settings."""
        f = seg.features
        self.kind.setCurrentText(f.kind)
        if f.uses_deep:
            self.backbone.setCurrentText(f.backbone)
            self.weights.setText(f.weights or "")
            self.stride.setValue(f.stride or 0)
            self.shifts.setText(",".join(map(str, f.shifts)))
            self.flips.setChecked(f.flips)
        self.classifier.setCurrentText(seg.classifier)
        self.crf.setChecked(seg.crf)
        self.classes.set_names(list(seg.class_names))

    # ------------------------------------------------------------------ jobs
    def train(self) -> None:
        """Train on the scribbles (a copy, so painting may go on) and predict the current page."""
        image = self.image()
        scribbles = np.array(label_array(self._layer(self.scribble_box, "a scribble layer"), image))
        settings = self.settings()
        settings.config()  # a bad setting is refused here, before the worker starts
        self.classes.ensure(int(scribbles.max()))
        settings.class_names = self.classes.names()
        page, unc = self._page(), self.uncertainty.isChecked()  # read controls here, not in the worker

        def job():
            notes: list[str] = []
            yield ("stage", "featurising and training", 0, 1)
            seg = self.session.train(image, scribbles, settings, warn=notes.append)
            for note in notes:
                yield ("warn", note, 0, 1)
            pred = yield from self._predict_steps(image, [page], seg, unc)
            return seg, image, pred

        self._start("train", job, self._trained)

    def predict(self) -> None:
        """Predict the current slice, or every page of a stack/volume, with the current model."""
        image = self.image()
        pages = list(range(image.n_pages)) if self.scope.currentText() == "whole stack" else [self._page()]
        unc = self.uncertainty.isChecked()

        def job():
            pred = yield from self._predict_steps(image, pages, None, unc)
            return None, image, pred

        self._start("predict", job, self._trained)

    def _predict_steps(self, image: ImagePages, pages: list[int], seg: Any, uncertainty: bool):
        """Worker side: predict ``pages``, reporting each as a progress step; returns the Prediction."""
        pred = None
        for done, total, result in self.session.predict(image, pages, uncertainty, model=seg):
            yield ("stage", f"predicting page {done} of {total}", done, total)
            pred = result
        return pred

    def _page(self) -> int:
        name = self.image_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is None or layer.ndim - (1 if getattr(layer, "rgb", False) else 0) < 3:
            return 0
        return current_page(layer, tuple(self.viewer.dims.point))

    def _start(self, kind: str, job: Callable, on_result: Callable) -> None:
        from napari.qt.threading import create_worker

        if self.worker is not None:
            raise HRDv2Error("hrdv2 is still working on the previous request; wait for it to finish.")
        self.progress.setRange(0, 0)  # busy until the first step reports
        self.status.setText(f"{kind}...")
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._step)
        worker.warned.connect(lambda w: self._notify(" ".join(str(w[0]).split()), "warning"))
        worker.returned.connect(lambda r: self._guard(on_result, r))
        worker.errored.connect(self._fail)
        worker.finished.connect(lambda: self._finished(kind))
        self.worker = worker
        worker.start()

    def _step(self, item: tuple[str, str, int, int]) -> None:
        what, text, done, total = item
        if what == "warn":
            self._notify(text, "warning")
            return
        self.status.setText(text)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)

    def _finished(self, kind: str) -> None:
        self.worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.done.emit(kind)
        if self.live_pending:
            self.live_pending = False
            self.timer.start()

    # ------------------------------------------------------------------ results
    def _trained(self, result: tuple[Any, ImagePages, Prediction | None]) -> None:
        seg, image, pred = result
        if seg is not None:
            if seg.features.kind != self.kind.currentText():
                self._show_model(seg)  # the classical fallback: say so in the controls too
            self.status.setText(f"trained on {seg.n_train_pixels_} pixels; classes {seg.classes_.tolist()}")
        if pred is not None:
            self._show_prediction(image, pred)

    def _show_prediction(self, image: ImagePages, pred: Prediction) -> None:
        layer = self.viewer.layers[PREDICTION] if PREDICTION in self.viewer.layers else None
        if layer is None or tuple(layer.data.shape) != image.shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(np.zeros(image.shape, np.uint8), name=PREDICTION, opacity=0.5)
        data = layer.data
        for z, lab in zip(pred.pages, pred.labels):
            data[z if image.is_stack else slice(None)] = lab
        layer.colormap = self.classes.colormap()
        layer.refresh()
        if pred.uncertainty is not None:
            unc = self.viewer.layers[UNCERTAINTY].data if UNCERTAINTY in self.viewer.layers else None
            if unc is None or unc.shape != image.shape:
                if unc is not None:
                    self.viewer.layers.remove(UNCERTAINTY)
                unc = np.zeros(image.shape, np.float32)
                self.viewer.add_image(unc, name=UNCERTAINTY, colormap="magma", opacity=0.6, contrast_limits=(0, 1),
                                      visible=True)
            for z, u in zip(pred.pages, pred.uncertainty):
                unc[z if image.is_stack else slice(None)] = u
            self.viewer.layers[UNCERTAINTY].refresh()
        self._update_fractions(image, np.asarray(data))
        self.status.setText(f"{self.status.text()}; predicted {len(pred.pages)} page(s)")

    def _update_fractions(self, image: ImagePages, labels: np.ndarray) -> None:
        seg = self.session.model
        classes = [int(c) for c in seg.classes_]
        names = [seg.class_names[c - 1] if c - 1 < len(seg.class_names) else f"class {c}" for c in classes]
        pages = [z for z in range(image.n_pages) if np.any(labels[z] if image.is_stack else labels)]
        self.fractions = [(image.name, z, phase_fractions(labels[z] if image.is_stack else labels, classes))
                          for z in pages]
        total = phase_fractions(labels[pages] if image.is_stack else labels, classes)
        self.fraction_table.setRowCount(len(classes))
        for row, (name, fr) in enumerate(zip(names, total)):
            self.fraction_table.setItem(row, 0, QTableWidgetItem(name))
            self.fraction_table.setItem(row, 1, QTableWidgetItem(f"{100 * fr:.2f} %"))
        self._fraction_names = names

    # ------------------------------------------------------------------ messages
    def _guard(self, fn: Callable, *args: Any) -> Any:
        """Run a GUI-thread action; a problem becomes one notification line, never a traceback."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the boundary between hrdv2 and the user
            self._fail(exc)
            return None

    def _fail(self, exc: BaseException) -> None:
        self.status.setText(one_line(exc))
        self._notify(one_line(exc), "error")

    def _notify(self, message: str, severity: str) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        {"error": show_error, "warning": show_warning, "info": show_info}[severity](message)
