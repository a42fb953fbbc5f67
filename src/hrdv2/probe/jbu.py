"""FeatUp's JBU upsampler (Fu et al., ICLR 2024, "FeatUp: A Model-Agnostic Framework for
Features at Any Resolution") as a torch module on *any* backbone's patch features: four
learned joint-bilateral 2x stages (16x in all) guided by the image.

One stage (``JBULearnedRange``), written here from the paper and the released model's
structure: the guidance (the image, average-pooled to the target size) is projected to
32-d keys (1x1 conv, GELU, dropout, 1x1 conv: ``range_proj``); the range kernel over a 7x7
window (radius 3) is the softmax of exp(``range_temp``) x key dot products; the spatial
kernel is a Gaussian of width ``sigma_spatial`` on [-1, 1]^2; their normalised product gets
a small learned correction (``fixup_proj`` on kernel + guidance, weight 0.1) and filters the
bicubically upsampled features. After four stages a 1x1 conv adds 0.1 x a correction
(``fixup_proj``). Attribute names follow the released checkpoints (FeatUp's
``*_jbu_stack_cocostuff.ckpt``: keys ``upsampler.up1.range_temp`` ...), so ``load_jbu_state``
reads them; their ``model.1.norm`` LayerNorm (FeatUp's ChannelNorm, applied to the backbone
features before the JBU when trained with ``use_norm``) is applied too when present.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hrdv2.errors import ConfigError


def _pad(x: torch.Tensor, r: int) -> torch.Tensor:
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    return F.pad(x, [r] * 4, mode=mode)


class JBULearnedRange(nn.Module):
    """One 2x joint-bilateral stage: source (B, C, h, w) + guidance (B, G, H, W) -> (B, C, H, W)."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3):
        super().__init__()
        self.radius = radius
        self.diameter = 2 * radius + 1
        self.key_dim = key_dim
        d2 = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(guidance_dim + d2, d2, 1), nn.GELU(), nn.Dropout2d(0.1),
                                        nn.Conv2d(d2, d2, 1))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def _offsets(self):
        d = self.diameter
        return [(i, j) for i in range(d) for j in range(d)]  # window position p = i * d + j

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """(B, d*d, H, W) filter weights of every pixel's window."""
        _, _, H, W = guidance.shape
        keys = self.range_proj(guidance)
        padded = _pad(keys, self.radius)
        logits = torch.stack([(padded[:, :, i : i + H, j : j + W] * keys).sum(1) for i, j in self._offsets()], 1)
        range_k = F.softmax(self.range_temp.exp().clamp(1e-4, 1e4) * logits, dim=1)
        lin = torch.linspace(-1, 1, self.diameter, device=guidance.device)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        spatial = torch.exp(-(yy**2 + xx**2) / (2 * self.sigma_spatial**2)).reshape(1, -1, 1, 1)
        k = range_k * spatial
        k = k / k.sum(1, keepdim=True).clamp_min(1e-7)
        return k + 0.1 * self.fixup_proj(torch.cat([k, guidance], dim=1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        H, W = guidance.shape[-2:]
        k = self.kernel(guidance)
        hr = _pad(F.interpolate(source, (H, W), mode="bicubic", align_corners=False), self.radius)
        out = torch.zeros(source.shape[0], source.shape[1], H, W, device=source.device, dtype=source.dtype)
        for p, (i, j) in enumerate(self._offsets()):  # window by window: memory C x H x W, not x 49
            out += hr[:, :, i : i + H, j : j + W] * k[:, p : p + 1]
        return out


class JBUStack(nn.Module):
    """(B, C, h, w) features + (B, 3, H, W) image -> (B, C, 16h, 16w)."""

    def __init__(self, feat_dim: int, stages: int = 4):
        super().__init__()
        if feat_dim < 1 or stages != 4:
            raise ConfigError(f"JBU stack needs feat_dim >= 1 and the published 4 stages; got {feat_dim}, {stages}.")
        self.feat_dim = feat_dim
        self.up1, self.up2, self.up3, self.up4 = (JBULearnedRange(3, 32, 3) for _ in range(4))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))
        self.channel_norm: nn.LayerNorm | None = None  # FeatUp's ChannelNorm, when the checkpoint has one

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.channel_norm is not None:
            source = self.channel_norm(source.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for up in (self.up1, self.up2, self.up3, self.up4):
            h, w = source.shape[-2:]
            source = up(source, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)))
        return self.fixup_proj(source) * 0.1 + source


def load_jbu_state(model: JBUStack, path: str | Path) -> JBUStack:
    """Load FeatUp's released JBU checkpoint (or a bare JBUStack state dict) into ``model``.

    Keys ``upsampler.*`` are the JBU; ``model.1.norm.{weight,bias}`` the ChannelNorm; the rest
    of the file (FeatUp's own backbone ``model.0.*``, training-only parts) is not used.
    """
    from hrdv2.probe.lift import read_state_dict

    raw = read_state_dict(path, "FeatUp JBU")
    prefixed = any(k.startswith("upsampler.") for k in raw)
    state = {k.removeprefix("upsampler."): v for k, v in raw.items() if not prefixed or k.startswith("upsampler.")}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    norm = {k.rsplit(".", 1)[1]: v for k, v in raw.items() if k in ("model.1.norm.weight", "model.1.norm.bias")}
    c = state.get("fixup_proj.1.weight")
    if c is not None and c.shape[0] != model.feat_dim:
        raise ConfigError(f"{path}: this JBU was trained for {c.shape[0]}-channel features but the backbone gives "
                          f"{model.feat_dim}; use the FeatUp checkpoint made for this backbone.")
    try:
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("channel_norm.")}, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path}: not a FeatUp JBU state dict ({str(exc).splitlines()[0]}).") from exc
    if len(norm) == 2:
        model.channel_norm = nn.LayerNorm(model.feat_dim)
        model.channel_norm.load_state_dict(norm)
    return model
