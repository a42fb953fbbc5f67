"""CUB-200-2011 birds with their foreground segmentations (saliency mIoU benchmark).

Layout (the official ``CUB_200_2011.tgz`` plus ``segmentations.tgz`` extracted; the
``segmentations`` folder may sit inside ``CUB_200_2011`` or beside it)::

    CUB_200_2011/images.txt                 "<id> <class_dir>/<name>.jpg"
    CUB_200_2011/train_test_split.txt       "<id> <1 train | 0 test>"
    CUB_200_2011/bounding_boxes.txt         "<id> <x> <y> <w> <h>"   (optional)
    CUB_200_2011/images/<class_dir>/<name>.jpg
    segmentations/<class_dir>/<name>.png    grey 0..255 (annotator agreement); > 127 = bird
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrdv2.datasets.localisation import LocSample, _ListDataset
from hrdv2.errors import ConfigError, ImageReadError

LAYOUT = (
    "CUB_200_2011/{images.txt, train_test_split.txt, images/<class>/<name>.jpg} and "
    "segmentations/<class>/<name>.png inside or beside CUB_200_2011/"
)
SPLITS = ("test", "train", "all")


def _table(path: Path) -> dict[str, list[str]]:
    return {p[0]: p[1:] for p in (ln.split() for ln in path.read_text().splitlines()) if len(p) >= 2}


def find_cub_dir(root: str | Path) -> Path:
    root = Path(root)
    for cand in (root, root / "CUB_200_2011"):
        if (cand / "images.txt").is_file() and (cand / "images").is_dir():
            return cand
    raise ImageReadError(f"{root}: not a CUB-200-2011 folder (no images.txt and images/). Expected: {LAYOUT}.")


class CUBDataset(_ListDataset):
    """CUB images of a split (default the 5,794-image test split) with masks and boxes."""

    name = "cub"

    def __init__(self, root: str | Path, split: str = "test"):
        if split not in SPLITS:
            raise ConfigError(f"CUB split {split!r} is unknown; use one of {SPLITS}.")
        self.dir = find_cub_dir(root)
        seg_dir = next((d for d in (self.dir / "segmentations", self.dir.parent / "segmentations") if d.is_dir()), None)
        if seg_dir is None:
            raise ImageReadError(f"{self.dir}: no segmentations/ folder inside or beside it. Expected: {LAYOUT}.")
        images = _table(self.dir / "images.txt")
        split_file = self.dir / "train_test_split.txt"
        if split != "all":
            if not split_file.is_file():
                raise ImageReadError(f"{split_file}: missing; it is needed for split={split!r} (or use split='all').")
            flags = _table(split_file)
            want = "1" if split == "train" else "0"
            images = {i: v for i, v in images.items() if flags.get(i, [None])[0] == want}
        bbox_file = self.dir / "bounding_boxes.txt"
        bboxes = _table(bbox_file) if bbox_file.is_file() else {}
        samples = []
        for i, (rel, *_) in sorted(images.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
            img = self.dir / "images" / rel
            seg = seg_dir / Path(rel).with_suffix(".png")
            if not img.is_file() or not seg.is_file():
                raise ImageReadError(f"CUB image {i}: {img} or its mask {seg} is missing. Expected: {LAYOUT}.")
            boxes = None
            if i in bboxes:
                x, y, w, h = (float(v) for v in bboxes[i][:4])
                boxes = np.array([[x, y, x + w, y + h]], dtype=np.float64)
            samples.append(LocSample(Path(rel).stem, img, boxes, seg, "binary"))
        if not samples:
            raise ImageReadError(f"{self.dir}: no images in split {split!r}.")
        self.samples = samples
