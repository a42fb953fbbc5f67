"""The pad/crop policy that puts every patch feature back on its own pixels.

With patch size P and stride S, patch i of the padded image covers rows [iS, iS + P). Padding
the top/left by a = (P - S) // 2 centres patch i on the S x S cell of original rows
[iS, (i + 1)S), so the feature of pixel y is simply that of cell y // S. The grid is
gh = ceil(H / S) cells (at least 1); the bottom/right is padded until the last patch fits,
i.e. the padded height is (gh - 1) * S + P. Padding reflects the image (replicates it when the
image is smaller than the pad). Upsampling a grid is then an exact integer repeat by S
followed by a crop to (H, W), the inverse of the padding. At S = P and H divisible by P this
is exactly nearest resizing of the patch map to (H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PatchGeometry:
    height: int
    width: int
    patch: int
    stride: int

    @property
    def offset(self) -> int:
        """Top/left padding a = (P - S) // 2."""
        return (self.patch - self.stride) // 2

    @property
    def grid(self) -> tuple[int, int]:
        return max(1, math.ceil(self.height / self.stride)), max(1, math.ceil(self.width / self.stride))

    @property
    def padded(self) -> tuple[int, int]:
        gh, gw = self.grid
        return (gh - 1) * self.stride + self.patch, (gw - 1) * self.stride + self.patch

    def pads(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom), as F.pad wants them."""
        ph, pw = self.padded
        a = self.offset
        return a, pw - a - self.width, a, ph - a - self.height

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.pads()
        mode = "reflect" if max(left, right) < x.shape[-1] and max(top, bottom) < x.shape[-2] else "replicate"
        return F.pad(x, (left, right, top, bottom), mode=mode)

    def cell_of(self, coord: torch.Tensor) -> torch.Tensor:
        """Grid cell holding each pixel coordinate."""
        return torch.div(coord, self.stride, rounding_mode="floor")

    def upsample_nearest(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, gh, gw) -> (B, C, H, W) by repeating each cell S x S and cropping."""
        up = grid.repeat_interleave(self.stride, dim=-2).repeat_interleave(self.stride, dim=-1)
        return up[..., : self.height, : self.width]

    def upsample_interp(self, grid: torch.Tensor, mode: str) -> torch.Tensor:
        """Bilinear / bicubic with cell centres on their pixels' centres, then cropped to (H, W)."""
        gh, gw = grid.shape[-2:]
        up = F.interpolate(grid, size=(gh * self.stride, gw * self.stride), mode=mode, align_corners=False)
        return up[..., : self.height, : self.width]
