"""A frozen timm ViT that runs with any patch-embedding stride and returns the last block's
CLS attention alongside the patch features.

The stride is changed by running the patch-embedding convolution ourselves with a different
stride (the model's weights are untouched) and letting timm resample the positional
embedding to the new grid. The CLS attention comes from a forward hook on the last block's
qkv projection that computes only the CLS row, so the fused attention kernel stays in use
for every block.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class Backbone:
    """A frozen ViT. ``forward_patches`` is the only entry point the upsamplers need.

    ``device`` is where the weights live; the upsamplers create every tensor there and return
    float32 results to the CPU at the end."""

    name: str
    model: torch.nn.Module
    pretrained: bool
    weights_source: str
    device: torch.device | str | None = None  # None: wherever the weights are
    _compute_copies: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.model.eval().requires_grad_(False)
        # the weights decide where computation runs; a stated device that disagrees is a bug
        # in the caller, and would make every upsampler mix devices
        weights_device = next(self.model.parameters()).device
        stated = weights_device if self.device is None else torch.device(self.device)
        if stated.type != weights_device.type or stated.index not in (None, weights_device.index):
            raise ConfigError(
                f"{self.name}: the model's weights are on {weights_device} but device={stated}; "
                f"move the model first, or use load_backbone(..., device={str(stated)!r})"
            )
        self.device = weights_device
        if not getattr(self.model, "dynamic_img_size", False):
            raise ConfigError(f"{self.name}: the model must be built with dynamic_img_size=True")

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[-1].attn.num_heads)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    def describe(self) -> str:
        return f"{self.name} ({'pretrained: ' + self.weights_source if self.pretrained else 'random weights, UNTRAINED'})"

    def check_stride(self, stride: int | None) -> int:
        stride = self.patch_size if stride is None else int(stride)
        if not 1 <= stride <= self.patch_size:
            raise ConfigError(
                f"stride {stride} is out of range for {self.name}: use 1 <= stride <= patch size {self.patch_size}."
            )
        return stride

    def _model_for(self, dtype: torch.dtype) -> torch.nn.Module:
        """The model in the compute dtype (a low-precision copy is made once and kept)."""
        if dtype == torch.float32:
            return self.model
        if dtype not in self._compute_copies:
            self._compute_copies[dtype] = copy.deepcopy(self.model).to(dtype)
        return self._compute_copies[dtype]

    @torch.inference_mode()
    def forward_patches(
        self, x: torch.Tensor, stride: int | None = None, with_attention: bool = True, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch features (B, C, gh, gw) and CLS attention (B, heads, gh, gw), both float32.

        ``x`` is an ImageNet-normalised batch (B, 3, H, W) with H, W >= patch size; the grid is
        gh = 1 + (H - P) // stride. Computation runs in ``dtype`` (float32, bfloat16, float16).
        """
        stride = self.check_stride(stride)
        P = self.patch_size
        if x.shape[-1] < P or x.shape[-2] < P:
            raise ConfigError(f"input {tuple(x.shape[-2:])} is smaller than the patch size {P}; pad it first.")
        model = self._model_for(dtype)
        x = x.to(self.device, dtype)
        proj = model.patch_embed.proj
        tokens = F.conv2d(x, proj.weight, proj.bias, stride=stride)  # (B, C, gh, gw)
        B, C, gh, gw = tokens.shape
        tokens = model.patch_embed.norm(tokens.permute(0, 2, 3, 1))  # NHWC, as timm's dynamic path
        tokens = model._pos_embed(tokens)  # resamples the positional embedding to (gh, gw)
        tokens = model.norm_pre(model.patch_drop(tokens))
        captured: dict[str, torch.Tensor] = {}
        handle = None
        if with_attention:
            attn = model.blocks[-1].attn
            handle = attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("attn", _cls_attention(attn, o)))
        try:
            tokens = model.norm(model.blocks(tokens))
        finally:
            if handle is not None:
                handle.remove()
        npt = model.num_prefix_tokens
        feats = tokens[:, npt:, :].float().reshape(B, gh, gw, C).permute(0, 3, 1, 2)
        att = None
        if with_attention:
            att = captured["attn"][:, :, npt:].reshape(B, -1, gh, gw)
        return feats, att


def _cls_attention(attn: torch.nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the CLS query over all tokens, from the qkv projection output.

    The q/k norms run in the model's own dtype (they are part of the model); only the CLS
    row's logits are formed, in float32."""
    B, N, _ = qkv.shape
    qkv = qkv.view(B, N, 3, attn.num_heads, attn.head_dim)
    q = attn.q_norm(qkv[:, :1, 0].transpose(1, 2)).float()  # (B, heads, 1, head_dim)
    k = attn.k_norm(qkv[:, :, 1].transpose(1, 2)).float()  # (B, heads, N, head_dim)
    return ((q @ k.transpose(-1, -2)).squeeze(2) * attn.scale).softmax(dim=-1)  # (B, heads, N)
