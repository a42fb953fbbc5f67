"""Query points and annotated point pairs from the command line or CSV files.

* ``"x,y;x,y"``: query pixels (x = column, y = row, 0-based).
* points CSV: one ``x,y`` per row.
* pairs CSV: one ``x_source,y_source,x_target,y_target`` per row (annotated correspondences).

A first row that is not numbers is a header and skipped; blank lines and lines starting with
``#`` are ignored.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError


def parse_points(text: str) -> np.ndarray:
    """(N, 2) float array from ``"x,y;x,y"``."""
    rows = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        fields = [f.strip() for f in part.split(",")]
        try:
            if len(fields) != 2:
                raise ValueError
            rows.append([float(fields[0]), float(fields[1])])
        except ValueError:
            raise ConfigError(f"point {part!r} is not x,y; write points as \"x,y;x,y\" (pixels, x = column).") from None
    if not rows:
        raise ConfigError(f"no points in {text!r}; write them as \"x,y;x,y\" (pixels, x = column).")
    return np.asarray(rows, np.float64)


def _read_rows(path: Path, n: int, layout: str) -> np.ndarray:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found; give a CSV with rows {layout}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageReadError(f"{path}: cannot read it as a text CSV ({exc}).") from None
    rows = []
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for i, row in enumerate(csv.reader(lines)):
        vals = [v.strip() for v in row if v.strip() != ""]
        try:
            nums = [float(v) for v in vals]
        except ValueError:
            if i == 0:
                continue  # header
            raise ImageReadError(f"{path}: row {i + 1} ({','.join(row)}) is not numbers; expected {layout}.") from None
        if len(nums) != n:
            raise ImageReadError(f"{path}: row {i + 1} has {len(nums)} values; expected {n} ({layout}).")
        rows.append(nums)
    if not rows:
        raise ImageReadError(f"{path}: no rows; expected {layout}, one per line.")
    return np.asarray(rows, np.float64)


def read_points_csv(path: str | Path) -> np.ndarray:
    """(N, 2) query points from a CSV of ``x,y`` rows."""
    return _read_rows(Path(path), 2, "x,y")


def read_pairs_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Source (N, 2) and target (N, 2) points from a CSV of ``x_source,y_source,x_target,y_target`` rows."""
    rows = _read_rows(Path(path), 4, "x_source,y_source,x_target,y_target")
    return rows[:, :2], rows[:, 2:]
