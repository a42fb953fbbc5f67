"""Dense (one vector per pixel) features of an image from a named upsampler, cached on disk.

Matching and the linear probe compare *upsamplers* (HR-Dv2 against nearest, bilinear,
stride-only, joint bilateral, classical filters), so they featurise through the probe's
upsampler registry (:mod:`hrdv2.probe.upsamplers`, whose HR-Dv2 entries run through
:class:`hrdv2.engine.FeatureEngine`) rather than through one fixed ``FeatureConfig``. The disk
cache is the engine's :class:`~hrdv2.features.cache.FeatureCache` (same layout, same image
hash); only the key names the upsampler and backbone instead of a feature config.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.errors import ConfigError

# short names the issue and the paper use -> registry names of hrdv2.probe.upsamplers
ALIASES: dict[str, str] = {"stride": "stride-only", "jbu": "joint-bilateral", "hrdv2-flip": "hrdv2-shift-flip"}
NO_BACKBONE = ("classical",)


def resolve_upsampler_name(name: str) -> str:
    """The registry name of ``name`` (aliases such as ``jbu`` resolved); unknown names fail here."""
    from hrdv2.probe.upsamplers import list_upsamplers

    real = ALIASES.get(name, name)
    known = list_upsamplers()
    if real not in known:
        names = ", ".join(sorted(set(known) | set(ALIASES)))
        raise ConfigError(f"unknown upsampler {name!r}; choose one of: {names}.")
    return real


@dataclass(frozen=True)
class UpsamplerKey:
    """What cached features depend on: upsampler, its parameters, backbone and weights."""

    upsampler: str
    params: str
    backbone: str
    weights: str

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:16]
        return f"up-{self.upsampler}-{digest}"


TAKES_STRIDE = ("nearest", "bilinear", "bicubic", "stride-only", "hrdv2", "hrdv2-shift-flip", "hrdv2-stride",
                "hrdv2-shift-flip-stride")


def stride_kwargs(name: str, stride: int | None) -> dict[str, int]:
    """``{"stride": stride}`` for upsamplers that take a ViT stride (HR-Dv2 and the plain baselines)."""
    if stride is None:
        return {}
    if name not in TAKES_STRIDE:
        raise ConfigError(f"upsampler {name!r} takes no stride; --stride works with {', '.join(TAKES_STRIDE)}.")
    return {"stride": int(stride)}


class DenseFeatures:
    """``DenseFeatures("hrdv2", backbone)(image)`` -> (H, W, C) float32 features.

    ``backbone``: an :class:`hrdv2.backbones.Backbone` (not needed for ``classical``).
    ``cache_dir``: features are computed once per image and read back (memory-mapped) after.
    ``upsampler_kwargs`` go to the upsampler's factory (e.g. ``shift_distances=(1,)``).
    """

    def __init__(self, upsampler: str, backbone: Any = None, *, cache_dir: str | Path | None = None,
                 **upsampler_kwargs: Any):
        from hrdv2.probe.upsamplers import check_available, create_upsampler

        self.name = resolve_upsampler_name(upsampler)
        if self.name not in NO_BACKBONE and backbone is None:
            raise ConfigError(f"upsampler {self.name!r} needs a backbone (hrdv2.backbones.load_backbone); "
                              "only 'classical' features work without one.")
        self.backbone = None if self.name in NO_BACKBONE else backbone
        self.kwargs = dict(upsampler_kwargs)
        self.upsampler = create_upsampler(self.name, **upsampler_kwargs)
        reason = check_available(self.upsampler)
        if reason:
            raise ConfigError(reason)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        bb = self.backbone
        self.cache_key = UpsamplerKey(
            self.name, repr(sorted(upsampler_kwargs.items())),
            "none" if bb is None else bb.name, "none" if bb is None else str(bb.weights_source))

    def describe(self) -> str:
        """Upsampler and backbone with its weights, e.g. 'hrdv2 on dinov2_vits14 (random weights, UNTRAINED)'."""
        if self.backbone is None:
            return f"{self.name} (hand-crafted filters, no backbone or weights)"
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.name}{f' ({params})' if params else ''} on {self.backbone.describe()}"

    @property
    def untrained(self) -> bool:
        return self.backbone is not None and not self.backbone.pretrained

    def compute(self, image: np.ndarray) -> np.ndarray:
        from hrdv2.engine.core import check_image
        from hrdv2.probe.upsamplers import check_features

        image = check_image(image)
        feats = check_features(self.upsampler(image, self.backbone), image, self.name)  # (C, H, W)
        return np.ascontiguousarray(feats.numpy().transpose(1, 2, 0), dtype=np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.cache_dir is None:
            return self.compute(image)
        from hrdv2.features.cache import FeatureCache

        image = np.asarray(image)
        return FeatureCache(self.cache_dir).get_or_compute(image, self.cache_key, lambda: self.compute(image))
