"""A frozen timm ViT that runs with any patch-embedding stride and returns, in the same pass,
a chosen facet of a chosen block and a CLS-attention signal of the last block.

The stride is changed by running the patch-embedding convolution ourselves with a different
stride (the model's weights are untouched). Absolute positional embeddings are resampled to
the new grid by timm; rotary embeddings (DINOv3, EVA02) are computed at each strided patch's
true position (``hrdv2.backbones.rope``); SAM's windowed attention runs on stride-P sub-grids
(``hrdv2.backbones.sam``). Facets and attention signals come from forward pre-hooks on the
attention modules (``hrdv2.backbones.facets``), so the fused attention kernel stays in use.

Supported families (by timm model class): ``vit`` (timm VisionTransformer: DINO, DINOv2,
DeiT, CLIP/AugReg ViTs), ``eva`` (timm Eva: DINOv3, EVA02, vit_*_rope_*), ``sam`` (SAM image
encoders, no CLS token).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from hrdv2.backbones.facets import Signals, capture_signals, check_attention_kind, check_facet, resolve_layer
from hrdv2.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# timm model class -> family; anything else is refused with this list
FAMILIES = {"VisionTransformer": "vit", "Eva": "eva", "VisionTransformerSAM": "sam"}
SUPPORTED = ("timm VisionTransformer (DINO, DINOv2, DeiT, AugReg/CLIP ViTs), timm Eva (DINOv3, EVA02, "
             "vit_*_rope_*), SAM image encoders (samvit_*)")

PosEmbed = Callable[[torch.nn.Module, torch.Tensor, tuple[int, int]], torch.Tensor]


def family_of(model: torch.nn.Module, name: str) -> str:
    """The runner family of a timm model, or a one-line ConfigError listing what is supported."""
    family = FAMILIES.get(type(model).__name__)
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if family is None or not isinstance(proj, torch.nn.Conv2d):
        raise ConfigError(f"{name} ({type(model).__name__}) is not a supported ViT. Supported: {SUPPORTED}.")
    if not all(hasattr(b, "attn") for b in getattr(model, "blocks", ())):
        raise ConfigError(f"{name}: its blocks have no separate attention module (parallel/fused blocks), which "
                          f"hrdv2 needs for strides, facets and attention. Supported: {SUPPORTED}.")
    return family


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
        self.family = family_of(self.model, self.name)
        if self.family != "sam" and not getattr(self.model, "dynamic_img_size", False):
            raise ConfigError(f"{self.name}: the model must be built with dynamic_img_size=True")

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def embed_dim(self) -> int:
        """Channels of the default features (the last block's tokens; SAM: its neck's output)."""
        return self.feature_dim()

    @property
    def num_heads(self) -> int:
        return int(self.model.blocks[-1].attn.num_heads)

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 0))

    @property
    def has_cls_token(self) -> bool:
        """Whether there is a CLS token, hence CLS-attention signals (SAM and pooled ViTs have none)."""
        return getattr(self.model, "cls_token", None) is not None

    def feature_dim(self, facet: str = "token", layer: int | None = None) -> int:
        """Channels of ``facet`` at block ``layer`` (None: the last block)."""
        check_facet(facet)
        layer = resolve_layer(layer, self.depth, self.name)
        if facet != "token":
            attn = self.model.blocks[layer].attn
            return int(attn.num_heads) * int(attn.head_dim)
        if self.family == "sam" and layer == self.depth - 1:
            return int(self.model.num_features)
        return int(self.model.embed_dim)

    def describe(self) -> str:
        return f"{self.name} ({'pretrained: ' + self.weights_source if self.pretrained else 'random weights, UNTRAINED'})"

    def check_stride(self, stride: int | None) -> int:
        stride = self.patch_size if stride is None else int(stride)
        if not 1 <= stride <= self.patch_size:
            raise ConfigError(
                f"stride {stride} is out of range for {self.name}: use 1 <= stride <= patch size {self.patch_size}."
            )
        if self.family == "sam":
            from hrdv2.backbones.sam import check_sam_stride

            check_sam_stride(self.model, self.name, stride, self.patch_size)
        return stride

    def signals(self, facet: str = "token", layer: int | None = None, attention: str | None = "softmax") -> Signals:
        """Checked :class:`Signals` for this backbone: facet, block index, attention signal (None: none)."""
        check_facet(facet)
        if attention is not None:
            check_attention_kind(attention)
            if not self.has_cls_token:
                raise ConfigError(
                    f"{self.name} has no CLS token, so it has no CLS attention ({attention!r}); run without "
                    "attention (attention=False; on the command line --no-attention-png) or use a ViT with a CLS token.")
        return Signals(facet, resolve_layer(layer, self.depth, self.name), attention)

    def _model_for(self, dtype: torch.dtype) -> torch.nn.Module:
        """The model in the compute dtype (a low-precision copy is made once and kept)."""
        if dtype == torch.float32:
            return self.model
        if dtype not in self._compute_copies:
            self._compute_copies[dtype] = copy.deepcopy(self.model).to(dtype)
        return self._compute_copies[dtype]

    @torch.inference_mode()
    def forward_patches(
        self, x: torch.Tensor, stride: int | None = None, with_attention: bool = True, dtype: torch.dtype = torch.float32,
        pos_embed: PosEmbed | None = None, facet: str = "token", layer: int | None = None,
        attention_kind: str = "softmax",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch features (B, C, gh, gw) and CLS-attention signal (B, heads, gh, gw), both float32.

        ``x`` is an ImageNet-normalised batch (B, 3, H, W) with H, W >= patch size; the grid is
        gh = 1 + (H - P) // stride. Computation runs in ``dtype`` (float32, bfloat16, float16).
        ``facet``/``layer``: which features (token output, or key/query/value, of block ``layer``;
        default the last block's tokens after the final norm). ``attention_kind``: "softmax" (CLS
        attention) or "o" (CLS attention output dotted with each value), from the last block.
        ``pos_embed(model, tokens, (H, W))`` replaces timm's positional step (ViT family only).
        """
        stride = self.check_stride(stride)
        signals = self.signals(facet, layer, attention_kind if with_attention else None)
        P = self.patch_size
        if x.shape[-1] < P or x.shape[-2] < P:
            raise ConfigError(f"input {tuple(x.shape[-2:])} is smaller than the patch size {P}; pad it first.")
        if pos_embed is not None and self.family != "vit":
            raise ConfigError(f"a replacement positional embedding (the published geometry) needs a ViT with a learnt "
                              f"positional table such as DINO/DINOv2; {self.name} is of the {self.family} family.")
        model = self._model_for(dtype)
        x = x.to(self.device, dtype)
        if self.family == "sam":
            from hrdv2.backbones.sam import run_sam

            feats = run_sam(model, x, stride, signals)
            return feats.float().permute(0, 3, 1, 2), None
        return _run_tokens(model, self.family, x, stride, signals, pos_embed)


