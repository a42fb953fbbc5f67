"""Decoding one file into its pages (PIL for PNG/JPEG/BMP/WebP, tifffile for TIFF, hrdv2.timeseries
for video), with the size checked from the header first; whatever a decoder raises becomes an
``ImageReadError`` naming the file. Channels are normalised here, dtypes are kept."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from hrdv2.errors import HRDv2Error, ImageReadError, ImageTooLargeError, ShapeError
from hrdv2.io.limits import TOO_LARGE_FIX, _fmt_bytes, _one_line, check_decoded_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
MIN_SIDE = 4  # smaller images cannot hold a meaningful patch grid or filter response
# Decoders PIL may use for non-TIFF suffixes; never EPS (it runs Ghostscript) or other exotic formats.
PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "WEBP", "TIFF")
# Deflate cannot compress better than ~1032:1, so a PNG smaller than its pixels / this is cut short or forged.
DEFLATE_MAX_RATIO = 1100
_PIL_OPEN_LOCK = threading.Lock()  # guards the short window in which PIL's own pixel limit is lifted


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """The decode boundary: whatever a decoder raises becomes an ``ImageReadError`` naming the file."""
    from PIL import Image

    try:
        yield
    except HRDv2Error:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{path}: too large to decode safely ({_one_line(exc)}); {TOO_LARGE_FIX}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(f"{path}: ran out of memory while decoding it; {TOO_LARGE_FIX}") from exc
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error, zlib.error, ...
        raise ImageReadError(
            f"{path}: not a readable {what} ({_one_line(exc)}). Supported: PNG, JPEG, TIFF, BMP, WebP; "
            "re-export or re-copy the file."
        ) from exc


def _check_exists(path: Path) -> None:
    try:
        exists, is_dir, is_file = path.exists(), path.is_dir(), path.is_file()
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot be accessed ({_one_line(exc)}).") from exc
    if not exists:
        raise ImageReadError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if is_dir:
        raise ImageReadError(f"{path}: is a folder, expected an image file.")
    if not is_file:
        raise ImageReadError(f"{path}: not a regular file (a device or pipe?); expected an image file.")


def _normalise_channels(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """Squeeze to (H, W) grey or (H, W, 3) colour; drop alpha; grey-out equal RGB channels. Keeps the dtype."""
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
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _pil_decoded_shape(im: object) -> tuple[tuple[int, ...], np.dtype]:
    """(H, W, bands) and dtype of what decoding ``im`` will produce (palette counted as RGBA)."""
    mode: str = im.mode  # type: ignore[attr-defined]
    width, height = im.size  # type: ignore[attr-defined]
    if mode in ("I", "F"):
        return (height, width, 1), np.dtype(np.int32 if mode == "I" else np.float32)
    if mode.startswith("I;16"):
        return (height, width, 1), np.dtype(np.uint16)
    bands = 4 if mode in ("P", "PA") else len(im.getbands())  # type: ignore[attr-defined]
    return (height, width, bands), np.dtype(np.uint8)


def _check_png_plausible(path: Path) -> None:
    """Refuse a PNG whose header declares more pixels than its bytes can possibly hold."""
    with open(path, "rb") as fh:
        head = fh.read(33)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < 33 or head[12:16] != b"IHDR":
        return  # PIL decides
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        return
    pixel_bytes = width * height * depth * channels // 8
    if pixel_bytes > DEFLATE_MAX_RATIO * size:
        raise ImageReadError(
            f"{path}: header declares {width}x{height} px ({_fmt_bytes(pixel_bytes)} of pixels) but the file holds "
            f"only {size:,} bytes, less than any PNG compression allows: it is truncated or forged. Re-export it."
        )


@contextlib.contextmanager
def _pil_limit_lifted() -> Iterator[None]:
    """PIL refuses over ~179 Mpx itself, before the header can be read; hrdv2 applies its own
    memory budget instead, so PIL's limit is lifted for the header parse only, under a lock."""
    from PIL import Image

    with _PIL_OPEN_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_pil(path: Path, max_bytes: int | None) -> np.ndarray:
    from PIL import Image

    Image.init()  # register every plugin: which ones a Pillow build has differs (MPO may be JPEG's)
    formats = [f for f in PIL_FORMATS if f in Image.OPEN]
    with _pil_limit_lifted():
        im = Image.open(path, formats=formats)  # header only: nothing decoded yet
    with im:
        shape, dtype = _pil_decoded_shape(im)
        check_decoded_size(path, shape, dtype, max_bytes)
        if im.format == "PNG":
            _check_png_plausible(path)
        mode = im.mode
        if mode in ("P", "PA"):
            im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        elif mode.startswith("I;16"):
            return np.asarray(im, dtype=np.uint16)
        elif mode == "I":
            return np.asarray(im, dtype=np.int32)
        elif mode in ("CMYK", "YCbCr"):
            im = im.convert("RGB")
        return np.asarray(im)


