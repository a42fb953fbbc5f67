"""FeatureEngine: the one owner of "how an image becomes features".

Given a :class:`~hrdv2.features.sets.FeatureConfig`, an engine owns the backbone (loaded once,
through a :class:`BackboneCache` its owner may share), the transform set, the HR-Dv2
featurizer, the classical filters, the disk cache and its keys, and the device. The CLI,
``Segmenter``, the web app, the unsupervised workflow and the probe all featurise through it,
so a trained model is always applied with exactly the features it was trained on.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.classical import classical_features
from hrdv2.features.sets import (
    FeatureConfig, Progress, estimate_feature_bytes, normalise_image, pca_reduce, standardise,
)


def check_image(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) colour, at least 4x4, no NaN/inf; (H, W, 1) becomes (H, W)."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)) or min(image.shape[:2]) < 4:
        raise ShapeError(f"expected an (H, W) grey or (H, W, 3) colour image of at least 4x4 px, got {image.shape}.")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ShapeError(f"image holds {int(np.count_nonzero(~np.isfinite(image)))} NaN/inf value(s), which would "
                         "make every feature NaN; replace them (e.g. with the image minimum) first.")
    return image


class Moments:
    """Per-channel mean and standard deviation of (..., F) features fed block by block (Chan et
    al.'s pairwise update in float64): the statistics ``standardise`` takes over the whole image,
    to float precision, without holding the image (block-wise hybrid features)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray, chunk: int = 1 << 16) -> None:
        flat = x.reshape(-1, x.shape[-1])
        for s in range(0, flat.shape[0], chunk):  # float64 copies of at most `chunk` rows
            part = flat[s:s + chunk].astype(np.float64)
            n, mean = part.shape[0], part.mean(axis=0)
            m2 = ((part - mean) ** 2).sum(axis=0)
            if self.mean is None or self.m2 is None:
                self.n, self.mean, self.m2 = n, mean, m2
                continue
            total = self.n + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta**2 * (self.n * n / total)
            self.n = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32, like ``standardise`` computes them."""
        if self.mean is None or self.m2 is None:
            raise ShapeError("no pixels were seen: cannot standardise features of an empty image.")
        return self.mean.astype(np.float32), np.sqrt(self.m2 / self.n).astype(np.float32)


def check_finite_volume(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """``volume`` itself, or a one-line error if it holds NaN/inf (every feature would be NaN)."""
    if volume.dtype.kind == "f" and not np.all(np.isfinite(volume)):
        raise ShapeError(f"{name}: holds NaN/inf values, which would make every feature NaN; replace them "
                         "(e.g. with the volume minimum) first.")
    return volume


def compute_features(image: np.ndarray, config: FeatureConfig, progress: Progress = None) -> np.ndarray:
    """One-off (H, W, F) float32 features of ``image`` (builds a throw-away engine: to featurise
    many images with a backbone, keep a :class:`FeatureEngine`)."""
    return FeatureEngine(config).compute(image, progress)


class BackboneCache:
    """Loaded backbones keyed by (name, weights, device).

    Not a module global: whoever needs backbones shared (the web app, a Dask worker, one CLI
    run) owns one and hands it to the engines it builds.
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str, weights: str | None, device: str) -> Any:
        from hrdv2.backbones import load_backbone
        from hrdv2.device import resolve_device

        device = str(resolve_device(device))  # "cuda" and "cuda:0" are one device, one load
        key = (name, None if weights is None else str(weights), device)
        with self._lock:  # loading holds the lock: two threads never load the same weights twice
            if key not in self._loaded:
                self._loaded[key] = load_backbone(name, weights=weights, device=device)
            return self._loaded[key]

    def put(self, backbone: Any, weights: str | None = None) -> None:
        """Register an already loaded backbone (e.g. the probe's) under its name, weights and device,
        so engines built for it use it instead of loading another copy."""
        key = (backbone.name, None if weights is None else str(weights), str(backbone.device))
        with self._lock:
            self._loaded[key] = backbone

    def __len__(self) -> int:
        return len(self._loaded)


