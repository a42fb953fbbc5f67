"""Guards for a server that may be reached through a tunnel.

* Uploads: size capped while streaming, type decided by the file's first bytes (never by its
  name), pixel count capped so a small compressed file cannot expand into gigabytes.
* Paths: a path sent by a client is only ever resolved inside one fixed root folder; ``..``,
  absolute paths and symlinks that leave the root are refused.
* Requests: the Host header must name this machine (defeats DNS rebinding) and a state-changing
  request from a page of another origin is refused (defeats cross-site form posts).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

# magic bytes -> (kind, suffix used when the upload is written to disk)
_MAGIC: list[tuple[bytes, str, str]] = [
    (b"\x89PNG\r\n\x1a\n", "png", ".png"),
    (b"\xff\xd8\xff", "jpeg", ".jpg"),
    (b"II*\x00", "tiff", ".tif"),
    (b"MM\x00*", "tiff", ".tif"),
    (b"II+\x00", "tiff", ".tif"),  # BigTIFF
    (b"MM\x00+", "tiff", ".tif"),
]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine only, with the address the OS would bind:
    every loopback spelling counts (127.0.0.0/8 in any form inet_aton takes, such as 127.1 or
    0x7f.1; ::1, also bracketed; ::ffff:127.0.0.1; localhost), so the Host check stays on."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name.rstrip(".") == "localhost":
        return True
    if not name:
        return False  # "" binds every interface
    try:  # numeric forms exactly as the OS reads them, names as the bind would resolve them
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(_loopback_address(a) for a in addresses)


def _loopback_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def loopback_host_names(host: str) -> list[str]:
    """The Host header names accepted when bound to loopback ``host``: the usual ones and the
    spelling given on the command line (a client may send ``127.1`` as typed)."""
    names = [*LOOPBACK_HOSTS]
    spelled = host.strip().lower()
    if spelled and spelled not in names:
        names.append(spelled)
    return names


class UploadRejected(Exception):
    """An upload that is refused; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_image_type(head: bytes) -> tuple[str, str]:
    """(kind, suffix) from the first bytes of a file; refuses anything but PNG, JPEG, TIFF."""
    for magic, kind, suffix in _MAGIC:
        if head.startswith(magic):
            return kind, suffix
    raise UploadRejected(
        415, "not a supported image: the file content is not PNG, JPEG or TIFF (its name is not checked, its bytes are)"
    )


def display_name(filename: str | None, fallback: str = "image") -> str:
    """A client-supplied file name reduced to a harmless label (never used as a path)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = _SAFE_NAME.sub("_", name).strip(" .")
    return (name or fallback)[:120]


class PathRefused(Exception):
    """A client path that would leave its root folder."""


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative`` if it stays inside ``root`` (after resolving symlinks), else PathRefused."""
    if not relative or "\x00" in relative:
        raise PathRefused("empty path")
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or re.match(r"^[A-Za-z]:", relative):
        raise PathRefused(f"{relative!r}: absolute paths are not accepted; give a path relative to the data folder")
    if any(part == ".." for part in rel.parts):
        raise PathRefused(f"{relative!r}: '..' is not allowed in paths")
    root = root.resolve()
    try:
        target = (root / Path(*rel.parts)).resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a symlink loop
        raise PathRefused(f"{relative!r}: cannot be resolved inside the data folder ({exc})") from exc
    if not target.is_relative_to(root):
        raise PathRefused(f"{relative!r}: resolves outside the data folder")
    return target


def _host_only(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: Host allow-list (optional) and same-origin check for unsafe methods."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None = None, max_body_bytes: int | None = None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host_header = request.headers.get("host", "")
        if self.allowed is not None and _host_only(host_header) not in self.allowed:
            response = PlainTextResponse(
                f"Host {host_header!r} is not allowed; open the app at http://127.0.0.1 or localhost "
                "(or start the server with --host to accept other names).",
                status_code=400,
            )
            await response(scope, receive, send)
            return
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if urlsplit(origin).netloc.lower() != host_header.lower():
                response = JSONResponse({"detail": f"cross-origin request from {origin} refused"}, status_code=403)
                await response(scope, receive, send)
                return
        if self.max_body is not None:
            await self._limited(scope, receive, send, request.headers.get("content-length"))
            return
        await self.app(scope, receive, send)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, length: str | None) -> None:
        """Run the app with the body capped: 413 whether the size is declared (Content-Length) or
        only found while a chunked body streams in. In the second case the app may already have
        turned the aborted read into its own error (a 400 from the form parser); that answer is
        replaced by the 413."""
        too_big = JSONResponse({"detail": f"request body larger than the limit of {self.max_body:,} bytes"},
                               status_code=413)
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await too_big(scope, receive, send)
            return
        seen = 0
        exceeded = replied = False

        async def counting() -> dict:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    exceeded = True
                    raise UploadRejected(413, "request body too large")
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal replied
            if not exceeded:
                replied = replied or message["type"] == "http.response.start"
                await send(message)
            elif not replied:  # the app's own answer to the aborted read is dropped
                replied = True
                await too_big(scope, receive, send)

        try:
            await self.app(scope, counting, guarded_send)
        except UploadRejected:
            if not exceeded:
                raise
        if exceeded and not replied:
            await too_big(scope, receive, send)
