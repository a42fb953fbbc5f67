"""The generic labelled folder: ``NAME.png`` beside ``NAME_gt.png`` (and/or ``NAME_scribble.png``).

This is the layout of ``shared/data`` and the simplest one for users: any image whose stem
does not end in ``_gt`` / ``_scribble`` is a sample; its label maps are optional.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hrdv2.errors import ImageReadError
from hrdv2.io import IMAGE_SUFFIXES, read_image, read_labels

LABEL_SUFFIXES = ("_gt", "_scribble")


@dataclass
class Sample:
    name: str
    image_path: Path
    gt_path: Path | None
    scribble_path: Path | None

    def image(self) -> np.ndarray:
        return read_image(self.image_path)

    def gt(self) -> np.ndarray | None:
        return None if self.gt_path is None else read_labels(self.gt_path, self.image().shape)

    def scribble(self) -> np.ndarray | None:
        return None if self.scribble_path is None else read_labels(self.scribble_path, self.image().shape)


def _sibling(image_path: Path, suffix: str) -> Path | None:
    for ext in IMAGE_SUFFIXES:
        cand = image_path.with_name(image_path.stem + suffix + ext)
        if cand.exists():
            return cand
    return None


class FolderDataset:
    """Samples of a NAME.png + NAME_gt.png folder, sorted by name.

    ``require`` ("gt" or "scribble") keeps only samples that have that label map.
    """

    def __init__(self, root: str | Path, require: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ImageReadError(f"{self.root}: dataset root is not a folder.")
        samples = []
        for p in sorted(self.root.iterdir()):
            if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if any(p.stem.endswith(s) for s in LABEL_SUFFIXES):
                continue
            samples.append(Sample(p.stem, p, _sibling(p, "_gt"), _sibling(p, "_scribble")))
        if require is not None:
            samples = [s for s in samples if getattr(s, f"{require}_path") is not None]
        if not samples:
            want = f" with a NAME_{require}.png beside it" if require else ""
            raise ImageReadError(
                f"{self.root}: no images{want} found. Expected the layout NAME.png + NAME_gt.png "
                "(and/or NAME_scribble.png), label values 0 = ignore/unlabelled, 1..K = classes."
            )
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]
