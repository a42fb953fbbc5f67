"""The one way hrdv2 opens a checkpoint file (.pt/.pth/.ckpt through ``torch.load`` with
``weights_only=True``, or .safetensors): nothing in the file can run code while it loads.

Backbone weights, probe heads, LiFT / FeatUp checkpoints and training states all come through
``load_checkpoint``, so a missing, truncated or code-carrying file gives the same one-line
:class:`~hrdv2.errors.CheckpointError` everywhere (the caller names what it expected and the fix);
checking what the file holds (keys, shapes, format tags) stays with each caller.
Segmenter model files are not checkpoints: they go through ``hrdv2.segmentation``'s own loader.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

from hrdv2.errors import CheckpointError

_REASON_MAX = 200  # characters of the underlying error quoted in the message


def sha256_of(path: str | os.PathLike) -> str:
    """Hex digest of a file, read in 1 MiB chunks (checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:_REASON_MAX]


def _refusal(exc: BaseException) -> str | None:
    """The offending global (a function or class the file asks to import and call) when torch's
    restricted unpickler refused the file for it, else None (garbage bytes are no refusal)."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" not in text:
        return None
    for line in text.splitlines():
        if "global" in line.lower() and "unsupported" in line.lower():
            return line.strip()[:_REASON_MAX]
    return None


def load_checkpoint(path: str | os.PathLike, what: str, fix: str, sha256: str | None = None) -> Any:
    """What the checkpoint at ``path`` holds, loaded onto the CPU without running code.

    ``what`` names the expected kind ("click-head checkpoint", "dinov2_vits14 weights"); ``fix``
    is one sentence telling the user what to do instead; ``sha256``, when given, must match the
    file's digest (checked before loading). Every failure is a ``CheckpointError``.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a {what} file. {fix}")
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file does not exist. {fix}")
    if sha256:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise CheckpointError(f"{path}: sha256 {actual} does not match the published {sha256} for the {what}; "
                                  "the file is corrupt, truncated or not the official release: download it again.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        with warnings.catch_warnings():  # torch warns about pickle protocols it then handles
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, pickle, safetensors header errors of any kind
        refused = _refusal(exc)
        if refused is not None:
            raise CheckpointError(
                f"{path}: refused: the {what} file holds Python objects that would run code when loaded "
                f"({refused}); only tensors, numbers, strings and containers are loaded. {fix}") from exc
        raise CheckpointError(
            f"{path}: cannot be read as a {what} file; it is truncated, damaged or of another format "
            f"({type(exc).__name__}: {_first_line(exc)}). {fix}") from exc
