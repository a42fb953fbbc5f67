"""Feature upsamplers behind one small protocol, so the probe can compare them (and yours).

    upsample(image, backbone) -> torch.Tensor (C, H, W), float32, on the image's own pixels

``image`` is an (H, W) grey or (H, W, 3) RGB array as ``hrdv2.io.read_image`` returns it;
``backbone`` is an ``hrdv2.backbones.Backbone``. Build one by name with ``create_upsampler``
(a registry, like timm's create_model); add your own with ``@register_upsampler("name")`` on a
factory that returns any object with a ``name`` and that call signature.

Built in:
  nearest, bilinear, bicubic   plain patch features (stride = patch), resized
  stride-only                  overlapping patches (stride = patch // 2), then bilinear
  hrdv2                        HR-Dv2, identity + Moore shifts by 1, 2 px (17 transforms)
  hrdv2-shift-flip             HR-Dv2, those shifts x {identity, h-flip, v-flip, both} (68)
  hrdv2-stride, hrdv2-shift-flip-stride   the same at stride = patch // 2
  joint-bilateral              training-free joint bilateral upsampling of the patch grid,
                               guided by the image colours
  classical                    hand-crafted filter features (no backbone): the
                               "upsampler-free" baseline
  lift, featup-jbu             LiFT and FeatUp's JBU as modules on the probe backbone's own
                               patch features (``checkpoint=`` a local file in the
                               published layout; hrdv2.probe.learned_upsamplers)
  featup, loftup, jafar        torch.hub adapters; usable only when the hub repository and
                               its weights are already on this machine (else reported as
                               unavailable, never replaced by something else). featup,
                               loftup and jafar all upsample the probe backbone's features
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError, HRDv2Error, ShapeError


class UpsamplerUnavailableError(HRDv2Error):
    """An optional upsampler (torch.hub model, optional module) cannot run on this machine."""


@runtime_checkable
class Upsampler(Protocol):
    name: str

    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor: ...


_REGISTRY: dict[str, tuple[Callable[..., Upsampler], str]] = {}


def register_upsampler(name: str, description: str = "") -> Callable[[Callable[..., Upsampler]], Callable[..., Upsampler]]:
    """Decorator: make ``create_upsampler(name)`` call the decorated factory."""

    def deco(factory: Callable[..., Upsampler]) -> Callable[..., Upsampler]:
        _REGISTRY[name] = (factory, description or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return deco


def list_upsamplers() -> dict[str, str]:
    """Registered names and one-line descriptions."""
    return {k: d for k, (_, d) in _REGISTRY.items()}


def create_upsampler(name: str, **kwargs: Any) -> Upsampler:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown upsampler {name!r}; available: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name][0](**kwargs)


def check_features(features: torch.Tensor, image: np.ndarray, name: str) -> torch.Tensor:
    """The protocol's promise, enforced: (C, H, W) float32, same H, W as the image, finite."""
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        shape = tuple(getattr(features, "shape", ()))
        raise ShapeError(f"upsampler {name!r} returned {type(features).__name__} of shape {shape}; expected (C, H, W).")
    if tuple(features.shape[-2:]) != tuple(image.shape[:2]):
        raise ShapeError(
            f"upsampler {name!r} returned features of size {tuple(features.shape[-2:])} for an image of size "
            f"{tuple(image.shape[:2])}; it must return one feature vector per pixel."
        )
    features = features.detach().float().cpu()
    if not torch.isfinite(features).all():
        raise ShapeError(f"upsampler {name!r} returned NaN/inf features.")
    return features


# --------------------------------------------------------------------------- plain and HR-Dv2


