"""What a ViT pass returns besides the last block's tokens: facets and CLS-attention signals.

Facets ("Deep ViT Features as Dense Visual Descriptors", Amir et al. 2022): the ``token``
output of a block, or the ``key``, ``query`` or ``value`` that block's attention computes
from its input. Keys and queries are taken after the model's own q/k normalisation and
*before* any rotary position embedding: the rotation encodes where a token sits, and two
identical patches at different places would otherwise get different descriptors.

Attention signals of the CLS token in the last block, per head:

- ``softmax``: the CLS row of softmax(q k^T / sqrt(d)) over the patch tokens;
- ``o``: the CLS token's attention output o = softmax(q_cls k^T / sqrt(d)) V dotted with every
  token's value, o . v_j (the signal the published HR-Dv2 code offers for its unsupervised
  experiments, there computed from the memory-efficient attention output).

Everything is computed from the block's own modules (qkv projection, q/k norms, the rotary
embedding the block receives), through forward pre-hooks on the attention modules: the
model itself is never modified, and the fused attention kernel stays in use.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError

FACETS = ("token", "key", "query", "value")
ATTENTIONS = ("softmax", "o")


def check_facet(facet: str) -> str:
    if facet not in FACETS:
        raise ConfigError(f"unknown facet {facet!r}; choose one of {', '.join(FACETS)}.")
    return facet


def check_attention_kind(kind: str) -> str:
    if kind not in ATTENTIONS:
        raise ConfigError(f"unknown attention signal {kind!r}; choose softmax (CLS attention) or o "
                          "(CLS attention output dotted with each value, as in the published HR-Dv2 code).")
    return kind


def resolve_layer(layer: int | None, depth: int, name: str = "the backbone") -> int:
    """Block index in 0..depth-1; None is the last block, negative values count from the end."""
    if layer is None:
        return depth - 1
    layer = int(layer)
    if not -depth <= layer < depth:
        raise ConfigError(f"layer {layer} is out of range for {name} ({depth} blocks): use 0..{depth - 1} "
                          f"(or -{depth}..-1 counting from the end).")
    return layer % depth


@dataclass(frozen=True)
class Signals:
    """Which outputs one pass computes: a facet of block ``layer`` and optionally an attention signal."""

    facet: str = "token"
    layer: int = -1  # resolved, 0-based
    attention: str | None = "softmax"  # None: no attention signal

    def deepest_block(self, depth: int) -> int:
        """The deepest block the pass must run (the last one when an attention signal is wanted)."""
        return depth - 1 if self.attention is not None else self.layer


def project_qkv(attn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, heads, N, head_dim) of an attention module for its input ``x`` (B, N, C), with
    the module's own projection weights and biases and its q/k norms (no rotary embedding).

    Covers timm's fused ``qkv`` (ViT, SAM), EVA's fused ``qkv`` with separate q/v biases, and
    separate ``q_proj``/``k_proj``/``v_proj`` (grouped key/value heads are repeated per head)."""
    B, N, _ = x.shape
    heads = int(attn.num_heads)
    qkv_mod = getattr(attn, "qkv", None)
    if qkv_mod is not None:
        bias = qkv_mod.bias
        if getattr(attn, "q_bias", None) is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, qkv_mod.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    elif getattr(attn, "q_proj", None) is not None:
        q = attn.q_proj(x).reshape(B, N, heads, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(B, N, -1, q.shape[-1]).transpose(1, 2)
        v = attn.v_proj(x).reshape(B, N, -1, q.shape[-1]).transpose(1, 2)
        if k.shape[1] != heads:  # grouped-query attention: each key/value head serves several query heads
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    else:
        raise ConfigError(f"attention module {type(attn).__name__} has no qkv projection hrdv2 knows.")
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    q = q_norm(q) if q_norm is not None else q
    k = k_norm(k) if k_norm is not None else k
    return q, k, v


def apply_rope(attn: torch.nn.Module, t: torch.Tensor, rope: torch.Tensor | None, n_prefix: int) -> torch.Tensor:
    """``t`` (B, heads, N, d) with the rotary embedding applied to the patch tokens, as EVA does."""
    if rope is None:
        return t
    from timm.layers import apply_rot_embed_cat

    half = bool(getattr(attn, "rotate_half", False))
    rotated = apply_rot_embed_cat(t[:, :, n_prefix:, :], rope, half=half)
    return torch.cat([t[:, :, :n_prefix, :], rotated.type_as(t)], dim=2)


def cls_signal(attn: torch.nn.Module, x: torch.Tensor, rope: torch.Tensor | None, n_prefix: int,
               kind: str) -> torch.Tensor:
    """(B, heads, N) CLS-token signal of one attention module for its input ``x`` (B, N, C).

    Only the CLS row of the attention matrix is formed, in float32."""
    q, k, v = project_qkv(attn, x)
    q, k = apply_rope(attn, q, rope, n_prefix), apply_rope(attn, k, rope, n_prefix)
    q_cls, k, v = q[:, :, :1].float(), k.float(), v.float()
    weights = ((q_cls @ k.transpose(-1, -2)) * float(attn.scale)).softmax(dim=-1)  # (B, heads, 1, N)
    if kind == "softmax":
        return weights.squeeze(2)
    out_cls = weights @ v  # (B, heads, 1, d): the CLS token's attention output per head
    return (out_cls @ v.transpose(-1, -2)).squeeze(2)  # o . v_j for every token j


def facet_tokens(attn: torch.nn.Module, x: torch.Tensor, facet: str) -> torch.Tensor:
    """(B, N, heads * head_dim) key / query / value of every token, heads concatenated."""
    q, k, v = project_qkv(attn, x)
    t = {"query": q, "key": k, "value": v}[facet]
    B, H, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, H * d)


@contextmanager
def capture_signals(blocks, signals: Signals, n_prefix: int) -> Iterator[dict[str, torch.Tensor]]:
    """Forward pre-hooks on the attention modules of ``blocks`` that fill the yielded dict with
    ``facet`` (B, N, C') from block ``signals.layer`` and ``attention`` (B, heads, N) from the last
    block, computed from each module's actual input (and the ``rope`` it is called with)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(key: str, fn):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["x"]
            captured[key] = fn(module, x, kwargs.get("rope"))
        return hook

    try:
        if signals.facet != "token":
            attn = blocks[signals.layer].attn
            handles.append(attn.register_forward_pre_hook(
                hook_for("facet", lambda m, x, rope: facet_tokens(m, x, signals.facet)), with_kwargs=True))
        if signals.attention is not None:
            attn = blocks[len(blocks) - 1].attn
            handles.append(attn.register_forward_pre_hook(
                hook_for("attention", lambda m, x, rope: cls_signal(m, x, rope, n_prefix, signals.attention)),
                with_kwargs=True))
        yield captured
    finally:
        for h in handles:
            h.remove()
