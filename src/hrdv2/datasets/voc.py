"""PASCAL VOC 2007 / 2012 object boxes (the CorLoc benchmark of unsupervised localisation).

Layout (as extracted from the official tars; ``root`` may be the ``VOC2007`` folder itself,
the ``VOCdevkit`` folder, or the folder holding ``VOCdevkit``)::

    VOCdevkit/VOC2007/JPEGImages/000005.jpg
    VOCdevkit/VOC2007/Annotations/000005.xml
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt

VOC boxes are 1-based with inclusive max corners; they are converted to hrdv2's 0-based,
max-exclusive convention: ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from hrdv2.datasets.localisation import LocSample, _ListDataset
from hrdv2.errors import ImageReadError

LAYOUT = "VOCdevkit/VOC{year}/{{JPEGImages/NAME.jpg, Annotations/NAME.xml, ImageSets/Main/SPLIT.txt}}"


def find_voc_dir(root: str | Path, year: str) -> Path:
    """The ``VOC<year>`` folder under ``root`` (or ``root`` itself), or a clear error."""
    root = Path(root)
    for cand in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (cand / "JPEGImages").is_dir() and (cand / "Annotations").is_dir():
            return cand
    raise ImageReadError(
        f"{root}: not a PASCAL VOC {year} folder: no JPEGImages/ and Annotations/ in it, in VOC{year}/ or in "
        f"VOCdevkit/VOC{year}/. Expected layout: {LAYOUT.format(year=year)}."
    )


def parse_annotation(path: str | Path, include_difficult: bool = True) -> tuple[np.ndarray, list[str], list[bool]]:
    """Boxes (N, 4) in hrdv2 convention, class names and 'difficult' flags from a VOC XML file."""
    path = Path(path)
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as exc:
        raise ImageReadError(f"{path}: not a readable VOC annotation XML ({exc}).") from exc
    boxes, names, difficult = [], [], []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise ImageReadError(f"{path}: an <object> has a malformed <bndbox> ({exc}).") from exc
        hard = (obj.findtext("difficult") or "0").strip() == "1"
        if hard and not include_difficult:
            continue
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append((obj.findtext("name") or "").strip())
        difficult.append(hard)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), names, difficult


class VOCDataset(_ListDataset):
    """Images of one VOC split with their object boxes; images without objects are skipped."""

    def __init__(self, root: str | Path, year: str = "2007", split: str | None = "trainval", include_difficult: bool = True):
        year = str(year)
        self.name = f"voc{year[-2:]}"
        self.dir = find_voc_dir(root, year)
        if split is None:
            names = sorted(p.stem for p in (self.dir / "Annotations").glob("*.xml"))
        else:
            split_file = self.dir / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise ImageReadError(
                    f"{split_file}: split file missing. Expected layout: {LAYOUT.format(year=year)}; "
                    "or pass split=None to use every annotation."
                )
            names = [ln.split()[0] for ln in split_file.read_text().splitlines() if ln.strip()]
        samples = []
        for n in names:
            img = self.dir / "JPEGImages" / f"{n}.jpg"
            ann = self.dir / "Annotations" / f"{n}.xml"
            if not img.is_file() or not ann.is_file():
                raise ImageReadError(f"{self.dir}: split lists {n!r} but {img.name} or {ann.name} is missing.")
            boxes, cls, hard = parse_annotation(ann, include_difficult)
            if len(boxes) == 0:
                continue
            samples.append(LocSample(n, img, boxes, None, extra={"classes": cls, "difficult": hard}))
        if not samples:
            raise ImageReadError(f"{self.dir}: no annotated images in split {split!r}.")
        self.samples = samples
