"""Reading images, label maps and stacks; writing outputs atomically.

Conventions (documented in the README, relied on everywhere):

* ``read_image`` returns the pixels as stored: ``(H, W)`` for grey, ``(H, W, 3)`` for colour,
  dtype uint8 / uint16 / float32. Palette images become RGB (or grey when all channels are
  equal); an alpha channel is dropped (the colour channels are kept unchanged).
* ``to_float01`` maps any image to float32 in [0, 1]: uint8 is divided by 255; uint16, other
  integer and float images are min-max rescaled (16-bit micrographs rarely use the full range).
* Label maps (scribbles, ground truth) are single-channel integer arrays: 0 = unlabelled /
  ignore, 1..K = class ids.
* Every writer goes through ``atomic_path``: the data lands in a temporary file beside the
  target and is renamed over it, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from hrdv2.errors import ImageReadError, ShapeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
MIN_SIDE = 4  # smaller images cannot hold a meaningful patch grid or filter response


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file.")


def _normalise_channels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Squeeze to (H, W) grey or (H, W, 3) colour; drop alpha; grey-out equal RGB channels."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:  # RGBA: keep colour, drop alpha
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(
        arr[..., 0], arr[..., 2]
    ):
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ImageReadError(
            f"{path}: unsupported image shape {arr.shape}; expected (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA."
        )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            elif im.mode == "I":
                return np.asarray(im, dtype=np.int32)
            elif im.mode == "CMYK" or im.mode == "YCbCr":
                im = im.convert("RGB")
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc}). Supported: PNG, JPEG, TIFF, BMP, WebP.") from exc


def read_stack(path: str | os.PathLike) -> list[np.ndarray]:
    """All pages of a (multi-page) TIFF, or the single image of any other file."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0] if tif.series else None
                data = series.asarray() if series is not None else tif.asarray()
                axes = series.axes if series is not None else ""
                # pages of different sizes come back as several series: refuse rather than drop pages
                sizes = [tuple(p.shape[:2]) for p in tif.pages]
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise ImageReadError(f"{path}: not a readable TIFF ({exc}).") from exc
        for i, size in enumerate(sizes):
            if size != sizes[0]:
                raise ShapeError(f"{path}: page {i} is {size} but page 0 is {sizes[0]}; all pages must share a size.")
        data = np.asarray(data)
        if data.ndim == 2 or (data.ndim == 3 and "S" in axes):  # grey, or one colour image (contig/planar)
            pages = [data]
        elif data.ndim == 3:
            pages = list(data)
        elif data.ndim == 4:
            pages = list(data.reshape(-1, *data.shape[-3:]))
        else:
            raise ImageReadError(f"{path}: TIFF of shape {data.shape} (axes {axes!r}) is not an image or a stack.")
        pages = [_normalise_channels(p, path) for p in pages]
    else:
        pages = [_normalise_channels(_read_pil(path), path)]
    first = pages[0].shape[:2]
    for i, page in enumerate(pages):
        if page.shape[:2] != first:
            raise ShapeError(f"{path}: page {i} is {page.shape[:2]} but page 0 is {first}; all pages must share a size.")
        if min(page.shape[:2]) < MIN_SIDE:
            raise ImageReadError(
                f"{path}: image is {page.shape[1]}x{page.shape[0]} px; hrdv2 needs at least {MIN_SIDE} px per side."
            )
    return pages


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image as stored (first page of a stack). See the module docstring for conventions."""
    return read_stack(path)[0]


def read_labels(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A single-channel integer label map (0 = unlabelled/ignore); checks its size against ``shape``."""
    path = Path(path)
    arr = read_stack(path)[0]
    if arr.ndim == 3:
        raise ImageReadError(
            f"{path}: label maps must be single-channel (class id per pixel) but this one has colour channels "
            f"{arr.shape}. Save it as 8-bit grey with values 0 (unlabelled) and 1..K."
        )
    if arr.dtype.kind == "f":
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ImageReadError(f"{path}: label map holds non-integer values; expected class ids 0..K.")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ImageReadError(f"{path}: label map holds negative values; expected class ids 0..K.")
    if shape is not None and tuple(arr.shape) != tuple(shape[:2]):
        raise ShapeError(
            f"{path}: label map is {arr.shape[1]}x{arr.shape[0]} (WxH) but its image is {shape[1]}x{shape[0]}; "
            "they must be the same size."
        )
    return arr.astype(np.uint16 if arr.max() > 255 else np.uint8)


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


def expand_inputs(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files stay files; folders expand to the images inside them, skipping label maps
    (NAME_gt.*, NAME_scribble.*) that sit beside their images."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(f for f in list_images(p) if not f.stem.endswith(LABEL_MAP_SUFFIXES))
        else:
            out.append(p)
    return out


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On any exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a label map or picture as PNG or TIFF (chosen by suffix), atomically.

    PNG takes uint8 / uint16 grey or uint8 RGB(A); TIFF takes any dtype (float probability maps).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            tifffile.imwrite(tmp, array)
        elif suffix == ".png":
            from PIL import Image

            if array.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"{path}: PNG needs uint8/uint16 data, got {array.dtype}; use .tif for floats.")
            Image.fromarray(array).save(tmp, format="PNG")
        else:
            raise ValueError(f"{path}: unsupported output type {suffix!r}; use .png or .tif.")
    return path


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)
