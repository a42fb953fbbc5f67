"""SAM image encoders (timm ``samvit_*``) at stride P and, where windowed attention allows, S < P.

SAM's encoder has no CLS token (so no CLS attention), mostly *windowed* blocks (attention
within 14 x 14 token windows, with a learnt relative-position bias for offsets of whole
patches) and a few global blocks, followed by a convolutional neck (1x1 conv, 3x3 conv).

At stride S < P the token grid is P/S times denser. A windowed block run on it as is would
see windows covering (14 S)^2 px instead of (14 P)^2 px, with neighbours S px apart read as
P px apart. Instead, when k = P / S is an integer, the strided grid is k x k interleaved
stride-P grids (tokens with the same (row mod k, column mod k)); each windowed block runs on
each of them separately, so every window holds tokens exactly P px apart, as in training.
Global blocks run on the whole strided grid: timm resamples their relative-position table to
the grid's size, so one token of offset spans S/P of a patch (the same rule timm applies to
any image size). The neck's 3x3 convolution is dilated by k for the same reason. When S does
not divide P there is no such decomposition and the stride is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hrdv2.backbones.facets import Signals, facet_tokens
from hrdv2.errors import ConfigError


def _windowed(model: torch.nn.Module) -> bool:
    return any(getattr(b, "window_size", 0) > 0 for b in model.blocks)


def check_sam_stride(model: torch.nn.Module, name: str, stride: int, patch: int) -> None:
    """Refuse strides whose grid is not a set of interleaved stride-P grids (or rotary SAM variants at S < P)."""
    if stride == patch:
        return
    if getattr(model, "rope_global", None) is not None or getattr(model, "rope_window", None) is not None:
        raise ConfigError(f"{name} uses rotary positions in windows, supported at stride {patch} only; "
                          f"use --stride {patch}.")
    if _windowed(model) and patch % stride:
        divisors = ", ".join(str(d) for d in range(patch, 0, -1) if patch % d == 0)
        raise ConfigError(f"{name} uses windowed attention, which needs the stride to divide the patch size {patch} "
                          f"(so each window still holds tokens {patch} px apart): use --stride {divisors}; got {stride}.")


def _per_phase(block: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``block`` applied to each of the k x k interleaved stride-P sub-grids of ``x`` (B, H, W, C);
    sub-grids of equal shape share one call."""
    B = x.shape[0]
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a in range(k):
        for b in range(k):
            groups.setdefault(tuple(x[:, a::k, b::k].shape[1:3]), []).append((a, b))
    out = torch.empty_like(x)
    for phases in groups.values():
        y = block(torch.cat([x[:, a::k, b::k] for a, b in phases]))
        for j, (a, b) in enumerate(phases):
            out[:, a::k, b::k] = y[j * B:(j + 1) * B]
    return out


def _neck(neck: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """The neck on (B, C, H, W), its spatial convolutions dilated by k (per stride-P sub-grid)."""
    if k == 1:
        return neck(x)
    for m in neck:
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):
            pad = tuple(p * k for p in m.padding)
            x = F.conv2d(x, m.weight, m.bias, stride=1, padding=pad, dilation=k)
        else:
            x = m(x)
    return x


def run_sam(model: torch.nn.Module, x: torch.Tensor, stride: int, signals: Signals) -> torch.Tensor:
    """(B, gh, gw, C) features of the SAM encoder for the facet and layer in ``signals``.

    Token facet of the last block: the neck's output (what SAM's decoder reads); of an earlier
    block: that block's output. Key/query/value: from the block's norm1 and qkv projection."""
    from timm.layers import resample_abs_pos_embed_nhwc

    patch = int(model.patch_embed.patch_size[0])
    k = patch // stride if stride != patch else 1
    proj = model.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=stride).permute(0, 2, 3, 1)  # (B, gh, gw, C)
    tokens = model.patch_embed.norm(tokens)
    if model.pos_embed is not None:
        tokens = tokens + resample_abs_pos_embed_nhwc(model.pos_embed, tokens.shape[1:3])
    tokens = model.norm_pre(model.patch_drop(model.pos_drop(tokens)))
    B, gh, gw, _ = tokens.shape
    last = len(model.blocks) - 1
    for i in range(signals.layer + 1):
        blk = model.blocks[i]
        if i == signals.layer and signals.facet != "token":
            flat = blk.norm1(tokens).reshape(B, gh * gw, -1)
            return facet_tokens(blk.attn, flat, signals.facet).reshape(B, gh, gw, -1)
        tokens = _per_phase(blk, tokens, k) if k > 1 and blk.window_size > 0 else blk(tokens)
    if signals.layer < last:
        return tokens
    return _neck(model.neck, tokens.permute(0, 3, 1, 2), k).permute(0, 2, 3, 1)
