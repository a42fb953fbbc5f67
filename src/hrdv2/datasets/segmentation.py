"""Semantic-segmentation datasets for linear probes: one image and one dense label map per sample.

Every reader returns label maps in hrdv2's convention: ``0`` = ignore, ``1..K`` = classes, so
class id ``k`` is output channel ``k - 1`` of a linear head.

Layouts (``load_segmentation(layout, root, split)``):

* ``folder``: ``NAME.png`` beside ``NAME_gt.png`` (:class:`hrdv2.datasets.folder.FolderDataset`);
  ``split`` is ignored (give one folder for training and one for validation).
* ``voc``: PASCAL VOC 2012 as extracted from the official tar: ``JPEGImages/NAME.jpg``,
  ``SegmentationClass/NAME.png`` (palette indices 0..20, 255 = boundary/ignore) and
  ``ImageSets/Segmentation/SPLIT.txt``; ``root`` may be ``VOC2012``, ``VOCdevkit`` or the folder
  holding ``VOCdevkit``. Index v becomes class v + 1 (background = 1), 255 becomes 0.
* ``cocostuff``: COCO-Stuff 164k as STEGO and FeatUp lay it out: ``images/SPLIT2017/ID.jpg``,
  ``annotations/SPLIT2017/ID.png`` (fine ids 0..181, 255 = unlabelled) and optionally
  ``curated/SPLIT2017/LIST.txt`` naming the images to use. ``coarse=True`` (default) maps the
  182 fine ids to the 27 coarse classes of STEGO/FeatUp's COCO-Stuff-27 probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError
from hrdv2.io import read_image, read_labels

LAYOUTS = ("folder", "voc", "cocostuff")
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# COCO-Stuff fine id (0..181) -> coarse class (0..26): the 27-class split used by STEGO's and
# FeatUp's COCO-Stuff probes (the `fine_to_coarse` table of their data loaders).
COCOSTUFF_FINE_TO_COARSE: tuple[int, ...] = (
    (9,) + (11,) * 8 + (8,) * 6 + (7,) * 10 + (6,) * 8 + (10,) * 10 + (5,) * 8 + (2,) * 10 + (3,) * 10 + (0,) * 6
    + (1,) * 6 + (4,) * 8
    + (17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22,
       26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21,
       26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18,
       18, 18, 26, 26, 19, 19, 24)
)


@dataclass
class LabelledImage:
    """One sample: ``image()`` as ``hrdv2.io.read_image`` gives it, ``labels()`` with 0 = ignore."""

    name: str
    image_path: Path
    label_path: Path
    _labels: Callable[[Path, tuple[int, ...]], np.ndarray]

    def image(self) -> np.ndarray:
        return read_image(self.image_path)

    def labels(self, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Class ids (uint8/uint16), checked against ``shape`` (default: the image's)."""
        return self._labels(self.label_path, shape if shape is not None else self.image().shape)


@dataclass
class SegmentationDataset:
    name: str
    samples: list[LabelledImage]
    n_classes: int | None = None  # None: the largest id found in the data
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[LabelledImage]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> LabelledImage:
        return self.samples[i]


