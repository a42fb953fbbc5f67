"""Reading images, label maps and stacks; writing outputs atomically.

Conventions (documented in the README, relied on everywhere):

* ``read_image`` returns the pixels as stored: ``(H, W)`` for grey, ``(H, W, 3)`` for colour,
  dtype uint8 / uint16 / float32. Palette images become RGB (or grey when all channels are
  equal); an alpha channel is dropped (the colour channels are kept unchanged).
* ``to_float01`` maps any image to float32 in [0, 1]: uint8 is divided by 255; uint16, other
  integer and float images are min-max rescaled (16-bit micrographs rarely use the full range).
* Float images holding NaN or inf are **refused**, not sanitised: any replacement value would
  be a guess that changes results (min-max scaling, features, statistics), so the user chooses.
* Label maps (scribbles, ground truth) are single-channel integer arrays: 0 = unlabelled /
  ignore, 1..K = class ids (K <= 65535). Negative, non-integer, NaN/inf or larger values are
  refused, never rounded or clipped.
* Sizes are checked from the header before decoding: an image whose decoded pixels would need
  more than the budget (``HRDV2_MAX_IMAGE_BYTES``, default a third of available memory) is
  refused, and so is a file far smaller than its declared pixels could compress to.
* Any failure to decode (garbage, truncation, unsupported variant) is an ``ImageReadError``
  naming the file and the cause; no decoder exception escapes.
* Every writer goes through ``atomic_path``: the data lands in a temporary file beside the
  target and is renamed over it, so an interrupted run never leaves a half-written file. New
  files get the permissions a plain ``open()`` gives (0666 minus the umask); an overwritten
  file keeps its mode. Temporary files of killed runs are removed on the next write.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import secrets
import socket
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from hrdv2.errors import (
    ConfigError,
    HRDv2Error,
    ImageReadError,
    ImageTooLargeError,
    OutputPathError,
    ResourceLimitError,
    ShapeError,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
TIFF_SUFFIXES = (".tif", ".tiff")
MIN_SIDE = 4  # smaller images cannot hold a meaningful patch grid or filter response
MAX_LABEL = 65535  # label maps are returned as uint16 at most
# Decoders PIL may use for non-TIFF suffixes; never EPS (it runs Ghostscript) or other exotic formats.
PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "WEBP", "TIFF")
MAX_IMAGE_BYTES_ENV = "HRDV2_MAX_IMAGE_BYTES"
MAX_MEMORY_BYTES_ENV = "HRDV2_MAX_MEMORY_BYTES"
# While reading, the decoder's buffer, the array and one converted copy coexist: one image may
# take a third of the memory that is available.
IMAGE_BUDGET_DIVISOR = 3
# Deflate cannot compress better than ~1032:1, so a PNG smaller than its pixels / this is cut short or forged.
DEFLATE_MAX_RATIO = 1100
STALE_FOREIGN_PART_S = 24 * 3600  # temp files of another host: we cannot see its pids, so wait a day
STALE_LEGACY_PART_S = 3600  # temp files named without a pid (older hrdv2 versions)
TOO_LARGE_FIX = (
    f"crop/tile it, or raise {MAX_IMAGE_BYTES_ENV} (e.g. {MAX_IMAGE_BYTES_ENV}=64G); "
    "block-wise processing of large images is planned."
)
_PIL_OPEN_LOCK = threading.Lock()  # guards the short window in which PIL's own pixel limit is lifted


# ---------------------------------------------------------------------------------------------
# memory budget


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers happy


def _parse_bytes(text: str, name: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise ConfigError(f"{name}={text!r}: not a size; give bytes or a number with K/M/G/T, e.g. {name}=16G.")
    return int(float(m[1]) * 1024 ** "_kmgt".index(m[2].lower() or "_"))


def _env_bytes(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    return _parse_bytes(text, name) if text else None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """Memory left under this process's cgroup limit: containers are often capped below the RAM.

    Usage counts reclaimable page cache, so inactive file pages are not counted as used.
    """
    v2_dir = "/sys/fs/cgroup"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                v2_dir = "/sys/fs/cgroup" + line[3:].rstrip("/")
    candidates = (
        (f"{v2_dir}/memory.max", f"{v2_dir}/memory.current", f"{v2_dir}/memory.stat", "inactive_file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
    )
    for limit_file, usage_file, stat_file, inactive_key in candidates:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 1 << 60:  # "max" or the v1 "unlimited" sentinel
            continue
        inactive = 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        return max(0, limit - max(0, usage - inactive))
    return None


def available_memory_bytes() -> int:
    """Memory this process can still use: MemAvailable, capped by a cgroup limit (containers)."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    if not found:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if not found:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
    headroom = _cgroup_headroom()
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else 4 << 30  # unknown platform: assume a modest machine


