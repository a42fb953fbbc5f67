"""Rotary position embeddings (RoPE) at the true positions of strided patches.

EVA-style timm ViTs (DINOv3, EVA02, the ``vit_*_rope_*`` family) rotate queries and keys by
angles proportional to each patch's position. With a patch-embedding stride S < P the
patches overlap, and patch i starts at pixel i*S: in units of the model's own patch grid it
sits at u_i = i*S/P, not at i. A table built for a gh x gw grid (what the model would use
at stride P) would place the strided patches as if they were P apart, stretching the image
by P/S. Here the sin/cos are computed directly at u_i, with the module's own frequencies and
its own coordinate convention:

- DINOv3 (``RotaryEmbeddingDinoV3``): patch centres (u + 0.5 + offset) normalised by the extent
  of the image in patches (Hp/P, Wp/P for the padded image) and mapped to [-1, 1];
- ``RotaryEmbeddingCat``, ``index`` grids (EVA02): u + offset, rescaled to the reference grid
  (``ref_feat_shape``) by the image's extent in patches when the model has one; ``pixel``
  grids: u mapped linearly onto [-1, 1] over the extent; ``centered`` grids as DINOv3.

At S = P these are exactly timm's own tables (tested), so one code path serves every stride.
"""

from __future__ import annotations

import torch

from hrdv2.errors import ConfigError


def _layout(x: torch.Tensor, rotate_half: bool) -> torch.Tensor:
    """Per-frequency values (N, D/2) -> the (N, D) layout rotation expects: [f0..fk, f0..fk] for
    half rotation, [f0, f0, f1, f1, ...] for interleaved rotation (timm's two conventions)."""
    return torch.cat([x, x], dim=-1) if rotate_half else x.repeat_interleave(2, -1)


def _axis_positions(count: int, stride: int, patch: int) -> torch.Tensor:
    """u_i = i * S / P: where strided patch i starts, in units of the model's patch grid."""
    return torch.arange(count, dtype=torch.float32) * (float(stride) / float(patch))


def _stack(ty: torch.Tensor, tx: torch.Tensor, indexing: str) -> torch.Tensor:
    """(gh * gw, 2) row-major coordinates; channel order (y, x) for 'ij', (x, y) for 'xy'."""
    gy, gx = torch.meshgrid(ty, tx, indexing="ij")
    channels = (gy, gx) if indexing == "ij" else (gx, gy)
    return torch.stack(channels, dim=-1).reshape(-1, 2)


def _centered(u: torch.Tensor, extent: float, offset: float) -> torch.Tensor:
    return (u + 0.5 + offset) / extent


def strided_rope(rope: torch.nn.Module, grid: tuple[int, int], stride: int, patch: int,
                 padded: tuple[int, int]) -> torch.Tensor:
    """(gh * gw, 2 * head_dim) concatenated [sin, cos] for the strided patch grid of a padded
    (Hp, Wp) image, in the layout ``rope.get_embed`` returns, on the rope's device."""
    gh, gw = grid
    uy, ux = _axis_positions(gh, stride, patch), _axis_positions(gw, stride, patch)
    ny, nx = padded[0] / patch, padded[1] / patch  # image extent in patches (fractional when S < P)
    kind = type(rope).__name__
    indexing = getattr(rope, "grid_indexing", "ij")
    if kind == "RotaryEmbeddingDinoV3":
        norm = rope.normalize_coords
        dy, dx = {"separate": (ny, nx), "min": (min(ny, nx),) * 2, "max": (max(ny, nx),) * 2}[norm]
        off = float(rope.grid_offset)
        coords = 2.0 * _stack(_centered(uy, dy, off), _centered(ux, dx, off), indexing) - 1.0
        sin, cos = rope._get_pos_embed_from_coords(coords)  # the module's own periods and layout
        return torch.cat([sin, cos], dim=-1)
    if kind == "RotaryEmbeddingCat" and getattr(rope, "pos_embed", None) is None:
        off, ref, grid_type = float(rope.grid_offset), rope.ref_feat_shape, rope.grid_type
        if grid_type == "index":
            ty, tx = uy + off, ux + off
        elif grid_type == "pixel":  # linspace(-1, 1, n) at fractional indices
            ty = 2.0 * uy / (ny - 1.0) - 1.0 if ny > 1 else uy - 1.0
            tx = 2.0 * ux / (nx - 1.0) - 1.0 if nx > 1 else ux - 1.0
        elif grid_type == "centered" and rope.normalize_coords == "separate":
            ty, tx = _centered(uy, ny, off), _centered(ux, nx, off)
        else:
            raise ConfigError(f"rotary embedding grid {grid_type!r} is not supported at stride {stride} < "
                              f"patch size {patch}; use --stride {patch}.")
        if ref is not None:  # EVA's rescaling onto the pre-training grid
            ty, tx = ty / ny * ref[0], tx / nx * ref[1]
        if grid_type == "centered":
            ty, tx = 2.0 * ty - 1.0, 2.0 * tx - 1.0
        coords = _stack(ty, tx, indexing).to(rope.bands.device)
        angles = (coords[:, :, None] * rope.bands[None, None, :]).flatten(1)  # (N, 2 * bands)
        return torch.cat([_layout(angles.sin(), rope.rotate_half), _layout(angles.cos(), rope.rotate_half)], dim=-1)
    raise ConfigError(f"{kind} rotary embeddings are supported at the patch stride only; use --stride {patch}.")
