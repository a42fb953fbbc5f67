"""Baseline upsamplers of plain patch features, used for comparison (probe, benchmarks).

nearest / bilinear / bicubic: one ViT pass at the chosen stride, then the grid is resized to
the image with the same pad/crop policy as HR-Dv2 (cell centres on their own pixels). With
stride < P this is the "stride-only" baseline (overlapping patches, no transforms).
Like HR-Dv2, everything runs on the backbone's device and float32 results come back at the end.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from hrdv2.backbones import Backbone
from hrdv2.errors import ConfigError
from hrdv2.upsample.geometry import PatchGeometry
from hrdv2.upsample.highres import image_to_tensor, parse_dtype
from hrdv2.upsample.result import HighResResult

MODES = ("nearest", "bilinear", "bicubic")


def upsample_baseline(
    image: np.ndarray | torch.Tensor,
    backbone: Backbone,
    mode: str = "nearest",
    stride: int | None = None,
    dtype: str | torch.dtype | None = None,
    attention: bool = True,
    return_device: str | torch.device | None = "cpu",
) -> HighResResult:
    """Plain patch features (one forward pass) resized to the image by ``mode``, computed on the
    backbone's device; results on ``return_device`` (None: left on the backbone's device)."""
    if mode not in MODES:
        raise ConfigError(f"upsampling mode {mode!r} is unknown; use one of {MODES}.")
    start = time.perf_counter()
    stride = backbone.check_stride(stride)
    x = image_to_tensor(image, device=backbone.device)
    H, W = x.shape[-2:]
    geo = PatchGeometry(H, W, backbone.patch_size, stride)
    feats, attn = backbone.forward_patches(geo.pad(x), stride, with_attention=attention, dtype=parse_dtype(dtype))

    target = backbone.device if return_device is None else torch.device(return_device)

    def up(grid: torch.Tensor) -> torch.Tensor:
        full = geo.upsample_nearest(grid) if mode == "nearest" else geo.upsample_interp(grid, mode)
        return full.to(target)

    out, out_attn = up(feats)[0], None if attn is None else up(attn)[0]
    info = {"backbone": backbone.describe(), "untrained": not backbone.pretrained, "stride": stride,
            "grid": geo.grid, "transforms": 1, "mode": mode, "device": str(backbone.device),
            "seconds": time.perf_counter() - start}
    return HighResResult(out, out_attn, info)
