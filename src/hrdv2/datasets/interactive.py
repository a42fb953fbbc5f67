"""Readers for the interactive-segmentation benchmarks, as distributed with the RITM / f-BRS
releases, plus the generic labelled folder. Every reader yields ``ObjectSample``s: one image,
one object mask, one ignore mask (pixels left out of IoU and never clicked).

Layouts (``root`` is the dataset folder):

* GrabCut   ``data_GT/NAME.{jpg,bmp,...}`` + ``boundary_GT/NAME.bmp``; mask 255 = object,
  128 = uncertain band (ignored), 0 = background.
* Berkeley  ``images/NAME.*`` + ``masks/NAME.*``; same encoding as GrabCut.
* DAVIS     ``img/NAME.*`` + ``gt/NAME.*`` (the 345-image interactive set); any non-zero value
  (any channel) = object.
* SBD       ``img/NAME.jpg`` + ``inst/NAME.mat`` + ``train.txt`` / ``val.txt`` (the ``dataset/``
  folder of ``benchmark_RELEASE``; ``root`` may also be its parent). Instance maps come from the
  ``GTinst.Segmentation`` field of the .mat file; each instance is one sample; 255, if present,
  is ignored.
* folder    ``NAME.png`` + ``NAME_gt.png`` (hrdv2's own layout, e.g. ``shared/data/grabcut``):
  0 = ignore, 1 = background, every other class id gives one sample (object = that class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError, ShapeError
from hrdv2.io import IMAGE_SUFFIXES, read_image

DATASETS = ("grabcut", "berkeley", "davis", "sbd", "folder")


@dataclass
class ObjectSample:
    """One object to segment. ``load()`` reads (image, object mask, ignore mask) lazily."""

    name: str
    image_path: Path
    _loader: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, obj, ignore = self._loader()
        if obj.shape != image.shape[:2] or ignore.shape != image.shape[:2]:
            raise ShapeError(
                f"{self.image_path}: mask is {obj.shape[1]}x{obj.shape[0]} (WxH) but the image is "
                f"{image.shape[1]}x{image.shape[0]}; they must be the same size."
            )
        if not (obj & ~ignore).any():
            raise ShapeError(f"{self.name}: the object mask is empty; remove this sample or fix its mask.")
        return image, obj, ignore


class InteractiveDataset:
    """A list of ``ObjectSample``s with a name (used in result tables)."""

    def __init__(self, name: str, samples: list[ObjectSample]):
        if not samples:
            raise ImageReadError(f"dataset {name!r}: no samples found.")
        self.name = name
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[ObjectSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> ObjectSample:
        return self.samples[i]


def _grey(arr: np.ndarray, how: str) -> np.ndarray:
    if arr.ndim == 2:
        return arr.astype(np.int64)
    return (arr[..., 0] if how == "first" else arr.max(axis=-1)).astype(np.int64)


def _find(folder: Path, stem: str, path_for_error: Path) -> Path:
    for ext in IMAGE_SUFFIXES:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.exists():
                return cand
    raise ImageReadError(f"{path_for_error}: no mask named {stem}.* in {folder}.")


def _need_dirs(root: Path, layout: str, *names: str) -> list[Path]:
    dirs = [root / n for n in names]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        hint = " It holds NAME_gt files: use --dataset folder." if root.is_dir() and any(root.glob("*_gt.*")) else ""
        raise ImageReadError(
            f"{root}: not a {layout} dataset folder, missing {', '.join(missing)}. Expected the RITM/f-BRS "
            f"layout {root}/{names[0]}/ + {root}/{names[1]}/.{hint}"
        )
    return dirs


def _paired(root: Path, name: str, image_dir: str, mask_dir: str, decode: Callable[[np.ndarray], tuple]) -> InteractiveDataset:
    img_dir, msk_dir = _need_dirs(Path(root), name, image_dir, mask_dir)
    samples = []
    for p in sorted(img_dir.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask_path = _find(msk_dir, p.stem, p)

        def loader(p: Path = p, mask_path: Path = mask_path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            obj, ignore = decode(read_image(mask_path))
            return read_image(p), obj, ignore

        samples.append(ObjectSample(p.stem, p, loader))
    return InteractiveDataset(name, samples)


def _decode_grabcut(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = _grey(mask, "first")
    return m > 128, m == 128


def _decode_davis(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = _grey(mask, "max")
    return m > 0, np.zeros(m.shape, bool)


def grabcut(root: str | Path) -> InteractiveDataset:
    return _paired(Path(root), "grabcut", "data_GT", "boundary_GT", _decode_grabcut)


def berkeley(root: str | Path) -> InteractiveDataset:
    return _paired(Path(root), "berkeley", "images", "masks", _decode_grabcut)


def davis(root: str | Path) -> InteractiveDataset:
    return _paired(Path(root), "davis", "img", "gt", _decode_davis)


def read_sbd_instances(path: str | Path) -> np.ndarray:
    """The instance-id map (H, W) of an SBD ``inst/NAME.mat`` file (field GTinst.Segmentation)."""
    from scipy.io import loadmat

    try:
        gt = loadmat(str(path))["GTinst"]
        seg = gt["Segmentation"][0, 0]
    except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
        raise ImageReadError(f"{path}: not an SBD instance file with a GTinst.Segmentation field ({exc}).") from exc
    return np.asarray(seg, dtype=np.int64)


def sbd(root: str | Path, split: str = "val", min_area: int = 1) -> InteractiveDataset:
    """SBD, one sample per instance of each image listed in ``{split}.txt``."""
    root = Path(root)
    if split not in ("train", "val"):
        raise ConfigError(f"SBD split must be 'train' or 'val', got {split!r}.")
    if not (root / "img").is_dir() and (root / "dataset" / "img").is_dir():
        root = root / "dataset"
    img_dir, inst_dir = _need_dirs(root, "sbd", "img", "inst")
    split_file = root / f"{split}.txt"
    if not split_file.exists():
        raise ImageReadError(f"{split_file}: SBD split list missing (expected {split}.txt beside img/ and inst/).")
    samples = []
    for stem in (s.strip() for s in split_file.read_text().splitlines()):
        if not stem:
            continue
        img_path = _find(img_dir, stem, split_file)
        inst_path = inst_dir / f"{stem}.mat"
        if not inst_path.exists():
            raise ImageReadError(f"{inst_path}: listed in {split_file} but missing.")
        inst = read_sbd_instances(inst_path)
        ids, counts = np.unique(inst, return_counts=True)
        for i, n in zip(ids, counts):
            if i in (0, 255) or n < min_area:
                continue

            def loader(img_path: Path = img_path, inst_path: Path = inst_path, i: int = int(i)):
                m = read_sbd_instances(inst_path)
                return read_image(img_path), m == i, m == 255

            samples.append(ObjectSample(f"{stem}#{int(i)}", img_path, loader))
    return InteractiveDataset("sbd", samples)


def folder(root: str | Path, background_id: int = 1) -> InteractiveDataset:
    """hrdv2's NAME.png + NAME_gt.png folder; one sample per class id other than 0 and background."""
    from hrdv2.datasets.folder import FolderDataset

    ds = FolderDataset(root, require="gt")
    samples = []
    for s in ds:
        gt = s.gt()
        for cid in (int(c) for c in np.unique(gt)):
            if cid in (0, background_id):
                continue

            def loader(s=s, cid: int = cid):
                g = s.gt()
                return s.image(), g == cid, g == 0

            name = s.name if np.setdiff1d(np.unique(gt), [0, background_id]).size == 1 else f"{s.name}#{cid}"
            samples.append(ObjectSample(name, s.image_path, loader))
    return InteractiveDataset(Path(root).name or "folder", samples)


def load_interactive(kind: str, root: str | Path, split: str = "val") -> InteractiveDataset:
    """Reader by name: grabcut | berkeley | davis | sbd | folder."""
    kind = kind.lower()
    if kind == "sbd":
        return sbd(root, split)
    readers = {"grabcut": grabcut, "berkeley": berkeley, "davis": davis, "folder": folder}
    if kind not in readers:
        raise ConfigError(f"unknown dataset layout {kind!r}; choose one of {', '.join(DATASETS)}.")
    return readers[kind](root)
