"""Patch geometries: where each patch feature of a (strided) ViT lands in the image.

``PatchGeometry`` (hrdv2's default, ``geometry="hrdv2"``) pads so every feature sits on its own
pixels; ``PublishedGeometry`` (``geometry="published"``) reproduces the published HR-Dv2 code,
which stretches an unpadded grid over the image. docs/geometry.md compares the two.

hrdv2's pad/crop policy, which puts every patch feature back on its own pixels.

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

from hrdv2.errors import ConfigError


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

    name = "hrdv2"

    def cell_of(self, coord: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """Grid cell holding each pixel coordinate (the same rule on both axes)."""
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


@dataclass(frozen=True)
class PublishedGeometry:
    """The published HR-Dv2 code's geometry (``hr_dv2/high_res.py``, tldr-group/HR-Dv2).

    No padding: the image itself goes through the strided patch embedding, so the grid is
    gh = 1 + (H - P) // S by gw = 1 + (W - P) // S, and the last (H - P) % S rows are seen by
    no patch of their own. The grid is then stretched over the whole image with
    ``F.interpolate(mode="nearest-exact", size=(H, W))``: pixel y reads cell
    min(floor((y + 0.5) * gh / H), gh - 1). At S = P with H, W multiples of P both geometries
    agree; at S < P features drift by up to (P - S) / 2 px towards the image centre.
    """

    height: int
    width: int
    patch: int
    stride: int
    name = "published"

    def __post_init__(self) -> None:
        if min(self.height, self.width) < self.patch:
            raise ConfigError(
                f"the published geometry needs images of at least the patch size ({self.patch} px) per side, got "
                f"{self.width}x{self.height}; use geometry 'hrdv2' (it pads small images)."
            )

    @property
    def offset(self) -> int:
        return 0

    @property
    def grid(self) -> tuple[int, int]:
        return 1 + (self.height - self.patch) // self.stride, 1 + (self.width - self.patch) // self.stride

    @property
    def padded(self) -> tuple[int, int]:
        return self.height, self.width

    def pads(self) -> tuple[int, int, int, int]:
        return 0, 0, 0, 0

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cell_of(self, coord: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """Cell read by each pixel coordinate along ``axis`` (0: rows, 1: columns), from torch's own
        nearest-exact kernel applied to the cell indices, so rounding is exactly torch's."""
        n_in, n_out = (self.grid[0], self.height) if axis == 0 else (self.grid[1], self.width)
        index = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
        lookup = F.interpolate(index, size=(n_out, 1), mode="nearest-exact").view(n_out).long()
        return lookup[coord.long()]

    def upsample_nearest(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, gh, gw) -> (B, C, H, W), the published resize."""
        return F.interpolate(grid, size=(self.height, self.width), mode="nearest-exact")


GEOMETRIES = ("hrdv2", "published")


def make_geometry(kind: str, height: int, width: int, patch: int, stride: int) -> PatchGeometry | PublishedGeometry:
    """The geometry called ``kind`` ("hrdv2" or "published") for an image of (height, width)."""
    check_geometry(kind)
    cls = PatchGeometry if kind == "hrdv2" else PublishedGeometry
    return cls(height, width, patch, stride)


def check_geometry(kind: str) -> str:
    if kind not in GEOMETRIES:
        raise ConfigError(f"geometry {kind!r} is unknown; use one of {list(GEOMETRIES)} (see docs/geometry.md).")
    return kind
