"""Feature sets for pixel classifiers: ``classical``, ``deep`` (HR-Dv2) and ``hybrid`` (both).

One frozen :class:`FeatureConfig` describes how an image is featurised; it is saved with every
trained model so a model applied later featurises the same way, and its :meth:`FeatureConfig.key`
names cache entries. Computing features from a config is the job of one owner,
:class:`hrdv2.engine.FeatureEngine`; this module holds the config and the per-image steps
(normalisation, standardisation, PCA) the engine composes. Deep features need a backbone; without weights the backbone loader raises
:class:`~hrdv2.errors.WeightsUnavailableError`, whose message says how to get them; classical
features never need anything beyond this package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from hrdv2.errors import ConfigError
from hrdv2.features.classical import (
    CLASSICAL_VERSION, DEFAULT_FILTERS, DEFAULT_SIGMAS, feature_names, resolve_filters,
)

KINDS = ("classical", "deep", "hybrid")
NORMALISE = ("auto", "percentile", "robust", "none", "lab")
# the stretch's end points, the percentiles that bound how far 'robust' may move them, and the quartiles
# of its fences: every percentile either stretch needs, from one np.percentile call (stretch_limits)
PERCENTILES = (0.5, 5.0, 25.0, 75.0, 95.0, 99.5)
FENCE = 1.5  # Tukey's fences: an end point further than FENCE x IQR outside the quartiles lies in an outlier tail
# what normalise 'auto' means on a grey image changed with this version (1: 'percentile', 2: 'robust'); models
# store it, so one trained before still featurises as it was trained (Segmenter.load), and feature keys carry it
NORMALISE_VERSION = 2
Progress = Callable[[int, int], None] | None

# fields that change how features are computed but not their values (excluded from the key)
_RUNTIME_FIELDS = ("device", "batch_size")
# deep signals (the same names as hrdv2.backbones.facets, kept here so configs never import torch)
FACETS = ("token", "key", "query", "value")
ATTENTION_SIGNALS = ("softmax", "o")
# fields added after the first release, with their defaults: a config at a field's default keeps
# the key it had before the field existed (cached features stay valid)
_ADDED_LATER = {"rotations": False, "volume": False, "facet": "token", "layer": None, "attention": "softmax",
                "geometry": "hrdv2", "flip_set": "hrdv2", "planes": "xy"}
GEOMETRIES = ("hrdv2", "published")  # as hrdv2.upsample.geometry.GEOMETRIES (no torch import here)
FLIP_SETS = ("hrdv2", "published")  # as hrdv2.transforms.FLIP_SETS
PLANES = ("xy", "xyz")  # deep features of a volume: per xy slice, or averaged over the xy, xz and yz slices


@dataclass(frozen=True)
class FeatureConfig:
    """How to featurise an image. JSON-able via :meth:`to_dict` / :meth:`from_dict`."""

    kind: str = "classical"
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    filters: tuple[str, ...] = DEFAULT_FILTERS
    backbone: str = "dinov2_vits14"
    weights: str | None = None
    stride: int | None = None
    shifts: tuple[int, ...] = (1, 2)
    pattern: str = "moore"
    flips: bool = False
    rotations: bool = False
    pca_components: int | None = None
    normalise: str = "auto"
    device: str = "cpu"
    batch_size: int = 4
    volume: bool = False  # classical filters in 3D over (Z, Y, X) volumes instead of page by page
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0)  # (z, y, x) voxel size, volume mode only
    facet: str = "token"  # deep features: token output, or key / query / value, of block ``layer``
    layer: int | None = None  # block index (negative: from the end); None: the last block
    attention: str = "softmax"  # CLS-attention signal where one is used: softmax or o (published HR-Dv2)
    geometry: str = "hrdv2"  # patch geometry: hrdv2 (padded, exact) or published (HR-Dv2 code's); docs/geometry.md
    flip_set: str = "hrdv2"  # with flips: hrdv2 {id, h, v, hv} or published [id, h, id, v] combined its way
    planes: str = "xy"  # volume mode, deep features: xy slices only, or the mean over xy, xz, yz (engine/planes.py)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown feature set {self.kind!r}; choose one of {list(KINDS)}.")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))
        if self.volume:
            from hrdv2.features.classical3d import DEFAULT_FILTERS_3D, check_spacing, resolve_filters_3d

            if self.kind == "hybrid":
                raise ConfigError("volume mode takes classical (3-D filters) or deep features (planes xy or xyz), "
                                  "not hybrid; choose one of them.")
            filters = DEFAULT_FILTERS_3D if self.filters in ("default", DEFAULT_FILTERS) else self.filters
            object.__setattr__(self, "filters", resolve_filters_3d(filters))
            object.__setattr__(self, "spacing", check_spacing(self.spacing))
        else:
            object.__setattr__(self, "filters", resolve_filters(self.filters))  # "default" / "all" / names
            object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "shifts", tuple(int(s) for s in self.shifts))
        if self.normalise not in NORMALISE:
            raise ConfigError(f"normalise must be one of {list(NORMALISE)}, got {self.normalise!r}.")
        if self.normalise == "lab" and self.uses_deep:
            raise ConfigError(f"normalise 'lab' (CIE Lab colour) is for classical features; {self.kind} features feed "
                              "the ViT the RGB image it was trained on: use normalise 'auto'.")
        if self.facet not in FACETS:
            raise ConfigError(f"unknown facet {self.facet!r}; choose one of {', '.join(FACETS)}.")
        if self.attention not in ATTENTION_SIGNALS:
            raise ConfigError(f"unknown attention signal {self.attention!r}; choose one of {', '.join(ATTENTION_SIGNALS)}.")
        if self.layer is not None:
            object.__setattr__(self, "layer", int(self.layer))
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"unknown geometry {self.geometry!r}; choose one of {', '.join(GEOMETRIES)}.")
        if self.flip_set not in FLIP_SETS:
            raise ConfigError(f"unknown flip set {self.flip_set!r}; choose one of {', '.join(FLIP_SETS)}.")
        if self.pca_components is not None and int(self.pca_components) < 1:
            raise ConfigError(f"pca_components must be a positive integer or None, got {self.pca_components!r}.")
        if self.uses_classical and not self.volume:
            feature_names(1, self.sigmas, self.filters)  # validates sigmas / filters early
        if self.planes not in PLANES:
            raise ConfigError(f"unknown planes {self.planes!r}; choose one of {', '.join(PLANES)}.")
        if self.planes != "xy" and not (self.volume and self.kind == "deep"):
            raise ConfigError(f"planes {self.planes!r} averages deep features over the slices of a (Z, Y, X) volume: "
                              "it needs kind 'deep' with volume=True (CLI: --features deep --volume).")

    @property
    def uses_classical(self) -> bool:
        return self.kind in ("classical", "hybrid")

    @property
    def uses_deep(self) -> bool:
        return self.kind in ("deep", "hybrid")

    def replace(self, **changes: Any) -> "FeatureConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("sigmas", "filters", "shifts", "spacing"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"feature config has unknown field(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**d)

    def key(self) -> str:
        """Stable short string naming what the features depend on (not device / batch size)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS}
        for name, default in _ADDED_LATER.items():
            if d[name] == default or (name == "flip_set" and not self.flips):  # no flips: the flip set is moot
                d.pop(name)
        if not self.volume:
            d.pop("spacing")
        if not self.uses_classical:
            d.pop("sigmas"), d.pop("filters")
        else:  # features cached by an hrdv2 whose filters computed other values must not be reused
            d["classical_version"] = CLASSICAL_VERSION
        if self.normalise == "auto":  # features cached when 'auto' stretched grey images otherwise must not be reused
            d["normalise_version"] = NORMALISE_VERSION
        if not self.uses_deep:
            for k in ("backbone", "weights", "stride", "shifts", "pattern", "flips", "rotations", "pca_components",
                      "facet", "layer", "attention", "geometry", "flip_set", "planes"):
                d.pop(k, None)
        digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.kind}-{digest}"


