"""How much memory hrdv2 may use: the decode budget of one image (``HRDV2_MAX_IMAGE_BYTES``,
else a third of the available memory, cgroup limits included) and the check before large
work (``HRDV2_MAX_MEMORY_BYTES``); refusals name the file, the sizes and the fix."""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path

import numpy as np

from hrdv2.errors import ConfigError, ImageTooLargeError, ResourceLimitError

MAX_IMAGE_BYTES_ENV = "HRDV2_MAX_IMAGE_BYTES"
MAX_MEMORY_BYTES_ENV = "HRDV2_MAX_MEMORY_BYTES"
# While reading, the decoder's buffer, the array and one converted copy coexist: one image may
# take a third of the memory that is available.
IMAGE_BUDGET_DIVISOR = 3
TOO_LARGE_FIX = (
    f"crop/tile it, or raise {MAX_IMAGE_BYTES_ENV} (e.g. {MAX_IMAGE_BYTES_ENV}=64G); "
    "block-wise processing of large images is planned."
)


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
