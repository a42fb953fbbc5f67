"""napari layer data -> the arrays hrdv2 takes, checked, with one-line errors.

No Qt here: the functions take a layer (anything with ``data``, ``name`` and, for images,
``rgb``/``multiscale``) and return pages (one 2-D grey or RGB image per slice) or label pages.
Conventions follow :mod:`hrdv2.io`: an alpha channel is dropped, 16-bit and float images are
rescaled by the feature engine, grey stays (H, W), colour is (H, W, 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hrdv2.errors import HRDv2Error, ShapeError

# colours of classes 1..10 (then repeating): distinct on grey micrographs, colour-blind friendly
# (Okabe-Ito palette, Okabe & Ito 2008, "Color Universal Design")
CLASS_COLOURS = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2",
                 "#d55e00", "#cc79a7", "#999999", "#ffffff", "#000000")


def default_colour(class_id: int) -> str:
    return CLASS_COLOURS[(int(class_id) - 1) % len(CLASS_COLOURS)]


@dataclass
class ImagePages:
    """An image layer as a sequence of 2-D pages: ``shape`` is (Y, X) or (Z, Y, X)."""

    name: str
    data: Any  # the layer's (level-0) array: numpy, dask or zarr
    rgb: bool
    shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)  # one-line remarks for the user (alpha dropped...)

    @property
    def is_stack(self) -> bool:
        return len(self.shape) == 3

    @property
    def n_pages(self) -> int:
        return self.shape[0] if self.is_stack else 1

    def page(self, z: int = 0) -> np.ndarray:
        """Page ``z`` as a numpy (H, W) grey or (H, W, 3) RGB image."""
        arr = np.asarray(self.data[z] if self.is_stack else self.data)
        if self.rgb and arr.shape[-1] == 4:
            arr = arr[..., :3]
        return arr


def image_pages(layer: Any) -> ImagePages:
    """Check an image layer and describe it as pages; HRDv2Error (one line) when hrdv2 cannot
    segment it."""
    name = getattr(layer, "name", "image")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    rgb = bool(getattr(layer, "rgb", False))
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    notes = []
    if dtype.kind not in "uif" or dtype == np.dtype(bool):
        raise HRDv2Error(f"image layer '{name}' holds {dtype} values; hrdv2 segments integer or float images "
                         "(convert it, e.g. to uint8).")
    spatial = shape[:-1] if rgb else shape
    if rgb and shape[-1] == 4:
        notes.append(f"image layer '{name}' is RGBA: the alpha channel is ignored (hrdv2 segments the RGB channels).")
    if len(spatial) not in (2, 3):
        raise ShapeError(f"image layer '{name}' has shape {shape}; the widget segments 2-D images (Y, X), RGB images "
                         "and stacks/volumes (Z, Y, X): split channels or time points into separate layers first.")
    if min(spatial[-2:]) < 4:
        raise ShapeError(f"image layer '{name}' is {spatial[-1]}x{spatial[-2]} px; hrdv2 needs at least 4 px per side.")
    if dtype.itemsize > 1 and dtype.kind in "ui":
        notes.append(f"image layer '{name}' is {dtype.itemsize * 8}-bit: intensities are rescaled to [0, 1] "
                     "(robust percentile stretch for grey, min-max for colour) before featurising.")
    return ImagePages(name=name, data=data, rgb=rgb, shape=spatial, notes=notes)


def label_array(layer: Any, image: ImagePages, what: str = "scribble") -> np.ndarray:
    """The labels layer's data as an integer array of the image's (Z,) Y, X shape."""
    name = getattr(layer, "name", "labels")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    if shape != image.shape:
        raise ShapeError(f"{what} layer '{name}' is {shape} but image layer '{image.name}' is {image.shape}; "
                         "paint on a labels layer of the image's shape (use 'New scribble layer').")
    arr = np.asarray(data)
    if arr.dtype.kind not in "ui":
        raise HRDv2Error(f"{what} layer '{name}' holds {arr.dtype} values; labels must be integers (0 = unlabelled).")
    if arr.size and int(arr.min()) < 0:
        raise HRDv2Error(f"{what} layer '{name}' holds negative labels; use 0 for unlabelled and 1..K for classes.")
    return arr


def scribbled_pages(scribbles: np.ndarray, image: ImagePages) -> list[int]:
    """Indices of the pages that carry at least one stroke; HRDv2Error if none or one class only."""
    pages = [z for z in range(image.n_pages) if np.any(scribbles[z] if image.is_stack else scribbles)]
    if not pages:
        raise HRDv2Error("the scribble layer has no strokes yet: paint at least one stroke of two classes each.")
    present = set()
    for z in pages:
        present.update(int(c) for c in np.unique(scribbles[z] if image.is_stack else scribbles) if c > 0)
    if len(present) < 2:
        raise HRDv2Error(f"the scribbles label only class {present.pop()}; paint strokes of at least two classes "
                         "(change the label number in the layer controls).")
    if max(present) > 255:
        raise HRDv2Error(f"class ids must be at most 255, the scribbles use {max(present)}.")
    return pages


def current_page(layer: Any, point: tuple[float, ...]) -> int:
    """The page of a (Z, Y, X) layer the viewer shows at world ``point`` (0 for 2-D layers)."""
    if layer is None or len(point) < 3:
        return 0
    try:
        z = layer.world_to_data(point)[0]
    except Exception:  # a layer with fewer dims than the viewer: the last axes align
        z = point[-3]
    n = layer.data[0].shape[0] if getattr(layer, "multiscale", False) else layer.data.shape[0]
    return int(min(max(round(float(z)), 0), n - 1))


def phase_fractions(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Area fraction of each class in ``classes`` among the labelled (non-zero) pixels."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=max(classes) + 1)
    total = max(int(counts[1:].sum()), 1)
    return np.array([counts[c] / total for c in classes], dtype=np.float64)