def _read_tiff(path: Path, max_bytes: int | None) -> list[np.ndarray]:
    import tifffile

    file_size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)  # headers (IFDs) only
        if not pages:
            raise ImageReadError(f"{path}: TIFF holds no image pages.")
        # pages of different sizes come back as several series: refuse rather than drop pages
        sizes = [tuple(p.shape[:2]) for p in pages]
        for i, size in enumerate(sizes):
            if size != sizes[0]:
                raise ShapeError(f"{path}: page {i} is {size} but page 0 is {sizes[0]}; all pages must share a size.")
        series = tif.series[0] if tif.series else None
        shape = tuple(series.shape) if series is not None else (len(pages), *pages[0].shape)
        dtype = series.dtype if series is not None else pages[0].dtype
        if dtype is None:
            raise ImageReadError(f"{path}: TIFF sample format is not supported; save it as 8/16-bit or float32.")
        first = pages[0]
        page_shape = (int(first.imagelength), int(first.imagewidth), int(first.samplesperpixel))
        per_page = math.prod(page_shape)
        n_pages = max(1, math.prod(shape) // per_page) if per_page else len(pages)
        check_decoded_size(path, page_shape if page_shape[2] > 1 else page_shape[:2], dtype, max_bytes, pages=n_pages)
        for i, page in enumerate(pages):
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                if count and offset + count > file_size:
                    raise ImageReadError(
                        f"{path}: page {i} refers to pixel data beyond the end of the file ({offset + count:,} > "
                        f"{file_size:,} bytes): it is truncated. Re-export or re-copy it."
                    )
        data = np.asarray(series.asarray() if series is not None else tif.asarray())
        axes = series.axes if series is not None else ""
    if data.ndim == 2 or (data.ndim == 3 and "S" in axes):  # grey, or one colour image (contig/planar)
        return [data]
    if data.ndim == 3:
        return list(data)
    if data.ndim == 4:
        return list(data.reshape(-1, *data.shape[-3:]))
    raise ImageReadError(f"{path}: TIFF of shape {data.shape} (axes {axes!r}) is not an image or a stack.")


def _video_suffixes() -> tuple[str, ...]:
    from hrdv2.timeseries import VIDEO_SUFFIXES

    return VIDEO_SUFFIXES


def _read_pages(path: Path, max_bytes: int | None) -> list[np.ndarray]:
    """All pages with channels normalised and the stored dtype kept; sizes checked."""
    _check_exists(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        with _decoding(path, "TIFF"):
            raw = _read_tiff(path, max_bytes)
    elif path.suffix.lower() in _video_suffixes():  # every frame of a video is a page (hrdv2.timeseries)
        from hrdv2.timeseries import read_video

        with _decoding(path, "video"):
            raw = read_video(path, max_bytes)
    else:
        with _decoding(path, "image"):
            raw = [_read_pil(path, max_bytes)]
    if not raw:
        raise ImageReadError(f"{path}: holds no pixels (an empty stack); re-export it.")
    pages = [_normalise_channels(p, path) for p in raw]
    first = pages[0].shape[:2]
    for i, page in enumerate(pages):
        if page.shape[:2] != first:
            raise ShapeError(
                f"{path}: page {i} is {page.shape[:2]} but page 0 is {first}; all pages must share a size."
            )
        if min(page.shape[:2]) < MIN_SIDE:
            raise ImageReadError(
                f"{path}: image is {page.shape[1]}x{page.shape[0]} px; hrdv2 needs at least {MIN_SIDE} px per side."
            )
    return pages
