"""Frozen ViT backbones: ``load_backbone`` is the factory (like timm's create_model)."""

from __future__ import annotations

import os

import torch

from hrdv2.backbones.facets import ATTENTIONS, FACETS
from hrdv2.backbones.registry import REGISTRY, BackboneSpec, list_backbones, resolve
from hrdv2.backbones.vit import IMAGENET_MEAN, IMAGENET_STD, SUPPORTED, Backbone
from hrdv2.backbones.weights import RANDOM, download_checkpoint, how_to_supply, load_into, read_checkpoint
from hrdv2.device import resolve_device
from hrdv2.errors import ConfigError, WeightsUnavailableError

__all__ = ["ATTENTIONS", "Backbone", "BackboneSpec", "FACETS", "IMAGENET_MEAN", "IMAGENET_STD", "SUPPORTED",
           "build_architecture", "list_backbones", "load_backbone", "REGISTRY", "resolve_device"]


def build_architecture(spec: BackboneSpec) -> torch.nn.Module:
    """The timm architecture, untrained, ready for any image size (dynamic positional embedding;
    SAM encoders always resample theirs)."""
    import timm

    if spec.family == "sam":
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
    return timm.create_model(spec.timm_name, pretrained=False, num_classes=0, dynamic_img_size=True)


def load_backbone(
    name: str = "dinov2_vits14",
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sha256: str | None = None,
) -> Backbone:
    """Build a frozen backbone.

    weights: None -> the official pretrained weights (downloaded once into torch.hub's cache,
    checked against the published sha256; timm names use timm's hub cache); a path -> that
    local file (official .pth, timm .pth/.safetensors layouts); "random" -> the real
    architecture, randomly initialised (seeded), for tests and benchmarks: results are UNTRAINED.
    ``dtype`` is the storage dtype of the weights (compute dtype is chosen per call).
    ``device``: "cpu", "cuda", "cuda:N", "mps" or "auto" (``hrdv2.device.resolve_device``),
    checked against this machine before any weights are read or downloaded.
    """
    device = resolve_device(device)
    spec = resolve(name)
    if weights is not None and str(weights) == RANDOM:
        torch.manual_seed(0)
        model = build_architecture(spec)
        pretrained, source = False, RANDOM
    elif weights is not None:
        state = read_checkpoint(weights, spec, sha256)  # a missing or unreadable file fails before the build
        model = build_architecture(spec)
        load_into(model, state, spec, str(weights))
        pretrained, source = True, str(weights)
    elif spec.manual is not None:  # licensed weights (DINOv3): only ever from a local file
        raise WeightsUnavailableError(f"no weights given for {spec.name}. {how_to_supply(spec)}")
    elif spec.url is not None:
        model = build_architecture(spec)
        load_into(model, download_checkpoint(spec), spec, spec.url)
        pretrained, source = True, spec.url
    else:
        import timm

        extra = {} if spec.family == "sam" else {"dynamic_img_size": True}
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, **extra)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"could not get pretrained weights for {spec.timm_name} from the Hugging Face hub ({exc}). "
                + how_to_supply(spec)
            ) from exc
        pretrained, source = True, f"timm:{spec.timm_name}"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ConfigError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16.")
    model = model.to(device=device, dtype=dtype)
    return Backbone(name=spec.name, model=model, pretrained=pretrained, weights_source=source, device=device)
