"""Images, label maps and stacks as hrdv2 uses them (conventions in ``hrdv2.io``'s docstring):
pixel dtypes checked (NaN/inf refused), class ids checked (never rounded), [0, 1] floats, and
the image files of folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hrdv2.errors import ImageReadError, ShapeError
from hrdv2.io.decode import IMAGE_SUFFIXES, _read_pages

MAX_LABEL = 65535  # label maps are returned as uint16 at most


def _as_image_dtype(arr: np.ndarray, where: str) -> np.ndarray:
    """uint8 / uint16 kept, bool -> 0/255, other numbers -> float32; NaN/inf refused (see module docstring)."""
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind not in "uif":
        raise ImageReadError(f"{where}: pixels of type {arr.dtype} are not supported; save it as 8/16-bit or float32.")
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ImageReadError(
                f"{where}: {bad:,} pixels are NaN/inf; replace them (e.g. with the image minimum) before using it."
            )
        if arr.dtype.itemsize > 4 and arr.size and float(np.abs(arr).max()) > float(np.finfo(np.float32).max):
            raise ImageReadError(
                f"{where}: values reach {float(np.abs(arr).max()):.3g}, beyond float32's range (3.4e38); rescale it."
            )
    return arr.astype(np.float32)


def read_stack(path: str | os.PathLike, max_bytes: int | None = None) -> list[np.ndarray]:
    """All pages of a (multi-page) TIFF, or the single image of any other file.

    ``max_bytes`` caps the decoded size (default: ``image_budget_bytes()``).
    """
    path = Path(path)
    pages = _read_pages(path, max_bytes)
    many = len(pages) > 1
    return [_as_image_dtype(p, f"{path} (page {i})" if many else str(path)) for i, p in enumerate(pages)]


def read_image(path: str | os.PathLike, max_bytes: int | None = None) -> np.ndarray:
    """One image as stored (first page of a stack). See the module docstring for conventions."""
    path = Path(path)
    return _as_image_dtype(_read_pages(path, max_bytes)[0], str(path))


def _label_ids(arr: np.ndarray, path: Path) -> np.ndarray:
    """Class ids as uint8 / uint16; anything that is not a whole number in 0..65535 is refused."""
    fix = "Save class ids 0 (unlabelled) and 1..K as 8- or 16-bit grey."
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.uint8)
    if kind not in "uif":
        raise ImageReadError(f"{path}: label map of type {arr.dtype}; expected integer class ids. {fix}")
    if kind == "f":
        n_bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise ImageReadError(f"{path}: label map has {n_bad:,} NaN/inf pixels; expected class ids 0..K. {fix}")
        frac = arr != np.floor(arr)
        n_frac = int(np.count_nonzero(frac))
        if n_frac:
            raise ImageReadError(
                f"{path}: label map has {n_frac:,} non-integer values (e.g. {float(arr[frac][0]):g}); class ids must "
                f"be whole numbers and are not rounded for you. {fix}"
            )
    lo, hi = arr.min(), arr.max()
    if lo < 0:
        n_neg = int(np.count_nonzero(arr < 0))
        raise ImageReadError(
            f"{path}: label map has {n_neg:,} negative values (lowest {float(lo):g}); expected class ids 0..K. {fix}"
        )
    if hi > MAX_LABEL:
        raise ImageReadError(
            f"{path}: label map holds class id {float(hi):g}, above the maximum {MAX_LABEL}; renumber the classes "
            f"1..K. {fix}"
        )
    return arr.astype(np.uint16 if hi > 255 else np.uint8)


def read_labels(
    path: str | os.PathLike, shape: tuple[int, ...] | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """A single-channel integer label map (0 = unlabelled/ignore) as uint8/uint16; checks its size against ``shape``."""
    path = Path(path)
    arr = _read_pages(path, max_bytes)[0]
    if arr.ndim == 3:
        raise ImageReadError(
            f"{path}: label maps must be single-channel (class id per pixel) but this one has colour channels "
            f"{arr.shape}. Save it as 8-bit grey with values 0 (unlabelled) and 1..K."
        )
    arr = _label_ids(arr, path)
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise ShapeError(
            f"{path}: label map is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is {shape[1]}x{shape[0]}; "
            "they must be the same size."
        )
    return arr


def read_label_stack(path: str | os.PathLike, max_bytes: int | None = None) -> list[np.ndarray]:
    """Every page of a label stack (or the one label map of a single image), each checked as
    :func:`read_labels` checks one: single-channel whole numbers 0..65535."""
    path = Path(path)
    pages = _read_pages(path, max_bytes)
    for page in pages:
        if page.ndim == 3:
            raise ImageReadError(
                f"{path}: label maps must be single-channel (class id per pixel) but this one has colour channels "
                f"{page.shape}. Save it as 8-bit grey with values 0 (unlabelled) and 1..K."
            )
    return [_label_ids(page, path) for page in pages]


def to_float01(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]; uint8 / 255, anything else min-max rescaled (a constant image maps to 0)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    arr = image.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo)


def to_rgb01(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: grey is repeated on three channels."""
    arr = to_float01(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return arr


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder.")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


LABEL_MAP_SUFFIXES = ("_gt", "_scribble")


def expand_inputs(inputs: list[str | os.PathLike], block_formats: bool = False) -> list[Path]:
    """Files stay files; folders expand to the images inside them, skipping label maps
    (NAME_gt.*, NAME_scribble.*) that sit beside their images. ``block_formats``: also the
    arrays block-wise runs read (``*.zarr`` folders, ``.npy`` files)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not (block_formats and p.suffix == ".zarr"):
            found = list_images(p)
            if block_formats:
                found = sorted(found + [f for f in p.iterdir() if f.suffix in (".zarr", ".npy")])
            out.extend(f for f in found if not f.name.split(".")[0].endswith(LABEL_MAP_SUFFIXES))
        else:
            out.append(p)
    return out
