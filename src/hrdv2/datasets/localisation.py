"""Common sample type of the localisation / saliency benchmarks, and a factory by name.

Every reader (VOC, CUB, DUTS-TE, ECSSD, generic folder) yields ``LocSample``: an image path
plus ground-truth boxes and/or a foreground mask. Boxes use the hrdv2 convention
``(x0, y0, x1, y1)`` pixels, x1/y1 exclusive (``hrdv2.unsupervised.boxes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Protocol

import numpy as np

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.io import read_image, read_labels

# How a mask file encodes foreground:
#   "binary"  grey 0..255, foreground where > 127 (saliency masks, CUB's soft masks)
#   "labels"  hrdv2 label map: 0 = ignore, 1 = background, >= 2 = foreground (shared/data)
MaskKind = Literal["binary", "labels"]
GT_BOX_MIN_AREA = 200  # px: components of a GT mask smaller than this get no GT box (JPEG specks)


@dataclass
class LocSample:
    name: str
    image_path: Path
    boxes: np.ndarray | None = None  # (N, 4) ground-truth boxes, or None (derive from the mask)
    mask_path: Path | None = None
    mask_kind: MaskKind = "binary"
    extra: dict = field(default_factory=dict)  # class names, difficult flags...

    def image(self) -> np.ndarray:
        return read_image(self.image_path)

    def mask(self, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(foreground, valid) boolean masks, or None when the sample has no mask.

        ``valid`` is False on ignore pixels (label 0 of a "labels" mask), True elsewhere.
        """
        if self.mask_path is None:
            return None
        if self.mask_kind == "labels":
            lab = read_labels(self.mask_path, shape)
            return lab >= 2, lab != 0
        arr = read_image(self.mask_path)
        if arr.ndim == 3:
            arr = arr[..., 0]
        if shape is not None and arr.shape != tuple(shape[:2]):
            raise ShapeError(
                f"{self.mask_path}: mask is {arr.shape[1]}x{arr.shape[0]} but its image is {shape[1]}x{shape[0]}."
            )
        fg = arr > (127 if arr.dtype == np.uint8 else 0.5 * float(arr.max() or 1))
        return fg, np.ones(arr.shape, dtype=bool)

    def gt_boxes(self, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The annotated boxes; else one box per connected foreground component of the mask
        (components below ``GT_BOX_MIN_AREA`` px are skipped, unless that leaves none)."""
        if self.boxes is not None:
            return self.boxes
        m = self.mask(shape)
        if m is None:
            return None
        from hrdv2.unsupervised.boxes import component_boxes, mask_box

        fg = m[0]
        boxes, _ = component_boxes(fg, GT_BOX_MIN_AREA)
        if len(boxes) == 0:
            box = mask_box(fg)
            boxes = np.zeros((0, 4), np.int64) if box is None else box[None]
        return boxes


class LocDataset(Protocol):
    name: str
    samples: list[LocSample]

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[LocSample]: ...


class _ListDataset:
    """Shared list behaviour of the readers."""

    name = "dataset"
    samples: list[LocSample]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[LocSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> LocSample:
        return self.samples[i]


class FolderLocDataset(_ListDataset):
    """The generic ``NAME.png`` + ``NAME_gt.png`` folder (``hrdv2.datasets.folder``) as a
    saliency set: GT label 0 = ignore, 1 = background, >= 2 = foreground."""

    name = "folder"

    def __init__(self, root: str | Path):
        from hrdv2.datasets.folder import FolderDataset

        self.root = Path(root)
        folder = FolderDataset(self.root, require="gt")
        self.samples = [LocSample(s.name, s.image_path, None, s.gt_path, "labels") for s in folder]


DATASETS = ("voc07", "voc12", "cub", "duts", "ecssd", "folder")


def open_localisation_dataset(kind: str, root: str | Path, split: str | None = None) -> _ListDataset:
    """A reader by name: voc07 / voc12 (trainval), cub (test), duts (DUTS-TE), ecssd, folder."""
    kind = kind.lower()
    if kind in ("voc07", "voc12"):
        from hrdv2.datasets.voc import VOCDataset

        return VOCDataset(root, year="2007" if kind == "voc07" else "2012", split=split or "trainval")
    if kind == "cub":
        from hrdv2.datasets.cub import CUBDataset

        return CUBDataset(root, split=split or "test")
    if kind in ("duts", "ecssd"):
        from hrdv2.datasets.saliency import SaliencyDataset

        return SaliencyDataset(root, kind=kind)
    if kind == "folder":
        return FolderLocDataset(root)
    raise ConfigError(f"unknown dataset {kind!r}; use one of {', '.join(DATASETS)}.")
