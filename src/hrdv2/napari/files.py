"""The widget's file actions: save / load a model, apply it to a folder, export phase fractions.

A mixin of :class:`hrdv2.napari.widget.SegmentationWidget` (it uses the widget's session, job
runner and notifications); the public methods take paths, the buttons ask for them first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from hrdv2.errors import HRDv2Error
from hrdv2.napari.session import apply_folder, fractions_csv


class FileActions:
    """Model files go through ``Segmenter.save`` / ``Segmenter.load`` (the safe loader) only."""

    def apply_folder(self, folder: str | Path, out_dir: str | Path) -> None:
        """Segment every image in ``folder`` into ``out_dir`` (labels + phase_fractions.csv)."""
        seg = self.session.model
        if seg is None:
            raise HRDv2Error("no model yet: train one or load a model file before applying it to a folder.")

        def job():
            problems = []
            for done, total, problem in apply_folder(seg, folder, out_dir):
                if problem:
                    problems.append(problem)
                    yield ("warn", problem, done, total)
                yield ("stage", f"file {done} of {total}", done, total)
            return done - len(problems), total

        def finished(result: tuple[int, int]) -> None:
            self._notify(f"segmented {result[0]} of {result[1]} file(s) into {out_dir}", "info")

        self._start("apply", job, finished)

    def save_model(self, path: str | Path) -> Path:
        out = self.session.save(path)
        self._notify(f"saved model to {out}", "info")
        return out

    def load_model(self, path: str | Path) -> Any:
        seg = self.session.load(path)
        self._show_model(seg)
        self._notify(f"loaded {seg!r} from {path}", "info")
        return seg

    def export_fractions(self, path: str | Path) -> Path:
        from hrdv2.io import write_text_atomic

        if not self.fractions:
            raise HRDv2Error("no prediction yet: train or predict first, then export its phase fractions.")
        return write_text_atomic(path, fractions_csv(self.fractions, self._fraction_names))

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "model.skops", "hrdv2 model (*.skops)")
        if path:
            self.save_model(path)

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", "hrdv2 model (*.skops)")
        if path:
            self.load_model(path)

    def _folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images to segment")
        out = QFileDialog.getExistingDirectory(self, "Output folder") if folder else ""
        if folder and out:
            self.apply_folder(folder, out)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export phase fractions", "phase_fractions.csv", "CSV (*.csv)")
        if path:
            self.export_fractions(path)

