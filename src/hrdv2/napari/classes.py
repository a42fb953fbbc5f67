"""The editable table of classes (id, name, colour) and the napari label colour map it implies."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QColorDialog, QHBoxLayout, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)

from hrdv2.napari.layers import default_colour

DEFAULT_CLASSES = ("class 1", "class 2")


def label_colormap(colours: dict[int, str]) -> Any:
    """A napari colour map giving each class id its colour and 0 (unlabelled) transparency."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colours})


class ClassTable(QWidget):
    """Rows = classes 1..K: the name is edited in place, the colour through a colour dialog."""

    changed = Signal()

    def __init__(self, names: tuple[str, ...] = DEFAULT_CLASSES, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["name", "colour"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(160)
        self.table.itemChanged.connect(lambda *_: self.changed.emit())
        add, remove = QPushButton("+ class"), QPushButton("- class")
        add.clicked.connect(lambda: self.add_class())
        remove.clicked.connect(self.remove_class)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        self._colours: list[str] = []
        for name in names:
            self.add_class(name)

    # -- rows --------------------------------------------------------------------------------
    def add_class(self, name: str | None = None, colour: str | None = None) -> None:
        row = self.table.rowCount()
        colour = colour or default_colour(row + 1)
        self._colours.append(colour)
        self.table.blockSignals(True)
        self.table.insertRow(row)
        self.table.setVerticalHeaderItem(row, QTableWidgetItem(str(row + 1)))
        self.table.setItem(row, 0, QTableWidgetItem(name or f"class {row + 1}"))
        button = QPushButton()
        button.clicked.connect(lambda _=False, r=row: self._pick_colour(r))
        self.table.setCellWidget(row, 1, button)
        self._paint_button(row)
        self.table.blockSignals(False)
        self.changed.emit()

    def remove_class(self) -> None:
        if self.table.rowCount() > 1:
            self.table.removeRow(self.table.rowCount() - 1)
            self._colours.pop()
            self.changed.emit()

    def set_names(self, names: list[str]) -> None:
        """Replace the rows by ``names`` (e.g. from a loaded model), keeping colours by position."""
        while self.table.rowCount() > len(names) and self.table.rowCount() > 1:
            self.table.removeRow(self.table.rowCount() - 1)
            self._colours.pop()
        while self.table.rowCount() < len(names):
            self.add_class()
        self.table.blockSignals(True)
        for row, name in enumerate(names):
            self.table.item(row, 0).setText(str(name))
        self.table.blockSignals(False)
        self.changed.emit()

    def ensure(self, n: int) -> None:
        """At least ``n`` rows (strokes painted with label ids beyond the table get rows)."""
        while self.table.rowCount() < n:
            self.add_class()

    # -- colours -----------------------------------------------------------------------------
    def set_colour(self, class_id: int, colour: str) -> None:
        self._colours[class_id - 1] = QColor(colour).name()
        self._paint_button(class_id - 1)
        self.changed.emit()

    def _paint_button(self, row: int) -> None:
        button = self.table.cellWidget(row, 1)
        if button is not None:
            button.setStyleSheet(f"background-color: {self._colours[row]};")
            button.setText(self._colours[row])

    def _pick_colour(self, row: int) -> None:
        colour = QColorDialog.getColor(QColor(self._colours[row]), self, f"colour of class {row + 1}")
        if colour.isValid():
            self.set_colour(row + 1, colour.name())

    # -- reading -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [(self.table.item(r, 0).text().strip() or f"class {r + 1}") for r in range(self.table.rowCount())]

    def colours(self) -> dict[int, str]:
        return {i + 1: c for i, c in enumerate(self._colours)}

    def colormap(self) -> Any:
        return label_colormap(self.colours())
