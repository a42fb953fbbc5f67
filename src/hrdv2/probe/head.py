"""The trained probe (iSegProbe-style): a light click-conditioned head on frozen features.

The head sees the upsampled features (per-image z-scored, then a 1x1 projection) and three
click maps: positive-click disks, negative-click disks and the previous mask (RITM's
"mask guidance"). Two more channels carry the cosine similarity of every pixel's projected
feature to the mean projected feature under the positive (negative) click disks, so a click
can reach distant pixels of the same object without a deep network. A short stack of 3x3
convolutions (dilations 1, 2, 4 by default) mixes them and a 1x1 conv gives the mask logit:
what the head can do beyond the features is limited, so the features must carry the object.

Checkpoints (``save_head`` / ``load_head``) are plain ``torch.save`` dicts read back with
``weights_only=True`` (tensors, numbers and strings only: a checkpoint cannot run code). They
hold the head's architecture, its weights, the feature set-up it was trained on (backbone,
weights, upsampler, image size) and, for ``--resume``, the optimiser and RNG state.
Training lives in ``hrdv2.probe.training``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.probe.clicks import Click, Predictor

CHECKPOINT_FORMAT = "hrdv2-click-head"
CHECKPOINT_VERSION = 1


def encode_clicks(
    clicks: Sequence[Click], prev_mask: np.ndarray | None, shape: tuple[int, int], radius: int = 5
) -> torch.Tensor:
    """(3, H, W) float maps: positive disks, negative disks, previous mask (zeros if none)."""
    h, w = shape
    yy = torch.arange(h)[:, None]
    xx = torch.arange(w)[None, :]
    maps = torch.zeros(3, h, w)
    for c in clicks:
        disk = ((yy - c.y) ** 2 + (xx - c.x) ** 2) <= radius**2
        maps[0 if c.positive else 1][disk] = 1.0
    if prev_mask is not None:
        if np.shape(prev_mask) != (h, w):
            raise ShapeError(f"previous mask has shape {np.shape(prev_mask)}, expected {(h, w)}.")
        maps[2] = torch.from_numpy(np.asarray(prev_mask, np.float32))
    return maps


@dataclass(frozen=True)
class HeadConfig:
    """The architecture, stored in every checkpoint so a head is rebuilt exactly."""

    in_channels: int
    hidden: int = 32
    dilations: tuple[int, ...] = (1, 2, 4)
    radius: int = 5  # click disk radius in px (training and evaluation use the same)

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.hidden < 1 or self.radius < 0 or not self.dilations:
            raise ConfigError(
                f"head needs in_channels >= 1, hidden >= 1, radius >= 0 and at least one dilation; got "
                f"{self.in_channels}, {self.hidden}, {self.radius}, {self.dilations}."
            )


def normalise_features(features: torch.Tensor) -> torch.Tensor:
    """Per-channel z-score over each image ((C, H, W) or (B, C, H, W)), as the training-free
    segmenter does, so backbones and upsamplers of different scales meet the same head."""
    f = features.float()
    mean = f.mean(dim=(-2, -1), keepdim=True)
    std = f.std(dim=(-2, -1), keepdim=True)
    return (f - mean) / (std + 1e-6)


def _prototype_similarity(proj: torch.Tensor, disks: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (B, 1, H, W) of each pixel to the mean feature under ``disks``; 0 if no disk."""
    w = disks.sum(dim=(-2, -1), keepdim=True)  # (B, 1, 1, 1)
    proto = (proj * disks).sum(dim=(-2, -1), keepdim=True) / w.clamp_min(1.0)
    sim = F.cosine_similarity(proj, proto, dim=1, eps=1e-6)[:, None]
    return sim * (w > 0)