@dataclass
class Baseline:
    """Plain patch features, one ViT pass, resized by ``mode`` (hrdv2.upsample.upsample_baseline)."""

    mode: str = "nearest"
    stride: int | None = None
    name: str = ""

    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor:
        from hrdv2.upsample import upsample_baseline

        stride = self.stride if self.stride is None or self.stride > 0 else max(1, backbone.patch_size // 2)
        return upsample_baseline(image, backbone, mode=self.mode, stride=stride, attention=False).features


@dataclass
class HRDv2:
    """HR-Dv2 (hrdv2.upsample.HighResFeaturizer) with a given transform set and stride."""

    flip: bool = False
    stride: int | None = None  # None = patch size; 0 = patch size // 2
    shift_distances: tuple[int, ...] = (1, 2)
    batch_size: int = 4
    name: str = ""

    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor:
        from hrdv2.engine import FeatureEngine

        stride = self.stride if self.stride is None or self.stride > 0 else max(1, backbone.patch_size // 2)
        engine = FeatureEngine.for_backbone(backbone, stride=stride, shifts=tuple(self.shift_distances),
                                            flips=self.flip, batch_size=self.batch_size)
        fz = engine.featurizer()
        return fz(image).features


for _mode in ("nearest", "bilinear", "bicubic"):
    register_upsampler(_mode, f"plain patch features, {_mode} resize")(
        lambda _m=_mode, **kw: Baseline(mode=_m, name=_m, **kw)
    )
register_upsampler("stride-only", "overlapping patches (stride = patch // 2), bilinear resize")(
    lambda stride=0, **kw: Baseline(mode="bilinear", stride=stride, name="stride-only", **kw)
)
register_upsampler("hrdv2", "HR-Dv2: identity + Moore shifts 1, 2 px (17 transforms), stride = patch")(
    lambda **kw: HRDv2(name="hrdv2", **kw)
)
register_upsampler("hrdv2-shift-flip", "HR-Dv2: 17 shifts x 4 flips (68 transforms), stride = patch")(
    lambda **kw: HRDv2(flip=True, name="hrdv2-shift-flip", **kw)
)
register_upsampler("hrdv2-stride", "HR-Dv2: 17 shifts, stride = patch // 2")(
    lambda stride=0, **kw: HRDv2(stride=stride, name="hrdv2-stride", **kw)
)
register_upsampler("hrdv2-shift-flip-stride", "HR-Dv2: 17 shifts x 4 flips, stride = patch // 2")(
    lambda stride=0, **kw: HRDv2(flip=True, stride=stride, name="hrdv2-shift-flip-stride", **kw)
)


# --------------------------------------------------------------------------- joint bilateral


@dataclass
class JointBilateral:
    """Training-free joint bilateral upsampling (Kopf et al. 2007) of the patch-feature grid.

    Pixel p gets sum_q w(p, q) f_q / sum_q w(p, q) over the (2r+1)^2 patch cells q around its
    own cell, with w = exp(-|p - centre_q|^2 / 2 (sigma_spatial P)^2) *
    exp(-|I(p) - mean colour of q|^2 / 2 sigma_range^2): features follow image edges without
    any learned weights. Colours are in [0, 1] RGB.
    """

    radius: int = 2
    sigma_spatial: float = 1.0  # in patch cells
    sigma_range: float = 0.15
    name: str = "joint-bilateral"

    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor:
        from hrdv2.io import to_rgb01
        from hrdv2.upsample import PatchGeometry, image_to_tensor

        if self.radius < 0 or self.sigma_spatial <= 0 or self.sigma_range <= 0:
            raise ConfigError(
                f"joint-bilateral needs radius >= 0 and positive sigmas, got {self.radius}, "
                f"{self.sigma_spatial}, {self.sigma_range}."
            )
        P = backbone.patch_size
        x = image_to_tensor(image)
        H, W = x.shape[-2:]
        geo = PatchGeometry(H, W, P, P)
        grid, _ = backbone.forward_patches(geo.pad(x), P, with_attention=False)
        grid = grid[0].float().cpu()  # (C, gh, gw); cell i covers pixels [iP, (i+1)P)
        gh, gw = grid.shape[-2:]
        rgb = torch.from_numpy(to_rgb01(np.asarray(image))).permute(2, 0, 1)  # (3, H, W)
        # mean colour of each cell over its pixels inside the image
        pad = (0, gw * P - W, 0, gh * P - H)
        summed = F.avg_pool2d(F.pad(rgb, pad)[None], P)[0]
        count = F.avg_pool2d(F.pad(torch.ones(1, H, W), pad)[None], P)[0]
        guide = summed / count.clamp_min(1e-6)

        # pixels are processed one band of cell rows at a time: for each pixel, the weights over
        # all cells form a dense row (zero outside its window); one matmul then mixes features
        flat = grid.reshape(grid.shape[0], -1).T.contiguous()  # (cells, C)
        guide_flat = guide.reshape(3, -1)
        two_ss = 2 * (self.sigma_spatial * P) ** 2
        two_sr = 2 * self.sigma_range**2
        xs = torch.arange(W)
        out = torch.empty(H * W, grid.shape[0])
        for band in range(gh):
            ys = torch.arange(band * P, min((band + 1) * P, H))
            if ys.numel() == 0:
                continue
            n = ys.numel() * W
            weights = torch.zeros(n, gh * gw)
            colour = rgb[:, ys].reshape(3, n)
            for di in range(-self.radius, self.radius + 1):
                ri = band + di
                if not 0 <= ri < gh:
                    continue
                wy = torch.exp(-((ys + 0.5) - (ri + 0.5) * P) ** 2 / two_ss)  # (band rows,)
                for dj in range(-self.radius, self.radius + 1):
                    rj = xs // P + dj
                    valid = (rj >= 0) & (rj < gw)
                    rj = rj.clamp(0, gw - 1)
                    wx = torch.exp(-((xs + 0.5) - (rj + 0.5) * P) ** 2 / two_ss) * valid  # (W,)
                    cell = ri * gw + rj  # (W,)
                    diff = ((colour.view(3, -1, W) - guide_flat[:, cell][:, None, :]) ** 2).sum(0)
                    w = (wy[:, None] * wx[None, :] * torch.exp(-diff / two_sr)).reshape(n)
                    weights.scatter_add_(1, cell.repeat(ys.numel())[:, None], w[:, None])
            weights /= weights.sum(1, keepdim=True).clamp_min(1e-12)  # own cell always has weight > 0
            out[band * P * W : band * P * W + n] = weights @ flat
        return out.T.reshape(grid.shape[0], H, W).contiguous()


register_upsampler("joint-bilateral", "training-free joint bilateral upsampling guided by the image")(
    lambda **kw: JointBilateral(**kw)
)


# --------------------------------------------------------------------------- classical baseline


@dataclass
class Classical:
    """Hand-crafted multi-scale filter features (hrdv2.features, kind="classical"); ignores the backbone."""

    name: str = "classical"

    def check(self) -> None:
        try:
            from hrdv2.engine import compute_features  # noqa: F401
        except ImportError as exc:
            raise UpsamplerUnavailableError(f"classical features need hrdv2.features.sets ({exc}).") from exc

    def __call__(self, image: np.ndarray, backbone: Any = None) -> torch.Tensor:
        self.check()
        from hrdv2.engine import compute_features
        from hrdv2.features.sets import FeatureConfig

        feats = np.asarray(compute_features(image, FeatureConfig(kind="classical")), dtype=np.float32)
        if feats.ndim != 3 or feats.shape[:2] != image.shape[:2]:
            raise ShapeError(f"classical features have shape {feats.shape}, expected (H, W, F) for image {image.shape[:2]}.")
        return torch.from_numpy(np.ascontiguousarray(feats.transpose(2, 0, 1)))


register_upsampler("classical", "hand-crafted filter features, no backbone (upsampler-free baseline)")(
    lambda **kw: Classical(**kw)
)


# --------------------------------------------------------------------------- torch.hub adapters


def _hub_checkout(repo: str) -> str | None:
    """The local torch.hub checkout of ``owner/name`` (any branch), or None."""
    owner, name = repo.split("/")
    hits = sorted(glob.glob(os.path.join(torch.hub.get_dir(), f"{owner}_{name}_*")))
    return hits[0] if hits else None


@dataclass
class HubUpsampler:
    """A pretrained upsampler from torch.hub, loaded only from the local hub cache.

    kind "featup": the hub model bundles its own backbone; its JBU (``model.upsampler``) is
    called on ``backbone``'s patch features after the hub model's ChannelNorm
    (``model.model[1]``) when those attributes exist, else ``model(x)`` runs whole.
    kind "lowres": ``model(lowres_feats, x) -> (1, C, h, w)`` on ``backbone``'s patch features
    (LoftUp's convention). kind "jafar": ``model(x, lowres_feats, (H, W))``. ``x`` is the
    ImageNet-normalised, patch-padded image; the output is resized/cropped to (H, W).
    """

    repo: str
    entry: str
    kind: str
    hub_kwargs: dict = field(default_factory=dict)
    name: str = ""
    _model: Any = field(default=None, repr=False)

    def check(self) -> None:
        if _hub_checkout(self.repo) is None:
            raise UpsamplerUnavailableError(
                f"{self.name}: torch.hub repository {self.repo} is not in the local hub cache "
                f"({torch.hub.get_dir()}). On a machine with internet run once: "
                f"torch.hub.load('{self.repo}', '{self.entry}') (it also fetches the pretrained weights)."
            )

    def _load(self) -> Any:
        if self._model is None:
            self.check()
            try:
                self._model = torch.hub.load(_hub_checkout(self.repo), self.entry, source="local", **self.hub_kwargs)
            except Exception as exc:  # hub code raises anything (missing weights offline, bad deps)
                raise UpsamplerUnavailableError(f"{self.name}: loading {self.repo}:{self.entry} failed ({exc}).") from exc
            self._model.eval()
        return self._model

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, backbone: Any) -> torch.Tensor:
        from hrdv2.upsample import PatchGeometry, image_to_tensor

        model = self._load()
        x = image_to_tensor(image)
        H, W = x.shape[-2:]
        P = backbone.patch_size
        geo = PatchGeometry(H, W, P, P)
        xp = geo.pad(x)
        dev = next(iter(model.parameters()), torch.empty(0, device=backbone.device)).device
        if self.kind == "featup" and not hasattr(model, "upsampler"):
            out = model(xp.to(dev))
        elif self.kind == "featup":
            lr, _ = backbone.forward_patches(xp, P, with_attention=False)
            lr = lr.to(dev)
            norm = model.model[1] if isinstance(getattr(model, "model", None), torch.nn.Sequential) else None
            out = model.upsampler(norm(lr) if norm is not None else lr, xp.to(dev))
        else:
            lr, _ = backbone.forward_patches(xp, P, with_attention=False)
            lr = lr.to(dev)
            out = model(lr, xp.to(dev)) if self.kind == "lowres" else model(xp.to(dev), lr, tuple(xp.shape[-2:]))
        out = F.interpolate(out.float().cpu(), size=xp.shape[-2:], mode="bilinear", align_corners=False)
        left, _, top, _ = geo.pads()
        return out[0, :, top : top + H, left : left + W]


register_upsampler("featup", "FeatUp JBU (torch.hub mhamilton723/FeatUp 'dinov2') on the probe backbone's features")(
    lambda **kw: HubUpsampler("mhamilton723/FeatUp", "dinov2", "featup", {"use_norm": True}, name="featup", **kw)
)
register_upsampler("loftup", "LoftUp (torch.hub andrehuang/loftup 'loftup_dinov2s'), needs a ViT-S/14 backbone")(
    lambda **kw: HubUpsampler("andrehuang/loftup", "loftup_dinov2s", "lowres", {"pretrained": True}, name="loftup", **kw)
)
register_upsampler("jafar", "JAFAR (torch.hub PaulCouairon/JAFAR), entry/signature configurable")(
    lambda entry="jafar", **kw: HubUpsampler("PaulCouairon/JAFAR", entry, "jafar", name="jafar", **kw)
)



def _learned(kind: str, name: str) -> Callable[..., Upsampler]:
    def factory(checkpoint: str | None = None, **kw: Any) -> Upsampler:
        from hrdv2.probe.learned_upsamplers import LearnedUpsampler

        return LearnedUpsampler(checkpoint=checkpoint, name=name, kind=kind, **kw)

    return factory


register_upsampler("lift", "LiFT (2x learned, image-guided) on the probe backbone's features; needs checkpoint=")(
    _learned("lift", "lift")
)
register_upsampler("featup-jbu", "FeatUp JBU stack (16x) on the probe backbone's features; needs checkpoint=")(
    _learned("featup-jbu", "featup-jbu")
)

OPTIONAL = ("classical", "featup", "loftup", "jafar", "lift", "featup-jbu")


def check_available(up: Upsampler) -> str | None:
    """None when ``up`` can run here, else the reason it cannot."""
    check = getattr(up, "check", None)
    if check is None:
        return None
    try:
        check()
    except UpsamplerUnavailableError as exc:
        return str(exc)
    return None

