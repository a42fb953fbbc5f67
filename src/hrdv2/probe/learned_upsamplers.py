"""Learned upsamplers as probe upsamplers: ``lift`` (LiFT) and ``featup-jbu`` (FeatUp's JBU),
both applied to the probe backbone's own patch features and the image.

A learned upsampler without its weights would be a random filter, so each needs a
``checkpoint``: a local file in the published layout (or one written by ``hrdv2 probe
train-upsampler lift``). Without one it is reported *unavailable*; ``checkpoint="random"``
builds a seeded random one, labelled UNTRAINED, for pipeline tests only.

Geometry: the image is padded as for the plain baselines (stride = patch, every patch on its
own pixels), the module upsamples the patch grid (LiFT 2x per ``iterations``, JBU 16x), the
result is resized bilinearly to the padded size and cropped back to (H, W): any size works,
odd ones included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError
from hrdv2.probe.upsamplers import UpsamplerUnavailableError

RANDOM = "random"


@dataclass
class LearnedUpsampler:
    """Shared machinery: checkpoint check, lazy build for the backbone's width, pad/crop."""

    checkpoint: str | None = None
    name: str = ""
    kind: str = ""  # "lift" | "featup-jbu"
    iterations: int = 1  # LiFT only: 2x per iteration
    _model: Any = field(default=None, repr=False)

    def check(self) -> None:
        if self.checkpoint is None:
            raise UpsamplerUnavailableError(
                f"{self.name}: needs its trained weights: pass --upsampler-weights {self.name}=PATH (a local "
                f"checkpoint in the published layout{', or one from `hrdv2 probe train-upsampler lift`' if self.kind == 'lift' else ''}); "
                f"{self.name}={RANDOM} gives an UNTRAINED one for pipeline tests."
            )
        if self.checkpoint != RANDOM and not os.path.isfile(self.checkpoint):
            raise UpsamplerUnavailableError(f"{self.name}: checkpoint {self.checkpoint} does not exist.")

    def cache_key(self) -> str:
        """Identifies the weights (path, size, mtime) for the feature cache."""
        if self.checkpoint in (None, RANDOM):
            return f"{self.checkpoint}|{self.iterations}"
        st = os.stat(self.checkpoint)
        return f"{os.path.abspath(self.checkpoint)}|{st.st_size}|{st.st_mtime_ns}|{self.iterations}"

    def describe(self) -> str:
        return f"{self.name} ({'random weights, UNTRAINED' if self.checkpoint == RANDOM else self.checkpoint})"

    def build(self, channels: int, device: torch.device) -> torch.nn.Module:
        """The module for ``channels``-wide features, with the checkpoint's weights."""
        if self._model is not None and getattr(self._model, "_channels", None) == channels:
            return self._model
        self.check()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if self.kind == "lift":
                from hrdv2.probe.lift import LiFT, load_lift_state

                model = LiFT(channels)
                if self.checkpoint != RANDOM:
                    load_lift_state(model, self.checkpoint)
            else:
                from hrdv2.probe.jbu import JBUStack, load_jbu_state

                model = JBUStack(channels)
                if self.checkpoint != RANDOM:
                    load_jbu_state(model, self.checkpoint)
        model._channels = channels
        self._model = model.to(device).eval()
        return self._model

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor:
        from hrdv2.upsample import PatchGeometry, image_to_tensor

        if self.iterations < 1:
            raise ConfigError(f"{self.name}: iterations must be >= 1, got {self.iterations}.")
        x = image_to_tensor(image)
        H, W = x.shape[-2:]
        P = backbone.patch_size
        geo = PatchGeometry(H, W, P, P)
        xp = geo.pad(x)
        lowres, _ = backbone.forward_patches(xp, P, with_attention=False)
        model = self.build(lowres.shape[1], lowres.device)
        xp = xp.to(lowres.device)
        out = lowres
        for _ in range(self.iterations if self.kind == "lift" else 1):
            out = model(out, xp)
        out = F.interpolate(out.float(), size=xp.shape[-2:], mode="bilinear", align_corners=False)
        left, _, top, _ = geo.pads()
        return out[0, :, top : top + H, left : left + W].cpu()
