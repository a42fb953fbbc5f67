"""Optional trained probe (iSegProbe-style): a light click-conditioned head on frozen features.

For machines with a GPU and SBD; nothing here is trained by default. The head sees the
upsampled features (1x1 projection) plus three click maps: positive-click disks, negative-click
disks, previous mask. Two 3x3 conv blocks mix them and a 1x1 conv gives the mask logit, so
what the head can do beyond the features is limited to a small neighbourhood: the features
must carry the object's extent.

Training follows the iterative protocol of RITM: for each sample, a random number of clicks
is simulated with ``next_click`` on the head's own (no-grad) predictions, then the loss is
taken on the prediction after the last click (BCE, ignore pixels excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.probe.clicks import Click, Predictor, next_click


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


class ClickHead(nn.Module):
    """Features (B, C, H, W) + click maps (B, 3, H, W) -> mask logits (B, 1, H, W)."""

    def __init__(self, in_channels: int, hidden: int = 64):
        super().__init__()
        if in_channels < 1 or hidden < 1:
            raise ConfigError(f"in_channels and hidden must be >= 1, got {in_channels}, {hidden}.")
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, hidden, 1)
        self.clicks = nn.Conv2d(3, hidden, 3, padding=1)
        self.body = nn.Sequential(
            nn.GroupNorm(8 if hidden % 8 == 0 else 1, hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, features: torch.Tensor, click_maps: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != self.in_channels or features.shape[-2:] != click_maps.shape[-2:]:
            raise ShapeError(
                f"head expects features (B, {self.in_channels}, H, W) and click maps (B, 3, H, W); got "
                f"{tuple(features.shape)} and {tuple(click_maps.shape)}."
            )
        return self.body(self.proj(features) + self.clicks(click_maps))


@dataclass
class HeadTrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    max_train_clicks: int = 10
    radius: int = 5
    seed: int = 0
    device: str = "cpu"


def _normalise(features: torch.Tensor) -> torch.Tensor:
    """Per-channel z-score over the image, as the training-free segmenter does."""
    f = features.float()
    mean = f.mean(dim=(-2, -1), keepdim=True)
    std = f.std(dim=(-2, -1), keepdim=True)
    return (f - mean) / (std + 1e-6)


def train_head(
    head: ClickHead,
    samples: Sequence[tuple[torch.Tensor, np.ndarray, np.ndarray | None]],
    config: HeadTrainConfig | None = None,
) -> list[float]:
    """Train ``head`` on (features (C, H, W), object mask, ignore mask or None) samples; returns losses."""
    config = config or HeadTrainConfig()
    if not samples:
        raise ConfigError("train_head needs at least one sample.")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    dev = torch.device(config.device)
    head.to(dev).train()
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr)
    losses = []
    for _ in range(config.steps):
        feats, gt, ignore = samples[int(rng.integers(len(samples)))]
        gt = np.asarray(gt, bool)
        f = _normalise(feats)[None].to(dev)
        n_clicks = int(rng.integers(1, config.max_train_clicks + 1))
        clicks: list[Click] = []
        prev: np.ndarray | None = None
        with torch.no_grad():  # simulate the user on the head's own predictions
            for _ in range(n_clicks - 1):
                c = next_click(gt, prev, ignore, rng)
                if c is None:
                    break
                clicks.append(c)
                maps = encode_clicks(clicks, prev, gt.shape, config.radius)[None].to(dev)
                prev = (head(f, maps)[0, 0] > 0).cpu().numpy()
        c = next_click(gt, prev, ignore, rng)
        if c is not None:
            clicks.append(c)
        maps = encode_clicks(clicks, prev, gt.shape, config.radius)[None].to(dev)
        logits = head(f, maps)[0, 0]
        target = torch.from_numpy(gt.astype(np.float32)).to(dev)
        weight = torch.ones_like(target) if ignore is None else torch.from_numpy((~np.asarray(ignore, bool)).astype(np.float32)).to(dev)
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses


class HeadSegmenter:
    """A trained ``ClickHead`` behind the same ``predictor(clicks, prev_mask)`` interface as
    the training-free ``ClickSegmenter``, so ``simulate`` and the metrics work unchanged."""

    def __init__(self, head: ClickHead, features: torch.Tensor, radius: int = 5):
        if features.ndim != 3:
            raise ShapeError(f"features must be (C, H, W), got {tuple(features.shape)}.")
        self.head = head.eval()
        self.radius = radius
        self.device = next(head.parameters()).device
        self.features = _normalise(features)[None].to(self.device)
        self.shape = tuple(features.shape[-2:])

    @torch.inference_mode()
    def predict(self, clicks: Sequence[Click], prev_mask: np.ndarray | None = None) -> np.ndarray:
        maps = encode_clicks(clicks, prev_mask, self.shape, self.radius)[None].to(self.device)
        return (self.head(self.features, maps)[0, 0] > 0).cpu().numpy()

    def as_predictor(self) -> Predictor:
        return lambda clicks, prev: self.predict(clicks, prev)


def iter_training_samples(
    dataset: Iterable, upsampler, backbone, max_side: int | None = None
) -> list[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """Featurise an ``InteractiveDataset`` once (frozen upsampler) for ``train_head``."""
    from hrdv2.probe.runner import downsize
    from hrdv2.probe.upsamplers import check_features

    out = []
    for s in dataset:
        image, obj, ignore = s.load()
        image, (obj, ignore) = downsize(image, (obj, ignore), max_side)
        out.append((check_features(upsampler(image, backbone), image, upsampler.name), obj, ignore))
    return out
