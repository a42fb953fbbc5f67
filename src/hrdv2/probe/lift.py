"""LiFT (Suri et al., ECCV 2024, "LiFT: A Surprisingly Simple Lightweight Feature Transform
for Dense ViT Descriptors") as a torch module: ViT patch features (B, C, h, w) + the image
-> features (B, C, 2h, 2w).

Architecture (as described in the paper and its released code; written here from that
description): a small CNN on the image gives guidance at 2x and 1x the patch grid
(3x3 stride-2 conv + BN + ReLU, twice, adaptive max-pooled to 2h x 2w: ``image_convs_1``;
once more at stride 2: ``image_convs_2``); the patch features concatenated with the 1x
guidance go through a 2x2 transposed convolution (``up1.up``), are concatenated with the 2x
guidance and mixed by two 3x3 conv + BN + ReLU (``up1.conv_1.double_conv``); a 1x1 conv
(``outc``) maps back to C channels. The attribute names reproduce the state-dict layout of
the published checkpoints (``lift_dino*.pth``: a plain state dict, possibly with a
``module.`` prefix), so those files load with ``load_lift_state``.

Self-supervised training (``hrdv2.probe.lift_train``): the target for LiFT(features of image
x, x) is the backbone's features of x resized to twice the size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import ConfigError

GUIDE = 32  # channels of the image guidance


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, bias: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(*_conv_bn_relu(cin, cout, bias=False), *_conv_bn_relu(cout, cout, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv_1 = _DoubleConv(cin // 2 + GUIDE, cout // 2)

    def forward(self, x: torch.Tensor, guide_2x: torch.Tensor) -> torch.Tensor:
        return self.conv_1(torch.cat([self.up(x), guide_2x], dim=1))


class LiFT(nn.Module):
    """(B, C, h, w) features + (B, 3, H, W) ImageNet-normalised image -> (B, C, 2h, 2w)."""

    def __init__(self, in_channels: int):
        super().__init__()
        if in_channels < 2:
            raise ConfigError(f"LiFT needs at least 2 feature channels, got {in_channels}.")
        self.in_channels = in_channels
        self.up1 = _Up(in_channels + GUIDE, in_channels)
        self.outc = nn.Conv2d(in_channels // 2, in_channels, kernel_size=1)
        self.image_convs_1 = nn.Sequential(*_conv_bn_relu(3, GUIDE, 2), *_conv_bn_relu(GUIDE, GUIDE, 2))
        self.image_convs_2 = nn.Sequential(*_conv_bn_relu(GUIDE, GUIDE, 2))

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        guide_2x = F.adaptive_max_pool2d(self.image_convs_1(image), (2 * h, 2 * w))
        guide_1x = self.image_convs_2(guide_2x)
        return self.outc(self.up1(torch.cat([features, guide_1x], dim=1), guide_2x))


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint file (weights_only: nothing in it runs); unwraps a
    ``state_dict`` entry (Lightning / hub files)."""
    path = Path(path)
    obj = load_checkpoint(path, f"{what} checkpoint", "Give the path of the published .pth/.ckpt file "
                          "(download it again if it is damaged).")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a {what} state dict (names -> tensors).")
    return obj


def lift_channels(state: dict[str, torch.Tensor]) -> int | None:
    w = state.get("outc.weight")
    return None if w is None else int(w.shape[0])


def load_lift_state(model: LiFT, path: str | Path) -> LiFT:
    """Load a LiFT checkpoint in the published layout (``module.`` prefixes are dropped)."""
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path, "LiFT").items()}
    c = lift_channels(state)
    if c is not None and c != model.in_channels:
        raise ConfigError(f"{path}: this LiFT was trained for {c}-channel features but the backbone gives "
                          f"{model.in_channels}; use the LiFT checkpoint made for this backbone.")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: not a LiFT state dict ({str(exc).splitlines()[0]}).") from exc
    return model