def image_budget_bytes() -> int:
    """Most bytes one decoded image (all its pages) may take: ``HRDV2_MAX_IMAGE_BYTES``, else a
    third of the available memory."""
    env = _env_bytes(MAX_IMAGE_BYTES_ENV)
    return env if env is not None else available_memory_bytes() // IMAGE_BUDGET_DIVISOR


def estimate_bytes(shape: tuple[int, ...] | list[int], dtype: np.dtype | type | str) -> int:
    """Bytes of an array of this shape and dtype (exact Python integer: no overflow for forged sizes)."""
    return math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize


def _describe(shape: tuple[int, ...], pages: int) -> str:
    if len(shape) >= 2:
        text = f"{shape[1]}x{shape[0]} px"
        if len(shape) == 3 and shape[2] != 1:
            text += f", {shape[2]} channels"
    else:
        text = f"shape {tuple(shape)}"
    return text + (f" x {pages} pages" if pages != 1 else "")


def check_decoded_size(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    dtype: np.dtype | type | str,
    max_bytes: int | None = None,
    *,
    pages: int = 1,
) -> int:
    """Refuse (``ImageTooLargeError``) an image whose decoded pixels would exceed the budget.

    ``shape`` is one page as (H, W) or (H, W, C); ``pages`` multiplies it. The budget is
    ``max_bytes``, else ``image_budget_bytes()``. Returns the bytes needed.
    """
    need = estimate_bytes(shape, dtype) * max(1, int(pages))
    if max_bytes is not None:
        budget, source = int(max_bytes), "the caller's limit"
    elif os.environ.get(MAX_IMAGE_BYTES_ENV, "").strip():
        budget, source = image_budget_bytes(), MAX_IMAGE_BYTES_ENV
    else:
        budget, source = image_budget_bytes(), f"1/{IMAGE_BUDGET_DIVISOR} of available memory"
    if need > budget:
        raise ImageTooLargeError(
            f"{path}: declares {_describe(tuple(shape), pages)} ({np.dtype(dtype)}), which needs "
            f"{_fmt_bytes(need)} to decode, over the budget of {_fmt_bytes(budget)} ({source}); {TOO_LARGE_FIX}"
        )
    return need


def require_memory(
    nbytes: int, what: str, path: str | os.PathLike | None = None, available: int | None = None
) -> None:
    """Refuse (``ResourceLimitError``) work that would need more memory than is available.

    ``what`` names the work ("features for this image"); ``available`` defaults to
    ``available_memory_bytes()``. ``HRDV2_MAX_MEMORY_BYTES`` overrides both (e.g. to lean on swap).
    """
    env = _env_bytes(MAX_MEMORY_BYTES_ENV)
    if env is not None:
        limit, source = env, MAX_MEMORY_BYTES_ENV
    else:
        limit = available if available is not None else available_memory_bytes()
        source = "available memory"
    if nbytes > limit:
        where = f"{path}: " if path is not None else ""
        raise ResourceLimitError(
            f"{where}{what} needs about {_fmt_bytes(nbytes)} but only {_fmt_bytes(limit)} is allowed ({source}); "
            f"crop/tile the input or free memory, or set {MAX_MEMORY_BYTES_ENV} higher to try anyway; "
            "block-wise processing of large images is planned."
        )


# ---------------------------------------------------------------------------------------------
# reading


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


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


# ---------------------------------------------------------------------------------------------
# writing


def check_writable(path: str | os.PathLike, kind: Literal["file", "folder"] = "file") -> Path:
    """Refuse (``OutputPathError``) an output path that cannot be written, before any work starts.

    Catches: a parent that is a file, a read-only or inaccessible folder, an existing folder
    where a file is expected and vice versa. Creates nothing.
    """
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', not {kind!r}")
    p = Path(path)
    try:
        if kind == "file" and p.is_dir():
            raise OutputPathError(f"{p}: is an existing folder, but a file is expected here; give a file name.")
        if kind == "folder" and (p.exists() or p.is_symlink()) and not p.is_dir():
            raise OutputPathError(f"{p}: is an existing file, but a folder is expected here; give another path.")
        # the folder that must accept new entries: the target folder itself, else the nearest existing ancestor
        probe = p if kind == "folder" and p.is_dir() else p.parent
        while not probe.exists() and probe != probe.parent:
            if probe.is_symlink():
                raise OutputPathError(f"{p}: cannot be created: {probe} is a broken link; fix or remove it.")
            probe = probe.parent
        if not probe.is_dir():
            raise OutputPathError(f"{p}: cannot be created: {probe} is a file, not a folder; choose another path.")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputPathError(
                f"{p}: cannot write into {probe} (read-only or no permission); choose another output path."
            )
    except (OSError, ValueError) as exc:
        if isinstance(exc, HRDv2Error):
            raise
        raise OutputPathError(f"{p}: not a usable output path ({_one_line(exc)}).") from exc
    return p


