"""Writing outputs atomically: every writer goes through ``atomic_path`` (a temporary file beside
the target, renamed over it), so an interrupted run never leaves a half-written file; output
paths are checked before work starts, and temporary files of killed runs are cleaned up."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from hrdv2.errors import ConfigError, HRDv2Error, OutputPathError
from hrdv2.io.decode import TIFF_SUFFIXES
from hrdv2.io.limits import _one_line

STALE_FOREIGN_PART_S = 24 * 3600  # temp files of another host: we cannot see its pids, so wait a day
STALE_LEGACY_PART_S = 3600  # temp files named without a pid (older hrdv2 versions)


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
