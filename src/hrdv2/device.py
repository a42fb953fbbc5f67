"""Where computation runs: one parser for every ``--device`` / ``device=`` value.

The featurizer and backbones put every tensor they create on the backbone's device, so the
device is chosen once (here) and checked against this machine before any weights are loaded:
a bad value is a one-line error naming it and the fix, never a CUDA traceback mid-run.
"""

from __future__ import annotations

import torch

from hrdv2.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def _cuda(index: int | None, text: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device {text}: no CUDA device on this machine (torch.cuda.is_available() is False); use --device cpu"
        )
    count = torch.cuda.device_count()
    if index is None:
        index = torch.cuda.current_device()
    if index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        raise ConfigError(f"--device {text}: this machine has {count} CUDA device(s) ({have}); use one of them or --device cpu")
    return torch.device("cuda", index)  # always indexed, so it compares equal to the weights' device


def _mps(text: str) -> torch.device:
    if not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {text}: no Apple MPS device on this machine (torch.backends.mps.is_available() is False); "
            "use --device cpu"
        )
    return torch.device("mps")


def resolve_device(name: str | torch.device | None = "cpu") -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"`` (None = auto: CUDA, else MPS,
    else CPU) as a ``torch.device`` that exists on this machine; ConfigError otherwise."""
    if name is None:
        name = "auto"
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda(None, "auto")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps" or text == "mps:0":
        return _mps(text)
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text[len("cuda:"):] if ":" in text else ""
        if index_text and not index_text.isdigit():
            raise ConfigError(f"--device {name!r} is not a device; write cuda:N with N a GPU number, e.g. cuda:0")
        return _cuda(int(index_text) if index_text else None, text)
    raise ConfigError(f"--device {name!r} is not a device; use one of {', '.join(DEVICE_CHOICES)}")
