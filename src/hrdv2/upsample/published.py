"""The published HR-Dv2 code's positional-embedding interpolation, for ``geometry="published"``.

The published code (tldr-group/HR-Dv2, ``hr_dv2/patch.py``) replaces DINOv2's
``interpolate_pos_encoding`` with the older DINO-style one: the square table of patch
positions (side n = sqrt(N)) is resized bicubically (align_corners=False, no antialiasing) with
*scale factors* (gh + 0.1) / n and (gw + 0.1) / n, not with a target size, and the factors are
used as given (``recompute_scale_factor=False``), so sample positions are
(i + 0.5) * n / (g + 0.1) - 0.5 rather than timm's (i + 0.5) * n / g - 0.5. The 0.1 guards the
floor in the output size against rounding (facebookresearch/dino issue 8). When the grid has
exactly N patches and the image is square (H == W) the table is used unchanged. The
interpolation runs in float32 and is cast back to the model's dtype.

Nothing here changes the model: :func:`published_pos_embed` is handed to
``Backbone.forward_patches(pos_embed=...)`` in place of timm's own ``_pos_embed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError

OFFSET = 0.1  # added to the grid size before the scale factor is formed, as the published code does


def interpolate_patch_positions(table: torch.Tensor, grid: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """(1, N, C) patch-position table -> (1, gh * gw, C), the published way (see the module doc)."""
    n_pos, dim = table.shape[1], table.shape[2]
    side = int(math.sqrt(n_pos))
    gh, gw = grid
    if side * side != n_pos:
        raise ConfigError(f"the published geometry needs a square positional-embedding table; this backbone has "
                          f"{n_pos} positions. Use geometry 'hrdv2'.")
    if gh * gw == n_pos and image_hw[0] == image_hw[1]:
        return table
    square = table.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    out = F.interpolate(square, scale_factor=((gh + OFFSET) / side, (gw + OFFSET) / side), mode="bicubic",
                        align_corners=False, recompute_scale_factor=False)
    if tuple(out.shape[-2:]) != (gh, gw):  # the published code asserts the same
        raise ConfigError(f"published positional interpolation gave a {tuple(out.shape[-2:])} grid for {grid}.")
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, dim).to(table.dtype)


def published_pos_embed(model: torch.nn.Module, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Prefix tokens + patch tokens with positions added, as timm's ``_pos_embed`` lays them out
    ([CLS, registers..., patches]), but with the published interpolation.

    ``tokens``: (B, gh, gw, C) patch embeddings; ``image_hw``: the pixel size the grid came from.
    """
    B, gh, gw, C = tokens.shape
    x = tokens.reshape(B, gh * gw, C)
    prefix = []
    if getattr(model, "cls_token", None) is not None:
        prefix.append(model.cls_token.expand(B, -1, -1))
    if getattr(model, "reg_token", None) is not None:
        prefix.append(model.reg_token.expand(B, -1, -1))
    table = model.pos_embed
    if table is None:
        raise ConfigError("the published geometry interpolates a learnt positional-embedding table; this backbone has "
                          "none (rotary positions?). Use geometry 'hrdv2'.")
    if model.no_embed_class:  # positions for patches only (timm's DINOv2-with-registers layout)
        x = x + interpolate_patch_positions(table, (gh, gw), image_hw)
        x = torch.cat(prefix + [x], dim=1)
    else:  # the table starts with one entry per prefix token
        n_prefix = int(model.num_prefix_tokens)
        patch_pos = interpolate_patch_positions(table[:, n_prefix:], (gh, gw), image_hw)
        x = torch.cat(prefix + [x], dim=1) + torch.cat([table[:, :n_prefix], patch_pos], dim=1)
    return model.pos_drop(x)
