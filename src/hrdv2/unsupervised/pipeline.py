"""The whole class-agnostic segmentation workflow, from an image to masks and boxes.

``segment_features`` runs steps 2-7 on features you already have (arrays in, dataclass out);
``segment_unsupervised`` adds step 1 (HR-Dv2 features and CLS attention from a backbone) and
handles resizing. Every step is a separate function in this package; this module only
chains them and times each stage.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.presets import PRESETS as PRESETS_TABLE
from hrdv2.presets import extraction_settings
from hrdv2.unsupervised.boxes import DEFAULT_MIN_AREA, Boxes, predict_boxes
from hrdv2.unsupervised.clustering import distinct_pixels, kmeans_clusters
from hrdv2.unsupervised.foreground import SEMANTIC_BINS, attention_map, foreground_clusters, semantic_distance
from hrdv2.unsupervised.merging import DEFAULT_MERGE_FACTOR, merge_segmentation, relabel_foreground

# Feature-extraction settings of the presets, read from the one table (hrdv2.presets): "paper" is
# the HR-Dv2 paper's setting (slow on a CPU: 68 forward passes per image), "published" the same in
# the published code's geometry, "fast" one stride-14 pass on a <= 224 px image. The CLI's presets
# also set the backbone, attention signal and CRF.
PRESETS: dict[str, dict[str, Any]] = {name: extraction_settings(name) for name in PRESETS_TABLE["unsupervised"]}


@dataclass
class UnsupervisedSettings:
    """Parameters of steps 2-7 (defaults are the paper's)."""

    k: int = 80  # k-means clusters
    n_samples: int = 50_000  # pixels k-means is fitted on
    pca_components: int | None = 128  # None: no PCA
    merge_factor: float = DEFAULT_MERGE_FACTOR  # merge below factor x semantic distance (paper 0.9-1.2)
    head: int | None = None  # attention head; None = mean over heads
    bins: int = SEMANTIC_BINS  # histogram bins for the semantic distance
    crf: bool = False  # dense-CRF refinement of the class map (image-guided)
    crf_iter: int = 5
    crf_confidence: float = 0.6  # probability given to a pixel's own class in the CRF unary
    min_area: int = DEFAULT_MIN_AREA  # px (at the output resolution); smaller components get no box
    seed: int = 0

    def check(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1; got {self.k}.")
        if self.pca_components is not None and self.pca_components < 1:
            raise ConfigError(f"pca_components must be >= 1 or None; got {self.pca_components}.")
        if not 0 < self.crf_confidence < 1:
            raise ConfigError(f"crf_confidence must be in (0, 1); got {self.crf_confidence}.")
        if self.min_area < 0:
            raise ConfigError(f"min_area must be >= 0; got {self.min_area}.")


@dataclass
class UnsupervisedResult:
    """Everything the workflow produces for one image (all maps at the output resolution).

    ``classes``: (H, W) int32 class-agnostic label map, ids 1..m. ``foreground``: (H, W) bool
    saliency mask (pixels of foreground classes). ``boxes``: multi-object boxes and the
    superbox. ``clusters``: (h, w) k-means ids at the processing resolution.
    ``message``: why the result is empty (e.g. no foreground found), else None.
    """

    classes: np.ndarray
    foreground: np.ndarray
    boxes: Boxes
    clusters: np.ndarray
    cluster_foreground: np.ndarray
    cluster_densities: np.ndarray
    semantic_distance: float
    foreground_classes: list[int]
    class_densities: np.ndarray
    attention: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    message: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: boxes, classes, settings, timings."""
        return {
            **self.boxes.to_json(),
            "n_classes": int(self.classes.max()) if self.classes.size else 0,
            "foreground_classes": self.foreground_classes,
            "foreground_fraction": float(self.foreground.mean()) if self.foreground.size else 0.0,
            "semantic_distance": None if not np.isfinite(self.semantic_distance) else float(self.semantic_distance),
            "n_clusters": int(self.cluster_foreground.size),
            "message": self.message,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "info": self.info,
        }


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def __call__(self, name: str) -> "_Stage":
        return _Stage(self.t, name)


class _Stage:
    def __init__(self, store: dict[str, float], name: str) -> None:
        self.store, self.name = store, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.store[self.name] = self.store.get(self.name, 0.0) + time.perf_counter() - self.t0


def reduce_features(features: np.ndarray, n_components: int | None, seed: int = 0) -> np.ndarray:
    """PCA of (C, H, W) features to ``n_components`` channels (no-op when C is already small).

    Fitted on the distinct feature vectors (HR-Dv2 maps repeat each vector over many pixels;
    at stride 14 a 224 px image has only ~256 distinct ones), then applied to the whole map.
    """
    if n_components is None or features.shape[0] <= n_components:
        return features
    from threadpoolctl import threadpool_limits

    from hrdv2.features.pca import PCA

    c, h, w = features.shape
    uniq, inverse = distinct_pixels(features)
    n = min(n_components, uniq.shape[0])
    # One BLAS thread: multi-threaded OpenBLAS SVD of these small matrices is ~200x slower on
    # a busy CPU (measured 4.7 s vs 0.02 s for 192 x 384 on 2 shared cores).
    with threadpool_limits(limits=1, user_api="blas"):
        pca = PCA(n, random_state=seed).fit(uniq)
    reduced = np.asarray(pca.transform(uniq), dtype=np.float32)  # project the distinct vectors only
    return np.ascontiguousarray(reduced.T)[:, inverse].reshape(n, h, w)


def labels_to_probs(classes: np.ndarray, confidence: float) -> np.ndarray:
    """(H, W, m) probabilities from a 1..m label map: ``confidence`` on the pixel's own class."""
    m = int(classes.max())
    if m < 2:
        return np.ones((*classes.shape, max(m, 1)), dtype=np.float32)
    probs = np.full((*classes.shape, m), (1.0 - confidence) / (m - 1), dtype=np.float32)
    np.put_along_axis(probs, (classes - 1)[..., None].astype(np.int64), confidence, axis=-1)
    return probs


def crf_refine(image: np.ndarray, classes: np.ndarray, n_iter: int = 5, confidence: float = 0.6) -> np.ndarray:
    """Step 6: image-guided dense-CRF clean-up of a 1..m class map (classes renumbered 1..m')."""
    from hrdv2.crf import dense_crf  # shared with the weakly supervised workflow

    if classes.max() < 2:
        return classes
    probs = dense_crf(image, labels_to_probs(classes, confidence), n_iter=n_iter)
    refined = np.argmax(probs, axis=-1)
    _, inv = np.unique(refined, return_inverse=True)
    return (inv.reshape(classes.shape) + 1).astype(np.int32)


def _resize(arr: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize a 2-D map to (H, W): nearest for labels, bilinear for continuous maps (PIL)."""
    from PIL import Image

    if arr.shape == shape:
        return arr
    mode_arr = arr.astype(np.int32) if nearest else arr.astype(np.float32)
    im = Image.fromarray(mode_arr, mode="I" if nearest else "F")
    im = im.resize((shape[1], shape[0]), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
    return np.asarray(im).astype(arr.dtype if nearest else np.float32)


def segment_features(
    features: np.ndarray,
    attention: np.ndarray,
    image: np.ndarray | None = None,
    settings: UnsupervisedSettings | None = None,
    output_shape: tuple[int, int] | None = None,
    timings: dict[str, float] | None = None,
) -> UnsupervisedResult:
    """Steps 2-7 on (C, h, w) features and (heads, h, w) or (h, w) CLS attention.

    ``image`` (h, w[, 3]) is needed only for the CRF. ``output_shape`` (H, W): the label map,
    mask and boxes are returned at that size (nearest resize), e.g. the original image size
    when the features were computed on a downscaled copy.
    """
    s = settings or UnsupervisedSettings()
    s.check()
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3:
        raise ShapeError(f"features must be (C, H, W); got shape {features.shape}.")
    attn = attention_map(attention, s.head)
    if attn.shape != features.shape[1:]:
        raise ShapeError(f"attention {attn.shape} and features {features.shape[1:]} must share (H, W).")
    if s.crf and image is None:
        raise ConfigError("crf=True needs the image (it guides the CRF); pass image=...")
    timer = _Timer()
    if timings:
        timer.t.update(timings)

    with timer("pca"):
        reduced = reduce_features(features, s.pca_components, s.seed)
    with timer("kmeans"):
        clusters = kmeans_clusters(reduced, s.k, s.n_samples, s.seed)
    with timer("foreground"):
        is_fg, dens = foreground_clusters(clusters.labels, attn, clusters.n_clusters)
        sem = semantic_distance(clusters.centroids, is_fg, s.bins)
    message = None
    with timer("merging"):
        if not is_fg.any():
            # Nothing stands out: keep the over-segmentation, report no foreground.
            merged = relabel_foreground(clusters.labels + 1, attn)
            merged.foreground = []
            message = "no foreground found: the attention density is the same in every cluster"
        else:
            merged = merge_segmentation(clusters.labels, clusters.centroids, attn, sem, s.merge_factor)
    if s.crf and merged.foreground:
        with timer("crf"):
            merged = relabel_foreground(crf_refine(image, merged.classes, s.crf_iter, s.crf_confidence), attn)
    if message is None and not merged.foreground:
        message = "no foreground found: after merging, no class is denser in attention than the mean"

    out_shape = tuple(output_shape) if output_shape is not None else merged.classes.shape
    with timer("boxes"):
        classes = _resize(merged.classes, out_shape, nearest=True)
        attn_out = _resize(attn, out_shape, nearest=False)
        boxes = predict_boxes(classes, merged.foreground, attn_out, s.min_area)
    return UnsupervisedResult(
        classes=classes,
        foreground=np.isin(classes, merged.foreground),
        boxes=boxes,
        clusters=clusters.labels,
        cluster_foreground=is_fg,
        cluster_densities=dens,
        semantic_distance=sem,
        foreground_classes=merged.foreground,
        class_densities=merged.densities,
        attention=attn_out,
        timings=timer.t,
        info={"settings": asdict(s), "k_used": clusters.k_used, "processing_shape": list(features.shape[1:])},
        message=message,
    )


def build_featurizer(
    backbone: Any = "dinov2_vits14",
    weights: str | None = None,
    stride: int | None = 4,
    shifts: tuple[int, ...] = (1, 2),
    flips: bool = True,
    batch_size: int = 4,
    device: str = "cpu",
    *,
    facet: str = "token",
    layer: int | None = None,
    attention: str = "softmax",
    geometry: str = "hrdv2",
    flip_set: str = "hrdv2",
) -> Any:
    """A ``HighResFeaturizer`` for the given backbone (name or loaded ``Backbone``) and transforms.

    ``shifts`` are Moore-neighbourhood distances in pixels (the identity is always included);
    ``flips`` adds the left-right / up-down flips of every shifted copy. ``facet``/``layer``: which
    features (docs/backbones.md); ``attention``: "softmax" (CLS attention) or "o" (the published
    code's CLS attention output . values), the signal foreground detection reads. ``geometry`` /
    ``flip_set``: "hrdv2" or "published" (docs/geometry.md).
    """
    from hrdv2.engine import FeatureEngine, transform_set
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.upsample import HighResFeaturizer

    if isinstance(backbone, str):  # by name: the feature engine loads and owns it
        config = FeatureConfig(kind="deep", backbone=backbone, weights=weights, stride=stride, shifts=tuple(shifts),
                               flips=flips, batch_size=batch_size, device=device, facet=facet, layer=layer,
                               attention=attention, geometry=geometry, flip_set=flip_set)
        return FeatureEngine(config).featurizer(attention=True)
    transforms = transform_set(tuple(shifts), "moore", flips, flip_set=flip_set)
    return HighResFeaturizer(backbone, stride=stride, transforms=transforms, batch_size=batch_size,
                             attention=attention, facet=facet, layer=layer, geometry=geometry)


def resize_for_processing(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (keeping the aspect ratio, PIL Lanczos) so the longer side is <= max_side."""
    from PIL import Image

    from hrdv2.io import to_float01

    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    if max_side < 14:
        raise ConfigError(f"max_side={max_side} is too small; use at least one patch (14 px), e.g. 224.")
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    u8 = image if image.dtype == np.uint8 else (to_float01(image) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(u8).resize(size, Image.Resampling.LANCZOS))


def segment_unsupervised(
    image: np.ndarray,
    backbone: Any = "dinov2_vits14",
    weights: str | None = None,
    *,
    settings: UnsupervisedSettings | None = None,
    stride: int | None = 4,
    shifts: tuple[int, ...] = (1, 2),
    flips: bool = True,
    max_side: int | None = None,
    featurizer: Any = None,
    progress_callback: Callable[..., Any] | None = None,
    **overrides: Any,
) -> UnsupervisedResult:
    """Class-agnostic segmentation, saliency mask and object boxes of one image, no labels.

    Defaults are the paper's (DINOv2 ViT-S/14, stride 4, shifts 1,2 Moore + flips, PCA 128,
    k = 80, merge factor 1.0). Pass ``featurizer`` (from ``build_featurizer``) to reuse one
    model over many images; keyword ``overrides`` set ``UnsupervisedSettings`` fields
    (``k=40, crf=True``...). Outputs are at the input image's size even when ``max_side``
    downscales it for feature extraction.
    """
    s = settings or UnsupervisedSettings()
    if overrides:
        unknown = set(overrides) - set(asdict(s))
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(asdict(s))}.")
        s = UnsupervisedSettings(**{**asdict(s), **overrides})
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ShapeError(f"image must be (H, W) grey or (H, W, 3) RGB; got shape {image.shape}.")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise ShapeError(f"image holds {bad} NaN/inf value(s), which would turn every feature into NaN; "
                         "replace them (e.g. with the image minimum) first.")
    timer = _Timer()
    with timer("features"):
        fz = featurizer or build_featurizer(backbone, weights, stride, shifts, flips)
        small = resize_for_processing(image, max_side)
        res = fz(small, progress_callback=progress_callback)
        feats = np.ascontiguousarray(res.features.detach().float().cpu().numpy())  # later steps reshape it
        if res.attention is None:
            raise ConfigError("this featurizer returned no CLS attention; the unsupervised workflow needs it.")
        attn = res.attention.detach().float().cpu().numpy()
    from hrdv2.io import to_rgb01

    guide = (to_rgb01(small) * 255).round().astype(np.uint8) if s.crf else None
    out = segment_features(feats, attn, guide, s, output_shape=image.shape[:2], timings=timer.t)
    bb = getattr(fz, "backbone", None)
    out.info.update(
        {
            "backbone": bb.describe() if hasattr(bb, "describe") else str(backbone),
            "pretrained": bool(getattr(bb, "pretrained", False)),
            "stride": getattr(fz, "stride", stride),
            "n_transforms": len(getattr(fz, "transforms", []) or []) or None,
            "max_side": max_side,
            "image_shape": list(image.shape[:2]),
        }
    )
    return out