def _host_tag() -> str:
    """8 hex digits naming this machine: pids in temp names are only meaningful on their own host."""
    return hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


_PART_RE = re.compile(r"(?P<host>[0-9a-f]{8})-(?P<pid>\d{1,10})-[0-9a-f]{8}\.part")
_LEGACY_PART_RE = re.compile(r"[A-Za-z0-9_]{8}\.part")  # tempfile.mkstemp names of older versions


def _part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.part{target.suffix}")


def _pid_alive(pid: int) -> bool:
    """False only when certain the process is gone (unknown counts as alive: never delete a live writer's file)."""
    if pid <= 0 or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:
        return False  # not a possible pid
    except OSError:
        return True  # EPERM: alive, owned by someone else
    return True


def remove_stale_parts(target: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed runs left beside ``target``; return what was removed.

    A temp file names its host and pid: on this host it is stale once that pid is gone; from
    another host (shared folder) after a day; old pid-less names after an hour. A concurrent
    live writer's file is never touched.
    """
    target = Path(target)
    prefix, suffix = f".{target.name}.", target.suffix
    host, now = _host_tag(), time.time()
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        middle = entry.name[len(prefix) : len(entry.name) - len(suffix)]
        if not entry.name.endswith(".part" + suffix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        age = now - st.st_mtime
        if m := _PART_RE.fullmatch(middle):
            stale = not _pid_alive(int(m["pid"])) if m["host"] == host else age > STALE_FOREIGN_PART_S
        elif _LEGACY_PART_RE.fullmatch(middle):
            stale = age > STALE_LEGACY_PART_S
        else:
            continue
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


_WRITE_FULL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On any exception the temporary file is removed and ``target`` is left as it was. The new
    file gets 0666 minus the umask (created with ``os.open(..., 0o666)``, which applies the
    umask without reading it), or the mode of the file it replaces. Stale temporary files of
    killed runs for the same target are removed first.
    """
    target = Path(target)
    check_writable(target, "file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(target)
        tmp_path = _part_path(target)
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OutputPathError(
            f"{target}: cannot create an output file here ({_one_line(exc)}); choose another path."
        ) from exc
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if exc.errno in _WRITE_FULL_ERRNOS:
                raise OutputPathError(
                    f"{target}: writing failed ({_one_line(exc)}); free space or choose another output folder. "
                    "Any previous file is unchanged."
                ) from exc
            raise
        with contextlib.suppress(OSError):  # overwrite keeps the old file's mode (setuid & co. not copied)
            os.chmod(tmp_path, stat.S_IMODE(os.stat(target).st_mode) & 0o777)
        try:
            os.replace(tmp_path, target)
        except OSError as exc:
            raise OutputPathError(f"{target}: could not put the new file in place ({_one_line(exc)}).") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_image(path: str | os.PathLike, array: np.ndarray, *, pages: bool = False) -> Path:
    """Write a label map or picture as PNG or TIFF (chosen by suffix), atomically.

    PNG takes uint8 / uint16 grey or uint8 RGB(A); TIFF takes any dtype (float probability maps).
    ``pages=True`` writes a (N, H, W[, C]) stack as N grey pages: without it a stack of 3 or 4
    pages would be stored, and read back, as one colour image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + (".png",):
        raise ConfigError(f"{path}: unsupported output type {suffix!r}; use .png or .tif.")
    if suffix == ".png" and array.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"{path}: PNG needs uint8/uint16 data, got {array.dtype}; use .tif for floats.")
    with atomic_path(path) as tmp:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            if pages:
                tifffile.imwrite(tmp, array, photometric="minisblack")
            else:
                tifffile.imwrite(tmp, array)
        else:
            from PIL import Image

            Image.fromarray(array).save(tmp, format="PNG")
    return path


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)