def transform_set(shifts: tuple[int, ...], pattern: str = "moore", flips: bool = False, rotations: bool = False,
                  flip_set: str = "hrdv2") -> list:
    """The transforms HR-Dv2 averages over: identity + shifts, times flips, times quarter turns.
    ``flip_set="published"``: the published code's flips, combined with the shifts its way."""
    from hrdv2 import transforms as T

    sets = [T.shifts(tuple(shifts), pattern) if shifts else [T.Identity()]]
    if flips:
        sets.append(T.flips(flip_set))
    if rotations:
        sets.append(T.rotations())
    composition = "published" if flips and flip_set == "published" else "exact"
    return T.product(*sets, composition=composition) if len(sets) > 1 else list(sets[0])


class FeatureEngine:
    """Features for one :class:`FeatureConfig`, for a whole image (``features``) or a block.

    ``cache_dir``: an on-disk feature cache keyed by image content and ``config.key()``.
    ``backbones``: a shared :class:`BackboneCache` (a private one by default).
    """

    def __init__(self, config: FeatureConfig, *, cache_dir: str | Path | None = None,
                 backbones: BackboneCache | None = None, dtype: str = "float32"):
        if not isinstance(config, FeatureConfig):
            raise ConfigError(f"FeatureEngine needs a FeatureConfig, got {type(config).__name__}.")
        self.config = config
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.backbones = backbones if backbones is not None else BackboneCache()
        self.dtype = dtype  # ViT compute dtype (accumulation stays float32): a runtime choice, not in the key
        self._featurizers: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_backbone(cls, backbone: Any, **config: Any) -> "FeatureEngine":
        """A deep-feature engine over an already loaded ``backbone`` (its name, weights source and
        device fill the config): for tools that receive a backbone object (the probe)."""
        weights = getattr(backbone, "weights_source", None)
        backbones = BackboneCache()
        backbones.put(backbone, weights)
        cfg = FeatureConfig(kind=config.pop("kind", "deep"), backbone=backbone.name, weights=weights,
                            device=str(backbone.device), **config)
        return cls(cfg, backbones=backbones)

    # -- the deep side ------------------------------------------------------------------------
    @property
    def backbone(self) -> Any:
        """The loaded backbone (deep and hybrid configs only)."""
        if not self.config.uses_deep:
            raise ConfigError(f"{self.config.kind} features use no backbone.")
        c = self.config
        return self.backbones.get(c.backbone, c.weights, c.device)

    def transforms(self) -> list:
        c = self.config
        return transform_set(c.shifts, c.pattern, c.flips, c.rotations, c.flip_set)

    def featurizer(self, *, attention: bool = False, dtype: str | None = None, progress: bool = False) -> Any:
        """The HR-Dv2 featurizer of this config (built once per attention/dtype/progress choice)."""
        from hrdv2.upsample import HighResFeaturizer

        dtype = dtype or self.dtype
        key = (attention, dtype, progress)
        with self._lock:
            if key not in self._featurizers:
                c = self.config
                self._featurizers[key] = HighResFeaturizer(
                    self.backbone, stride=c.stride, transforms=self.transforms(), batch_size=c.batch_size,
                    dtype=dtype, attention=c.attention if attention else False, progress=progress,
                    facet=c.facet, layer=c.layer, geometry=c.geometry,
                )
            return self._featurizers[key]

    def describe(self) -> str:
        """e.g. "dinov2_vits14 (random weights, UNTRAINED)": what every benchmark must state."""
        if not self.config.uses_deep:
            return "none (classical features)"
        return self.backbone.describe()

    # -- features -----------------------------------------------------------------------------
    def compute(self, image: np.ndarray, progress: Progress = None) -> np.ndarray:
        """(H, W, F) float32 features of one image, never from the cache.

        ``hybrid`` = per-image standardised classical features next to per-image standardised
        deep features (so neither block dominates by scale). ``pca_components`` compresses the
        deep block with a PCA fitted on this image; a :class:`~hrdv2.segmentation.Segmenter`
        instead fits one PCA on its training pixels so features of new images stay comparable.
        """
        config = self.config
        if config.volume:
            raise ConfigError("this feature config filters in 3D (volume mode): featurise a (Z, Y, X) volume block-wise "
                              "(hrdv2.engine.BlockFeatures; `hrdv2 apply` on a stack), not a single image.")
        image = check_image(image)
        image = normalise_image(image, config.normalise)
        if config.kind == "classical":
            return classical_features(image, config.sigmas, config.filters, progress=progress)
        n_steps = 2 if config.kind == "hybrid" else 1

        def sub(step: int) -> Progress:
            if progress is None:
                return None
            return lambda d, t: progress(step * 100 + int(100 * d / max(t, 1)), n_steps * 100)

        deep = self.deep_features(image, progress=sub(n_steps - 1))
        if config.pca_components:
            deep = pca_reduce(deep, int(config.pca_components))
        if config.kind == "deep":
            return deep
        cls = classical_features(image, config.sigmas, config.filters, progress=sub(0))
        return np.concatenate([standardise(cls)[0], standardise(deep)[0]], axis=-1)

    def volume_features(self, volume: np.ndarray, progress: Any = None, name: str = "volume") -> np.ndarray:
        """(Z, Y, X, F) float32 features of a whole grey (Z, Y, X) volume in volume mode, normalised
        with the whole volume's statistics: classical 3-D filters, or deep features of its slices
        (``planes`` xy, or the xy/xz/yz mean: :mod:`hrdv2.engine.planes`). Held whole: deep volumes
        above :data:`hrdv2.engine.planes.MAX_PLANES_BYTES` are refused. ``progress``: tqdm-like."""
        from hrdv2.features.blockwise import image_normalisation, normalise_block

        config = self.config
        if not config.volume:
            raise ConfigError("volume_features needs a volume-mode config (volume=True); featurise 2-D images with "
                              "features(image).")
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ShapeError(f"{name}: volume mode needs a grey (Z, Y, X) volume, got shape {volume.shape}.")
        x = normalise_block(check_finite_volume(volume, name), image_normalisation(volume, config.normalise))
        if config.kind == "classical":
            from hrdv2.features.classical3d import classical_features_3d

            return classical_features_3d(x, config.sigmas, config.filters, config.spacing)
        from hrdv2.engine.planes import check_planes_size, plane_features

        check_planes_size(volume.shape, self.backbone.feature_dim(config.facet, config.layer), name)
        return plane_features(x, self.deep_features, config.planes, config.spacing, progress=progress)

    def deep_features(self, image01: np.ndarray, progress: Progress = None) -> np.ndarray:
        """(H, W, C) float32 HR-Dv2 features (before any PCA) of a normalised [0, 1] image."""
        res = self.featurizer()(image01, progress_callback=progress)
        arr = res.features.detach().cpu().float().numpy()
        return np.ascontiguousarray(np.moveaxis(arr, 0, -1))

    def features(self, image: np.ndarray, progress: Progress = None) -> np.ndarray:
        """(H, W, F) float32 features of ``image``, through the disk cache when there is one."""
        if self.cache_dir is None:
            return self.compute(image, progress)
        from hrdv2.features.cache import FeatureCache

        return FeatureCache(self.cache_dir).get_or_compute(
            image, self.config, compute=lambda: self.compute(image, progress))

    def estimate_bytes(self, shape: tuple[int, ...]) -> int:
        """Peak bytes to featurise an image of ``shape`` whole (for refusing work that cannot fit)."""
        return estimate_feature_bytes(self.config, shape)