def standardise(
    x: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel z-score of (..., F) features (statistics over all pixels unless given)."""
    flat = x.reshape(-1, x.shape[-1])
    if mean is None:
        mean = flat.mean(axis=0, dtype=np.float64).astype(np.float32)
    if std is None:
        std = flat.std(axis=0, dtype=np.float64).astype(np.float32)
    std = np.maximum(std, np.float32(1e-6))
    return ((x - mean) / std).astype(np.float32, copy=False), mean, std


def n_image_channels(image: np.ndarray) -> int:
    return 1 if image.ndim == 2 else int(image.shape[-1])


def pca_reduce(x: np.ndarray, k: int, random_state: int = 0) -> np.ndarray:
    """Per-image PCA of (H, W, C) to (H, W, k) (the HR-Dv2 visualisation / compression step)."""
    from hrdv2.features.pca import PCA

    h, w, c = x.shape
    if k >= c:
        return x
    flat = x.reshape(-1, c)
    pca = PCA(k, random_state=random_state).fit(flat)
    out = pca.transform(flat)
    out = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
    return out.reshape(h, w, k).astype(np.float32)


# --------------------------------------------------------------------------- entry point

def normalise_image(image: np.ndarray, mode: str = "auto") -> np.ndarray:
    """float32 image in [0, 1].

    ``percentile``: per channel, stretch the 0.5..99.5 percentiles to 0..1 and clip, so models
    transfer between micrographs of different brightness / contrast (e.g. isb_0 spans 6..248 grey
    levels, the NASA images of the same alloy 107..158). ``robust``: the same, except that an end
    point lying in an outlier tail (a speck of dust, a hole, a scale bar: beyond Tukey's fence,
    :func:`stretch_limits`) is moved in to the fence, so a few odd pixels cannot squeeze the
    contrast of the rest of the image. ``none``: uint8 / 255, other types
    min-max rescaled (``hrdv2.io.to_float01``). ``auto`` (default): ``robust`` for grey images,
    ``none`` for colour ones, whose hue a per-channel stretch would shift (random-forest mIoU on
    the held-out horse photos: 0.46 unstretched, 0.39 stretched; on the held-out superalloy
    micrographs the stretch wins, 0.38 against 0.26). ``lab``: an RGB image as ``none``, then
    converted to CIE Lab (:func:`rgb_to_lab01`), so lightness and the two colour axes are separate
    channels a forest can split on (``auto`` features use it for colour images: docs/segmentation.md).
    """
    from hrdv2.io import to_float01

    if mode == "auto":
        mode = auto_normalise(n_image_channels(image))
    if mode == "lab":
        check_lab_channels(1 if image.ndim == 2 else image.shape[-1])
        return rgb_to_lab01(to_float01(image))
    if mode == "none":
        return to_float01(image)
    x = image.astype(np.float32)
    chans = x[..., None] if x.ndim == 2 else x
    flat = chans.reshape(-1, chans.shape[-1])
    step = max(1, flat.shape[0] // 262144)  # percentiles of a strided subsample: same to ~0.1 %
    lo, hi = stretch_limits(np.percentile(flat[::step], PERCENTILES, axis=0), robust=mode == "robust")
    span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    out = np.clip((chans - lo.astype(np.float32)) / span, 0.0, 1.0)
    return out[..., 0] if x.ndim == 2 else out


def auto_normalise(channels: int) -> str:
    """What normalise 'auto' means for an image of ``channels`` channels: ``robust`` for grey,
    ``none`` for colour (the one place that says so, for whole images and block-wise alike)."""
    return "robust" if channels == 1 else "none"


def stretch_limits(q: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per channel of the stretch from an image's ``PERCENTILES`` ((6, C), as
    ``np.percentile`` returns them). Plain: the 0.5th and 99.5th percentiles. ``robust``: each end
    moved in to Tukey's fence (the quartile -/+ ``FENCE`` x IQR) where it lies beyond it, but never
    past the 5th / 95th percentile, so at most 5 % of the pixels on each side are clipped (the plain
    stretch clips 0.5 %; on a flat background with a few bright objects the brightest 5 % saturate,
    so use 'percentile' where they hold a distinction you need). Why: one NASA superalloy
    micrograph with a 2 % dark defect had its 0.5th percentile at grey level 103 where its matrix
    starts at 160; the plain stretch squeezed its phases together and the default model scored
    0.26 on it (0.52 on its twin); measured over five seeds, the robust stretch gains on superalloy
    and tcell and equals the plain one elsewhere (docs/segmentation.md, "Intensity normalisation")."""
    p_lo, p5, q1, q3, p95, p_hi = np.asarray(q, dtype=np.float64)
    if not robust:
        return p_lo, p_hi
    iqr = q3 - q1
    return np.clip(q1 - FENCE * iqr, p_lo, p5), np.clip(q3 + FENCE * iqr, p95, p_hi)


def check_lab_channels(channels: int, name: str = "the image") -> None:
    """normalise 'lab' converts RGB colour: refuse anything else with the fix."""
    if channels != 3:
        raise ConfigError(f"normalise 'lab' converts RGB colour to CIE Lab, but {name} has {channels} channel(s); "
                          "use normalise 'auto' (grey images get the per-image percentile stretch).")


def rgb_to_lab01(rgb: np.ndarray) -> np.ndarray:
    """float32 (..., 3) CIE Lab (D65) of an sRGB image in [0, 1], scaled to [0, 1] like every other
    normalised image: L / 100, (a + 128) / 255, (b + 128) / 255 (sRGB's gamut spans a in -86..98,
    b in -108..95). Pixel by pixel, so a block converts exactly as the whole image does."""
    from skimage.color import rgb2lab

    lab = rgb2lab(np.asarray(rgb, dtype=np.float32), channel_axis=-1)
    out = np.empty(lab.shape, np.float32)
    out[..., 0] = lab[..., 0] / 100.0
    out[..., 1:] = (lab[..., 1:] + 128.0) / 255.0
    return np.clip(out, 0.0, 1.0, out=out)


def _embed_dim_guess(backbone: str) -> int:
    """Channels of a backbone's tokens from its name, without loading it (for memory estimates)."""
    name = backbone.lower()
    for tag, dim in (("giant", 1536), ("vitg", 1536), ("large", 1024), ("vitl", 1024), ("base", 768), ("vitb", 768),
                     ("small", 384), ("vits", 384), ("tiny", 192), ("vitt", 192)):
        if tag in name:
            return dim
    return 1024


def estimate_feature_bytes(config: FeatureConfig, shape: tuple[int, ...]) -> int:
    """Peak bytes to featurise one image of ``shape`` whole: the (H, W, F) float32 map plus the
    working copies the filters and the standardisation make (measured ~1.5x for classical)."""
    h, w = int(shape[0]), int(shape[1])
    channels = 1 if len(shape) == 2 else int(shape[2])
    n = 0
    if config.uses_classical:
        n += int(1.5 * n_classical(config, channels))
    if config.uses_deep:
        n += _embed_dim_guess(config.backbone) * (2 if config.kind == "hybrid" else 1)
    return 4 * h * w * (n + 3 * channels)


def n_classical(config: FeatureConfig, n_channels: int) -> int:
    """How many leading channels of a (hybrid) feature map are classical."""
    if not config.uses_classical:
        return 0
    if config.volume:
        from hrdv2.features.classical3d import feature_names_3d

        return len(feature_names_3d(config.sigmas, config.filters))
    return len(feature_names(n_channels, config.sigmas, config.filters))
