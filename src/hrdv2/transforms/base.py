"""Invertible image transforms on (B, C, H, W) tensors.

HR-Dv2 runs the ViT on transformed copies of an image and maps each result back with the
inverse, so every transform here is exact (no interpolation): integer periodic shifts, flips,
quarter turns, and compositions of them. ``coordinate_map`` tells the featurizer where each
original pixel lands in the transformed image, which is all the fast upsampler needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Transform(Protocol):
    """An exact, invertible transform of the last two (spatial) dimensions."""

    name: str

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def inverse(self, x: torch.Tensor) -> torch.Tensor: ...

    def output_size(self, height: int, width: int) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Identity:
    name: str = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width


@dataclass(frozen=True)
class Shift:
    """Periodic shift by (dy, dx) pixels: content moves down by dy and right by dx."""

    dy: int
    dx: int

    @property
    def name(self) -> str:
        return f"shift({self.dy},{self.dx})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(self.dy, self.dx), dims=(-2, -1))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=(-self.dy, -self.dx), dims=(-2, -1))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width


@dataclass(frozen=True)
class Flip:
    """Mirror: axis "h" flips left-right (width), "v" flips up-down (height). Self-inverse."""

    axis: str = "h"

    def __post_init__(self) -> None:
        if self.axis not in ("h", "v"):
            raise ValueError(f"Flip axis must be 'h' or 'v', got {self.axis!r}")

    @property
    def name(self) -> str:
        return f"flip_{self.axis}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=(-1,) if self.axis == "h" else (-2,))

    inverse = forward

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width


@dataclass(frozen=True)
class Rot90:
    """Rotation by k quarter turns (counter-clockwise). Odd k swaps height and width."""

    k: int = 1

    @property
    def name(self) -> str:
        return f"rot90({self.k % 4})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, self.k % 4, dims=(-2, -1))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, -(self.k % 4), dims=(-2, -1))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (width, height) if self.k % 2 else (height, width)


@dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` left to right; the inverse undoes them right to left."""

    transforms: tuple

    @property
    def name(self) -> str:
        return "+".join(t.name for t in self.transforms) or "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t.forward(x)
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        for t in reversed(self.transforms):
            x = t.inverse(x)
        return x

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for t in self.transforms:
            height, width = t.output_size(height, width)
        return height, width


@dataclass(frozen=True)
class PublishedCompose:
    """A composition as the published HR-Dv2 code builds it (``combine_transforms`` in
    ``hr_dv2/transform.py``): forward applies ``transforms`` left to right, and the map back
    applies their inverses in the SAME order, left to right. That is the exact inverse only
    when the parts commute; a shift followed by a flip comes back displaced by twice the
    shift along the flipped axis. Kept to reproduce the published results (flip set
    "published"); hrdv2's own :class:`Compose` inverts exactly."""

    transforms: tuple

    @property
    def name(self) -> str:
        return "published(" + "+".join(t.name for t in self.transforms) + ")"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t.forward(x)
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t.inverse(x)
        return x

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for t in self.transforms:
            height, width = t.output_size(height, width)
        return height, width


def coordinate_map(transform: Transform, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each original pixel (y, x) lands in the transformed image.

    Returns two (H, W) long tensors ``(ty, tx)``: the row and column, in the transformed image,
    of the pixel that came from (y, x). Computed by pulling a coordinate grid of the transformed
    image back through ``inverse``, so it is exact for any transform whose inverse only permutes
    pixels.
    """
    th, tw = transform.output_size(height, width)
    grid_y = torch.arange(th).view(th, 1).expand(th, tw)
    grid_x = torch.arange(tw).view(1, tw).expand(th, tw)
    coords = torch.stack([grid_y, grid_x]).unsqueeze(0)  # (1, 2, th, tw)
    back = transform.inverse(coords)[0]
    if tuple(back.shape[-2:]) != (height, width):
        raise ValueError(f"transform {transform.name} does not map {height}x{width} back to itself")
    return back[0], back[1]
