"""Salient-object sets: DUTS-TE and ECSSD (image folder + binary mask folder, matched by name).

Layouts (as distributed)::

    DUTS-TE/DUTS-TE-Image/NAME.jpg      DUTS-TE/DUTS-TE-Mask/NAME.png
    ECSSD/images/NAME.jpg               ECSSD/ground_truth_mask/NAME.png

``root`` may be the dataset folder itself or its parent. Masks are grey 0..255; > 127 is
foreground.
"""

from __future__ import annotations

from pathlib import Path

from hrdv2.datasets.localisation import LocSample, _ListDataset
from hrdv2.errors import ConfigError, ImageReadError
from hrdv2.io import list_images

LAYOUTS: dict[str, tuple[str, str, str]] = {
    # kind: (dataset folder, image folder, mask folder)
    "duts": ("DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask"),
    "ecssd": ("ECSSD", "images", "ground_truth_mask"),
}


def find_saliency_dirs(root: str | Path, kind: str) -> tuple[Path, Path]:
    if kind not in LAYOUTS:
        raise ConfigError(f"saliency dataset {kind!r} is unknown; use one of {sorted(LAYOUTS)}.")
    name, img_dir, mask_dir = LAYOUTS[kind]
    root = Path(root)
    for cand in (root, root / name):
        if (cand / img_dir).is_dir() and (cand / mask_dir).is_dir():
            return cand / img_dir, cand / mask_dir
    raise ImageReadError(
        f"{root}: not a {name} folder: expected {name}/{img_dir}/NAME.jpg and {name}/{mask_dir}/NAME.png "
        f"(root may be {name}/ or its parent)."
    )


class SaliencyDataset(_ListDataset):
    """Image + binary mask pairs; an image without a mask is an error (it would skew mIoU)."""

    def __init__(self, root: str | Path, kind: str = "duts"):
        self.name = kind
        img_dir, mask_dir = find_saliency_dirs(root, kind)
        masks = {p.stem: p for p in list_images(mask_dir)}
        samples = []
        for img in list_images(img_dir):
            if img.stem not in masks:
                raise ImageReadError(f"{img}: no mask {img.stem}.png in {mask_dir}.")
            samples.append(LocSample(img.stem, img, None, masks[img.stem], "binary"))
        if not samples:
            raise ImageReadError(f"{img_dir}: no images found.")
        self.samples = samples