class ClickHead(nn.Module):
    """Features (B, C, H, W) + click maps (B, 3, H, W) -> mask logits (B, 1, H, W)."""

    def __init__(self, in_channels: int | HeadConfig, hidden: int = 32, dilations: Sequence[int] = (1, 2, 4),
                 radius: int = 5):
        super().__init__()
        cfg = in_channels if isinstance(in_channels, HeadConfig) else HeadConfig(
            int(in_channels), int(hidden), tuple(int(d) for d in dilations), int(radius))
        self.config = cfg
        self.in_channels = cfg.in_channels
        h = cfg.hidden
        self.proj = nn.Conv2d(cfg.in_channels, h, 1)
        self.clicks = nn.Conv2d(3, h, 3, padding=1)
        self.sim = nn.Conv2d(2, h, 1)
        layers: list[nn.Module] = [nn.GroupNorm(8 if h % 8 == 0 else 1, h), nn.GELU()]
        for d in cfg.dilations:
            layers += [nn.Conv2d(h, h, 3, padding=d, dilation=d), nn.GELU()]
        layers.append(nn.Conv2d(h, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, click_maps: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.in_channels or features.shape[-2:] != click_maps.shape[-2:] \
                or click_maps.shape[1] != 3:
            raise ShapeError(
                f"head expects features (B, {self.in_channels}, H, W) and click maps (B, 3, H, W); got "
                f"{tuple(features.shape)} and {tuple(click_maps.shape)}."
            )
        p = self.proj(features)
        sims = torch.cat([_prototype_similarity(p, click_maps[:, :1]), _prototype_similarity(p, click_maps[:, 1:2])], 1)
        return self.body(p + self.clicks(click_maps) + self.sim(sims))


class HeadSegmenter:
    """A trained ``ClickHead`` behind the same ``predictor(clicks, prev_mask)`` interface as
    the training-free ``ClickSegmenter``, so ``simulate`` and the metrics work unchanged."""

    def __init__(self, head: ClickHead, features: torch.Tensor, radius: int | None = None):
        if features.ndim != 3:
            raise ShapeError(f"features must be (C, H, W), got {tuple(features.shape)}.")
        if features.shape[0] != head.in_channels:
            raise ShapeError(
                f"the head was trained on {head.in_channels}-channel features but this upsampler gives "
                f"{features.shape[0]}; train a head for this backbone/upsampler (hrdv2 probe train)."
            )
        self.head = head.eval()
        self.radius = head.config.radius if radius is None else radius
        self.device = next(head.parameters()).device
        self.features = normalise_features(features)[None].to(self.device)
        self.shape = tuple(features.shape[-2:])

    @torch.inference_mode()
    def logits(self, clicks: Sequence[Click], prev_mask: np.ndarray | None = None) -> np.ndarray:
        maps = encode_clicks(clicks, prev_mask, self.shape, self.radius)[None].to(self.device)
        return self.head(self.features, maps)[0, 0].float().cpu().numpy()

    def predict(self, clicks: Sequence[Click], prev_mask: np.ndarray | None = None) -> np.ndarray:
        return self.logits(clicks, prev_mask) > 0

    def as_predictor(self) -> Predictor:
        return lambda clicks, prev: self.predict(clicks, prev)


# --------------------------------------------------------------------------- checkpoints


@dataclass
class HeadCheckpoint:
    """What ``load_head`` returns: the head, what it was trained on, and the training state."""

    head: ClickHead
    meta: dict[str, Any] = field(default_factory=dict)  # backbone, weights, upsampler, max_side, dataset...
    train_state: dict[str, Any] | None = None  # step, losses, optimiser, rng (for --resume)


def save_head(path: str | Path, head: ClickHead, meta: dict[str, Any] | None = None,
              train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename: a killed run never leaves half a file)."""
    from hrdv2.io import atomic_path

    cfg = asdict(head.config)
    cfg["dilations"] = list(cfg["dilations"])
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "meta": dict(meta or {}), "train_state": train_state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_head(path: str | Path, device: str | torch.device = "cpu") -> HeadCheckpoint:
    """Read a checkpoint written by ``save_head`` (weights_only: no code runs while loading)."""
    path = Path(path)
    payload = load_checkpoint(path, "click-head checkpoint", "Train one with `hrdv2 probe train --out DIR` "
                              "(it writes DIR/head.pt), or use --head none.")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not an hrdv2 click-head checkpoint (no format tag {CHECKPOINT_FORMAT!r}).")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: checkpoint version {payload['version']} is newer than this hrdv2 "
                          f"understands ({CHECKPOINT_VERSION}); upgrade hrdv2.")
    cfg = dict(payload["config"])
    cfg["dilations"] = tuple(cfg["dilations"])
    head = ClickHead(HeadConfig(**cfg))
    try:
        head.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ConfigError(f"{path}: weights do not fit the stored architecture ({str(exc).splitlines()[0]}).") from exc
    head.source = str(path)  # shown in probe.json as the evaluator
    return HeadCheckpoint(head.to(device).eval(), dict(payload.get("meta") or {}), payload.get("train_state"))