def _indexed_png(path: Path) -> np.ndarray:
    """Raw palette indices / grey values of a label PNG (hrdv2.io would turn a palette into colours)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ImageReadError(f"{path}: label PNG of mode {im.mode}; expected a palette (P) or grey (L) PNG of "
                                     "class indices.")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ImageReadError):
            raise
        raise ImageReadError(f"{path}: not a readable label PNG ({exc}).") from exc


def _check_shape(arr: np.ndarray, path: Path, shape: tuple[int, ...]) -> None:
    if arr.shape != tuple(shape[:2]):
        raise ImageReadError(f"{path}: label map is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is "
                             f"{shape[1]}x{shape[0]}; they must be the same size.")


def voc_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """VOC indices 0..20 -> ids 1..21; 255 (object boundaries) -> 0 = ignore."""
    raw = _indexed_png(path)
    _check_shape(raw, path, shape)
    bad = (raw > 20) & (raw != 255)
    if bad.any():
        raise ImageReadError(f"{path}: VOC label index {int(raw[bad][0])} is not a class (0..20) or 255 (ignore).")
    return np.where(raw == 255, 0, raw.astype(np.uint16) + 1).astype(np.uint8)


def cocostuff_labels(coarse: bool) -> Callable[[Path, tuple[int, ...]], np.ndarray]:
    """Fine ids 0..181 -> ids 1..182 (or coarse 0..26 -> 1..27); 255 -> 0 = ignore."""
    table = np.zeros(256, np.uint8)
    table[:182] = np.asarray(COCOSTUFF_FINE_TO_COARSE) + 1 if coarse else np.arange(1, 183)

    def read(path: Path, shape: tuple[int, ...]) -> np.ndarray:
        raw = _indexed_png(path)
        _check_shape(raw, path, shape)
        bad = (raw > 181) & (raw != 255)
        if bad.any():
            raise ImageReadError(f"{path}: COCO-Stuff id {int(raw[bad][0])} is not a class (0..181) or 255 (unlabelled).")
        return table[raw]

    return read


def folder_dataset(root: str | Path) -> SegmentationDataset:
    from hrdv2.datasets.folder import FolderDataset

    folder = FolderDataset(root, require="gt")
    samples = [LabelledImage(s.name, s.image_path, s.gt_path, lambda p, shape: read_labels(p, shape)) for s in folder]
    return SegmentationDataset(f"folder:{Path(root).name}", samples)


def find_voc_seg_dir(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir() and (cand / "SegmentationClass").is_dir():
            return cand
    raise ImageReadError(f"{root}: not a PASCAL VOC 2012 folder: no JPEGImages/ and SegmentationClass/ in it, in "
                         "VOC2012/ or in VOCdevkit/VOC2012/ (extract VOCtrainval_11-May-2012.tar there).")


def voc_dataset(root: str | Path, split: str = "val") -> SegmentationDataset:
    d = find_voc_seg_dir(root)
    split_file = d / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise ImageReadError(f"{split_file}: split file missing; VOC 2012 has train.txt, val.txt and trainval.txt there.")
    samples = []
    for n in (ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()):
        img, lab = d / "JPEGImages" / f"{n}.jpg", d / "SegmentationClass" / f"{n}.png"
        if not img.is_file() or not lab.is_file():
            raise ImageReadError(f"{split_file}: lists {n!r} but {img} or {lab} is missing.")
        samples.append(LabelledImage(n, img, lab, voc_labels))
    if not samples:
        raise ImageReadError(f"{split_file}: lists no images.")
    return SegmentationDataset(f"voc12-{split}", samples, n_classes=21, class_names=VOC_CLASSES)


def cocostuff_dataset(root: str | Path, split: str = "val", coarse: bool = True,
                      image_list: str | None = None) -> SegmentationDataset:
    """``image_list``: a file name in ``curated/SPLIT2017/`` (e.g. STEGO's Coco164kFull_Stuff_Coarse_7.txt) or
    a path; default: every image of ``images/SPLIT2017`` that has an annotation."""
    root = Path(root)
    sub = f"{split}2017"
    images, annotations = root / "images" / sub, root / "annotations" / sub
    if not images.is_dir() or not annotations.is_dir():
        raise ImageReadError(f"{root}: not a COCO-Stuff folder: expected images/{sub}/ID.jpg and annotations/{sub}/ID.png "
                             "(stuffthingmaps_trainval2017.zip holds the annotations).")
    if image_list is not None:
        lst = Path(image_list) if Path(image_list).is_file() else root / "curated" / sub / image_list
        if not lst.is_file():
            raise ImageReadError(f"{lst}: image list not found (give a file name in {root / 'curated' / sub} or a path).")
        ids = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    else:
        ids = sorted(p.stem for p in annotations.glob("*.png") if (images / f"{p.stem}.jpg").is_file())
    samples = []
    reader = cocostuff_labels(coarse)
    for i in ids:
        img, lab = images / f"{i}.jpg", annotations / f"{i}.png"
        if not img.is_file() or not lab.is_file():
            raise ImageReadError(f"{root}: sample {i!r} lacks {img.name} or its annotation {lab.name}.")
        samples.append(LabelledImage(i, img, lab, reader))
    if not samples:
        raise ImageReadError(f"{root}: no annotated images in images/{sub}.")
    return SegmentationDataset(f"cocostuff{27 if coarse else 182}-{split}", samples, n_classes=27 if coarse else 182)


def load_segmentation(layout: str, root: str | Path, split: str = "val", **kwargs) -> SegmentationDataset:
    """A dataset of ``layout`` (see the module docstring) at ``root``."""
    if layout == "folder":
        return folder_dataset(root)
    if layout == "voc":
        return voc_dataset(root, split)
    if layout == "cocostuff":
        return cocostuff_dataset(root, split, **kwargs)
    raise ConfigError(f"unknown dataset layout {layout!r}; choose one of {list(LAYOUTS)}.")
