"""What one tuning trial does, per workflow: a search space (Optuna's define-by-run ``suggest``)
that yields the options of the real command (``hrdv2 train`` / ``hrdv2 unsupervised``, by their
flag names, so the best set is a ``--config`` file), and an ``evaluate`` that runs the workflow
with them on a labelled folder and returns its quality.

* ``TrainTask``: scribble segmentation. Each image is trained on its own ``NAME_scribble.png``
  and scored against its dense ``NAME_gt.png`` (mIoU over its classes; the quality is the mean
  over images), or with ``pooled=True`` one model is trained on all scribbles and scored on all
  images together (class ids must then mean the same in every image).
* ``UnsupervisedTask``: class-agnostic segmentation; quality is the mean foreground IoU against
  ``NAME_gt.png`` (0 = ignore, 1 = background, >= 2 = foreground; the ``folder`` convention of
  ``hrdv2 bench unsupervised``).

Images and labels are read once, before the first trial, so trial times are workflow time only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError

CLASSIFIERS = ("logistic", "random_forest", "gradient_boosting")
SIGMA_SETS = ("1,2,4,8,16", "1,2,4,8", "0.5,1,2,4,8", "2,4,8,16")
FILTER_SETS = ("default", "all", "intensity,gaussian,gradient,dog", "default,membrane")
TRANSFORM_SETS = {  # name -> (shifts, flips): HR-Dv2 transform sets, cheapest first (1, 9, 17, 68 ViT passes)
    "none": ("", False), "shift1": ("1", False), "shift12": ("1,2", False), "shift12-flips": ("1,2", True),
}
PCA_DIMS = (0, 16, 32, 64, 128)  # 0: no PCA before k-means


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


class TrainTask:
    """Tune ``hrdv2 train``: feature preset, filters, sigmas, classifier (and, with weights,
    deep/hybrid features with stride and flips)."""

    workflow = "train"

    def __init__(self, data: str | Path, *, weights: str | None = None, backbone: str = "dinov2_vits14",
                 device: str = "cpu", max_samples: int = 20_000, pooled: bool = False, limit: int | None = None,
                 seed: int = 0):
        from hrdv2.datasets.folder import FolderDataset
        from hrdv2.engine import BackboneCache

        samples = [s for s in FolderDataset(data, require="gt") if s.scribble_path is not None][:limit]
        if not samples:
            raise ImageReadError(f"{data}: no image has both NAME_scribble.png and NAME_gt.png; `tune --workflow train` "
                                 "trains on the scribbles and scores against the dense ground truth, so it needs both.")
        self.names = [s.name for s in samples]
        self.images = [s.image() for s in samples]
        self.scribbles = [s.scribble() for s in samples]
        self.gts = [s.gt() for s in samples]
        self.weights, self.backbone, self.device = weights, backbone, device
        self.max_samples, self.pooled, self.seed = int(max_samples), bool(pooled), seed
        self.backbones = BackboneCache()  # one backbone load for all trials
        self.deep = weights is not None  # deep search spaces only when weights are given
        bb = self.backbones.get(backbone, weights, device) if self.deep else None  # loads (or fails) up front
        self.patch = bb.patch_size if bb is not None else None
        self.describe_backbone = bb.describe() if bb is not None else None

    def describe(self) -> str:
        what = f"{len(self.images)} image(s) with scribbles and ground truth"
        if not self.deep:
            return f"{what}; classical features only (give --weights to search deep/hybrid features too)"
        return f"{what}; backbone {self.describe_backbone}"

    def suggest(self, trial: Any) -> dict[str, Any]:
        kinds = ("classical", "deep", "hybrid") if self.deep else ("classical",)
        kind = trial.suggest_categorical("features", kinds)
        opts: dict[str, Any] = {"features": kind, "classifier": trial.suggest_categorical("classifier", CLASSIFIERS)}
        if kind != "deep":
            opts["filters"] = trial.suggest_categorical("filters", FILTER_SETS)
            opts["sigmas"] = trial.suggest_categorical("sigmas", SIGMA_SETS)
        if kind != "classical":
            opts["stride"] = trial.suggest_categorical("stride", (self.patch, self.patch // 2))
            opts["flips"] = trial.suggest_categorical("flips", (False, True))
            opts.update(backbone=self.backbone, weights=self.weights, device=self.device)
        opts["max-samples"] = self.max_samples
        return opts

    def _config(self, opts: dict[str, Any]):
        from hrdv2.features.sets import FeatureConfig

        kw: dict[str, Any] = {"kind": opts["features"], "device": self.device}
        if "filters" in opts:
            kw.update(filters=opts["filters"], sigmas=_floats(opts["sigmas"]))
        if opts["features"] != "classical":
            kw.update(backbone=self.backbone, weights=self.weights, stride=opts.get("stride"),
                      flips=bool(opts.get("flips", False)))
        return FeatureConfig(**kw)

    def evaluate(self, opts: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """(quality, per-image mIoU) of the options: train, predict, score against the ground truth."""
        from hrdv2.metrics.segmentation import compact_confusion, mean_iou
        from hrdv2.segmentation import Segmenter

        def model():
            return Segmenter(self._config(opts), classifier=opts["classifier"], max_samples=self.max_samples,
                             random_state=self.seed, backbones=self.backbones)

        scores: dict[str, float] = {}
        if self.pooled:
            seg = model()
            feats = [seg.featurise(im) for im in self.images]
            seg.fit(self.images, self.scribbles, feats, names=self.names)
            preds = [seg.predict(im, features=f) for im, f in zip(self.images, feats)]
            for name, p, g in zip(self.names, preds, self.gts):
                scores[name] = mean_iou(compact_confusion([(p, g)])[1])
            return mean_iou(compact_confusion(list(zip(preds, self.gts)))[1]), scores
        for name, im, scr, gt in zip(self.names, self.images, self.scribbles, self.gts):
            seg = model()
            feats = seg.featurise(im)
            seg.fit([im], [scr], [feats], names=[name])
            scores[name] = mean_iou(compact_confusion([(seg.predict(im, features=feats), gt)])[1])
        return float(np.mean(list(scores.values()))), scores


class UnsupervisedTask:
    """Tune ``hrdv2 unsupervised``: transform set, stride, PCA dimension, k and merge factor."""

    workflow = "unsupervised"

    def __init__(self, data: str | Path, *, weights: str | None = None, backbone: str = "dinov2_vits14",
                 device: str = "cpu", max_side: int | None = 224, strides: str | None = None,
                 transforms: str | None = None, limit: int | None = None, seed: int = 0):
        from hrdv2.datasets.localisation import open_localisation_dataset
        from hrdv2.engine import BackboneCache

        samples = list(open_localisation_dataset("folder", data))[:limit]
        self.names = [s.name for s in samples]
        self.images = [s.image() for s in samples]
        self.masks = [s.mask(im.shape[:2]) for s, im in zip(samples, self.images)]
        self.weights, self.backbone, self.device = weights, backbone, device
        self.max_side, self.seed = max_side, seed
        self.backbones = BackboneCache()
        bb = self.backbones.get(backbone, weights, device)  # loads (or fails) before any trial
        self.describe_backbone = bb.describe()
        P = bb.patch_size
        self.strides = _ints(strides) if strides else (P, P // 2)
        bad = [s for s in self.strides if not 1 <= s <= P]
        if bad:
            raise ConfigError(f"--strides {strides!r}: strides must lie in 1..{P} (the patch size of {backbone}).")
        self.transforms = tuple(v.strip() for v in transforms.split(",") if v.strip()) if transforms \
            else tuple(TRANSFORM_SETS)
        unknown = [v for v in self.transforms if v not in TRANSFORM_SETS]
        if unknown or not self.transforms:
            raise ConfigError(f"--transforms {transforms!r}: choose from {', '.join(TRANSFORM_SETS)}.")

    def describe(self) -> str:
        size = f"<= {self.max_side} px" if self.max_side else "full size"
        return f"{len(self.images)} image(s) with ground truth, features at {size}; backbone {self.describe_backbone}"

    def suggest(self, trial: Any) -> dict[str, Any]:
        shifts, flips = TRANSFORM_SETS[trial.suggest_categorical("transforms", self.transforms)]
        return {
            "preset": "fast", "backbone": self.backbone, "weights": self.weights, "device": self.device,
            "stride": trial.suggest_categorical("stride", self.strides), "shifts": shifts, "flips": flips,
            "max-side": self.max_side or 0, "pca": trial.suggest_categorical("pca", PCA_DIMS),
            "k": trial.suggest_int("k", 10, 80, step=10),
            "merge-factor": round(trial.suggest_float("merge_factor", 0.8, 1.3, step=0.05), 2), "seed": self.seed,
        }

    def evaluate(self, opts: dict[str, Any]) -> tuple[float, dict[str, float]]:
        """(mean foreground IoU, per-image IoU) of the options."""
        from hrdv2.engine import FeatureEngine
        from hrdv2.features.sets import FeatureConfig
        from hrdv2.metrics.localisation import foreground_iou
        from hrdv2.unsupervised import UnsupervisedSettings, segment_unsupervised

        config = FeatureConfig(kind="deep", backbone=self.backbone, weights=self.weights, stride=opts["stride"],
                               shifts=_ints(opts["shifts"]), flips=opts["flips"], device=self.device)
        fz = FeatureEngine(config, backbones=self.backbones).featurizer(attention=True)
        settings = UnsupervisedSettings(k=opts["k"], pca_components=opts["pca"] or None,
                                        merge_factor=opts["merge-factor"], seed=self.seed)
        scores: dict[str, float] = {}
        for name, im, (fg, valid) in zip(self.names, self.images, self.masks):
            res = segment_unsupervised(im, settings=settings, featurizer=fz, max_side=self.max_side or None)
            scores[name] = float(foreground_iou(res.foreground, fg, valid))
        return float(np.mean(list(scores.values()))), scores