def _run_tokens(model: torch.nn.Module, family: str, x: torch.Tensor, stride: int, signals: Signals,
                pos_embed: PosEmbed | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ViT / EVA pass: strided patch embedding, positions, blocks up to the deepest one needed."""
    proj = model.patch_embed.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=stride)  # (B, C, gh, gw)
    B, _, gh, gw = tokens.shape
    tokens = model.patch_embed.norm(tokens.permute(0, 2, 3, 1))  # NHWC, as timm's dynamic path
    rope = None
    if family == "eva":
        tokens, rope = model._pos_embed(tokens)  # absolute table (if any) resampled to (gh, gw); cls/registers
        if model.rope is not None:
            rope = _eva_rope(model, rope, (gh, gw), stride, tuple(x.shape[-2:]))
    elif pos_embed is not None:  # the published HR-Dv2 interpolation (hrdv2.upsample.published)
        tokens = pos_embed(model, tokens, tuple(x.shape[-2:]))
    else:
        tokens = model._pos_embed(tokens)  # resamples the positional embedding to (gh, gw)
    if getattr(model, "patch_drop", None) is not None:
        tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    npt = int(model.num_prefix_tokens)
    out = None
    with capture_signals(model.blocks, signals, npt) as captured:
        for i in range(signals.deepest_block(len(model.blocks)) + 1):
            blk = model.blocks[i]
            if rope is None:
                tokens = blk(tokens)
            else:
                tokens = blk(tokens, rope=rope[i] if getattr(model, "rope_mixed", False) else rope)
            if i == signals.layer and signals.facet == "token":
                out = model.norm(tokens)
    if signals.facet != "token":
        out = captured["facet"]
    feats = out[:, npt:, :].float().reshape(B, gh, gw, -1).permute(0, 3, 1, 2)
    att = None
    if signals.attention is not None:
        att = captured["attention"][:, :, npt:].reshape(B, -1, gh, gw)
    return feats, att


def _eva_rope(model: torch.nn.Module, native: torch.Tensor, grid: tuple[int, int], stride: int,
              padded: tuple[int, int]) -> torch.Tensor:
    """Rotary sin/cos at the strided patches' true positions (timm's own table at the patch stride
    when its rope type has no strided form here)."""
    from hrdv2.backbones.rope import strided_rope

    patch = int(model.patch_embed.patch_size[0])
    try:
        rope = strided_rope(model.rope, grid, stride, patch, padded)
    except ConfigError:
        if stride != patch:
            raise
        return native
    return rope.to(device=native.device, dtype=native.dtype)
