"""Scribble-trained pixel classifier with the scikit-learn shape (fit / predict / save / load).

Training pixels are the scribbled ones, capped with class-balanced sampling (see
:mod:`hrdv2.segmentation.sampling`). Models are saved with skops, never pickle, and loaded only
if they hold exactly the types hrdv2 writes (:mod:`hrdv2.segmentation.model_file`), so a model
file from elsewhere cannot run code. The file carries the feature config and class names, so
``Segmenter.load(path).predict(image)`` featurises exactly as at training time.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hrdv2.errors import ConfigError, HRDv2Error, ModelFileError, ShapeError
from hrdv2.features.classical import CLASSICAL_VERSION
from hrdv2.features.sets import NORMALISE_VERSION, FeatureConfig, n_classical, n_image_channels
from hrdv2.segmentation.sampling import balanced_sample

CLASSIFIERS = ("logistic", "random_forest", "gradient_boosting")
FORMAT = "hrdv2-segmenter"
FORMAT_VERSION = 1
PREDICT_CHUNK = 1 << 18  # rows per predict_proba call: bounds the classifier's temporary memory
# The default forest fits each tree on a bootstrap sample of at most FOREST_TREE_SAMPLES pixels
# (all of them below that). On the classical-quality benchmark's 7 sets (docs/segmentation.md),
# against full-size samples in the same run: five sets identical (small scribbles), tcell 0.391
# against 0.384, isb_1 0.915 against 0.926, mean 0.594 against 0.595; the fit at the 20 000-pixel
# cap takes ~3x less CPU (a classical `hrdv2 train` of two 512x512 images: 1.0 -> 0.37 s of ~1.8 s).
FOREST_DEFAULTS: dict[str, Any] = {"n_estimators": 40, "max_depth": 10}
FOREST_TREE_SAMPLES = 5000
Progress = Callable[[int, int], None] | None


def make_classifier(name: str, random_state: int | None = 0, n_samples: int | None = None, **params: Any):
    """Default estimators, chosen for fit + apply speed on ~10^5 training / 10^6 test pixels.
    ``n_samples``: the training pixels it will be fitted on (sets the forest's per-tree sample)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        from sklearn.linear_model import LogisticRegression

        kw = {"max_iter": 1000, "C": 1.0, **params}
        return make_pipeline(StandardScaler(), LogisticRegression(random_state=random_state, **kw))
    if name == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        kw = {**FOREST_DEFAULTS, "n_jobs": -1, **params}
        if "max_samples" not in kw and n_samples is not None and n_samples > FOREST_TREE_SAMPLES:
            kw["max_samples"] = FOREST_TREE_SAMPLES
        return RandomForestClassifier(random_state=random_state, **kw)
    if name == "gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        # feature subsampling + large leaves: boosting otherwise fits the training image's own
        # appearance (measured on held-out images: isbi2012 mIoU 0.43 -> 0.61, horse 0.40 -> 0.45)
        kw = {"max_iter": 50, "learning_rate": 0.15, "max_leaf_nodes": 15, "max_features": 0.3,
              "min_samples_leaf": 50, "early_stopping": False, **params}
        return HistGradientBoostingClassifier(random_state=random_state, **kw)
    raise ConfigError(f"unknown classifier {name!r}; choose one of {list(CLASSIFIERS)}.")


def _as_config(features: FeatureConfig | str | dict) -> FeatureConfig:
    if isinstance(features, FeatureConfig):
        return features
    if isinstance(features, str):
        return FeatureConfig(kind=features)
    if isinstance(features, dict):
        return FeatureConfig.from_dict(features)
    raise ConfigError(f"features must be a FeatureConfig, a kind name or a dict, got {type(features).__name__}.")


class Segmenter:
    """Train on scribbles (0 = unlabelled, 1..K = class), segment new images of the same kind."""

    def __init__(
        self,
        features: FeatureConfig | str = "classical",
        classifier: str = "random_forest",
        crf: bool = False,
        max_samples: int = 20_000,
        class_names: Sequence[str] | None = None,
        random_state: int | None = 0,
        *,
        classifier_params: dict | None = None,
        crf_params: dict | None = None,
        cache_dir: str | Path | None = None,
        backbones: Any = None,
        auto_budget_s: float | None = None,
    ):
        # "auto": fit() chooses classical filters, scales, classifier and normalisation from the
        # scribbles by cross-validation over strokes / images (hrdv2.features.auto)
        self.auto = isinstance(features, str) and features == "auto"
        self.auto_budget_s = auto_budget_s
        self.features = FeatureConfig() if self.auto else _as_config(features)
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"unknown classifier {classifier!r}; choose one of {list(CLASSIFIERS)}.")
        if int(max_samples) < 10:
            raise ConfigError(f"max_samples must be at least 10, got {max_samples}.")
        self.classifier = classifier
        self.crf = bool(crf)
        self.max_samples = int(max_samples)
        self.class_names = list(class_names) if class_names is not None else None
        self.random_state = random_state
        self.classifier_params = dict(classifier_params or {})
        self.crf_params = dict(crf_params or {})
        self.cache_dir = cache_dir
        self.backbones = backbones  # a shared hrdv2.engine.BackboneCache (e.g. the web app's), or None

    def _threads(self):
        """Logistic regression works on small matrices: BLAS threads only add overhead, and on a
        busy machine their spin-waits made fitting ~10x slower (measured); run it single-threaded."""
        if self.classifier == "logistic":
            from threadpoolctl import threadpool_limits

            return threadpool_limits(1, user_api="blas")
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ featurising
    @property
    def compute_config(self) -> FeatureConfig:
        """The config of the features ``fit``/``predict`` expect via ``features=`` (PCA is learnt here)."""
        return self.features.replace(pca_components=None) if self.features.uses_deep else self.features

    @property
    def engine(self):
        """The :class:`~hrdv2.engine.FeatureEngine` of this model's own config (built once, with the
        backbone cache given to the constructor, if any): the only way this model featurises."""
        from hrdv2.engine import FeatureEngine

        config = self.compute_config
        cached = getattr(self, "_engine", None)
        if cached is None or cached.config != config or cached.cache_dir != (
                None if self.cache_dir is None else Path(self.cache_dir)):
            self._engine = FeatureEngine(config, cache_dir=self.cache_dir, backbones=self.backbones)
        return self._engine

    def featurise(self, image: np.ndarray, progress: Progress = None) -> np.ndarray:
        """Features of ``image`` as this model consumes them, before its learnt PCA."""
        return self.engine.features(image, progress)

    def _rows(self, feats: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Flatten (H, W, F) -> (N, F') float32, applying the learnt PCA of the deep block."""
        flat = feats.reshape(-1, feats.shape[-1])
        x = flat if rows is None else flat[rows]
        x = np.asarray(x, dtype=np.float32)
        if getattr(self, "pca_", None) is not None:
            x = np.concatenate([x[:, : self.n_classical_], self.pca_.transform(x[:, self.n_classical_ :])], axis=1)
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ training
    def _check_pair(self, i: int, name: str, image: np.ndarray, scr: np.ndarray, allowed: int | None) -> None:
        if scr.ndim != 2:
            raise ShapeError(f"{name}: scribble must be a single-channel (H, W) label map, got shape {scr.shape}.")
        if scr.shape != image.shape[:2]:
            raise ShapeError(
                f"{name}: scribble is {scr.shape[1]}x{scr.shape[0]} (WxH) but its image is "
                f"{image.shape[1]}x{image.shape[0]}; paint the scribble on the same image size."
            )
        if not np.any(scr > 0):
            raise HRDv2Error(f"{name}: the scribble is empty (no pixel > 0). Paint at least one stroke per class.")
        if allowed is not None and int(scr.max()) > allowed:
            bad = sorted(int(c) for c in np.unique(scr) if c > allowed)
            raise HRDv2Error(
                f"{name}: scribble contains class id(s) {bad} but the model knows only ids 1..{allowed} "
                f"({self.class_names}). Add class names or fix the label values."
            )

    def fit(
        self,
        images: Sequence[np.ndarray],
        scribbles: Sequence[np.ndarray],
        features: Sequence[np.ndarray] | None = None,
        *,
        names: Sequence[str] | None = None,
        progress: Progress = None,
    ) -> "Segmenter":
        """Featurise each image (or take ``features``), sample scribbled pixels, fit the classifier."""
        images, scribbles = list(images), list(scribbles)
        names = list(names) if names is not None else [f"scribble {i}" for i in range(len(scribbles))]
        if not images or len(images) != len(scribbles):
            raise ShapeError(f"fit needs one scribble per image; got {len(images)} images and {len(scribbles)} scribbles.")
        if features is not None and len(features) != len(images):
            raise ShapeError(f"got {len(features)} feature maps for {len(images)} images.")
        allowed = len(self.class_names) if self.class_names else None
        channels = {n_image_channels(im) for im in images}
        if len(channels) > 1:
            raise ShapeError(f"training images mix grey and colour ({sorted(channels)} channels); convert them to one kind.")
        for i, (im, sc) in enumerate(zip(images, scribbles)):
            self._check_pair(i, names[i], im, np.asarray(sc), allowed)
        classes = np.unique(np.concatenate([np.unique(s) for s in scribbles]))
        classes = classes[classes > 0].astype(np.int64)
        if len(classes) < 2:
            raise HRDv2Error(
                f"{', '.join(names)}: the scribbles label only class {int(classes[0])}; a classifier needs strokes "
                "of at least two classes."
            )
        if classes.max() > 255:
            raise HRDv2Error(f"class ids must be at most 255 (label images are 8-bit), got {int(classes.max())}.")
        self.n_channels_ = channels.pop()
        if self.auto:
            if features is not None:
                raise ConfigError("features='auto' chooses the features itself: call fit(images, scribbles) "
                                  "without precomputed features.")
            features = self._choose_features(images, [np.asarray(s) for s in scribbles])
        picks = balanced_sample([np.asarray(s) for s in scribbles], self.max_samples, self.random_state)
        xs, ys = [], []
        for i, (im, (rows, labels)) in enumerate(zip(images, picks)):
            feats = features[i] if features is not None else self.featurise(im)
            if i == 0:
                self.n_features_in_ = int(feats.shape[-1])
            self._check_features(feats, im)
            xs.append(np.asarray(feats.reshape(-1, feats.shape[-1])[rows], dtype=np.float32))
            ys.append(labels)
            if progress:
                progress(i + 1, len(images))
        x, y = np.concatenate(xs), np.concatenate(ys)
        self.pca_ = None
        self.n_classical_ = n_classical(self.features, self.n_channels_) if self.features.kind == "hybrid" else 0
        k = self.features.pca_components
        if self.features.uses_deep and k and x.shape[1] - self.n_classical_ > k:
            from sklearn.decomposition import PCA

            self.pca_ = PCA(int(k), random_state=self.random_state).fit(x[:, self.n_classical_ :])
            x = self._rows(x)
        choice = getattr(self, "auto_choice_", None) if self.auto else None
        if choice is not None and choice.members:  # auto's ensemble: the members' trees in one forest
            from hrdv2.features.auto import fit_ensemble

            self.model_ = fit_ensemble(choice, x, y, self.n_channels_, self.random_state)
        else:
            self.model_ = make_classifier(self.classifier, self.random_state, len(y), **self.classifier_params)
            with self._threads():
                self.model_.fit(x, y)
        self.classes_ = classes
        if self.class_names is None:
            self.class_names = [f"class {c}" for c in range(1, int(classes.max()) + 1)]
        self.n_train_pixels_ = int(len(y))
        return self

    def _choose_features(self, images: list[np.ndarray], scribbles: list[np.ndarray]) -> list[np.ndarray]:
        """Run the ``auto`` search, adopt its choice, and return the chosen features of ``images``
        (channels of the search's own feature maps: nothing is computed twice)."""
        from hrdv2.engine import FeatureEngine
        from hrdv2.features.auto import DEFAULT_BUDGET_S, choose
        from hrdv2.features.classical import feature_names

        def featurise(image: np.ndarray, filters, sigmas, normalise: str) -> np.ndarray:
            cfg = self.features.replace(kind="classical", filters=filters, sigmas=sigmas, normalise=normalise)
            return FeatureEngine(cfg, cache_dir=self.cache_dir).features(image)

        budget = DEFAULT_BUDGET_S if self.auto_budget_s is None else float(self.auto_budget_s)
        choice, found = choose(images, scribbles, featurise, budget_s=budget, normalisations=(self.features.normalise,),
                               random_state=0 if self.random_state is None else int(self.random_state),
                               max_samples=self.max_samples)
        self.features = self.features.replace(kind="classical", filters=choice.filters, sigmas=choice.sigmas,
                                              normalise=choice.normalise)
        self.classifier = choice.classifier
        self.classifier_params = dict(choice.classifier_params)
        self.auto_choice_ = choice
        cols = [found["index"][n] for n in feature_names(self.n_channels_, choice.sigmas, choice.filters)]
        return [np.ascontiguousarray(m[..., cols]) for m in found["maps"][choice.normalise]]

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HRDv2Error("this Segmenter is not trained yet: call fit(images, scribbles) or Segmenter.load(path).")

    def _check_features(self, feats: np.ndarray, image: np.ndarray) -> None:
        if feats.ndim != 3 or feats.shape[:2] != image.shape[:2]:
            raise ShapeError(f"features of shape {feats.shape} do not fit an image of shape {image.shape}.")
        if feats.shape[-1] != self.n_features_in_:
            raise ShapeError(
                f"features have {feats.shape[-1]} channels but the model was trained on {self.n_features_in_} "
                f"({self.features.kind} features of {self.n_channels_}-channel images). Featurise with "
                "the model's own config (Segmenter.featurise)."
            )

    def predict_proba(self, image: np.ndarray, features: np.ndarray | None = None, progress: Progress = None) -> np.ndarray:
        """(H, W, K) float32 class probabilities, K = len(classes_), CRF-refined if ``crf``."""
        self._check_fitted()
        nc = n_image_channels(image)
        if nc != self.n_channels_:
            kind = {1: "grey", 3: "RGB"}
            raise ShapeError(
                f"this model was trained on {kind.get(self.n_channels_, self.n_channels_)} images "
                f"({self.n_channels_} channel(s), {self.n_features_in_} features) but the image has {nc} channel(s) "
                f"(shape {image.shape}). Convert the image, or train a model on images like it."
            )
        feats = features if features is not None else self.featurise(image, progress=progress)
        self._check_features(feats, image)
        h, w = image.shape[:2]
        if self.features.kind == "deep":  # piecewise-constant map: one prediction per distinct cell
            from hrdv2.segmentation.compressed import predict_compressed

            probs, _ = predict_compressed(feats, self.predict_proba_features)
        else:
            probs = self.predict_proba_features(feats.reshape(-1, feats.shape[-1])).reshape(h, w, -1)
        if self.crf:
            from hrdv2.crf import dense_crf

            probs = dense_crf(image, probs, **self.crf_params)
        return probs

    def predict_proba_features(self, flat: np.ndarray, threads: int | None = None) -> np.ndarray:
        """(N, K) float32 class probabilities of (N, F) feature rows (as ``featurise`` makes them);
        the block-wise apply classifies each block's features with it. ``threads``: of the
        compiled forest (None: the model's ``n_jobs``; block-wise runs pass 1 per parallel block)."""
        self._check_fitted()
        if flat.ndim != 2 or flat.shape[1] != self.n_features_in_:
            raise ShapeError(f"feature rows of shape {flat.shape}; the model needs (N, {self.n_features_in_}).")
        out = np.empty((flat.shape[0], len(self.classes_)), np.float32)
        from hrdv2.segmentation.forest import fast_forest

        fast = fast_forest(self, self.model_, flat.shape[0])  # random forests: exact compiled predictor (2-4x faster)
        with self._threads():
            for s in range(0, flat.shape[0], PREDICT_CHUNK):
                rows = self._rows(flat[s : s + PREDICT_CHUNK])
                if fast is not None:
                    fast(rows, out[s : s + PREDICT_CHUNK], threads)
                else:
                    out[s : s + PREDICT_CHUNK] = self.model_.predict_proba(rows)
        return out

    def predict(self, image: np.ndarray, features: np.ndarray | None = None, progress: Progress = None) -> np.ndarray:
        """(H, W) uint8 label map with the trained class ids."""
        from hrdv2.segmentation.forest import labels_of

        probs = self.predict_proba(image, features, progress=progress)
        return labels_of(probs, self.classes_.astype(np.uint8))

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classical_version": CLASSICAL_VERSION,
            "normalise_version": NORMALISE_VERSION,
            "features": self.features.to_dict(),
            "classifier": self.classifier,
            "crf": self.crf,
            "crf_params": self.crf_params,
            "max_samples": self.max_samples,
            "class_names": list(self.class_names),
            "random_state": self.random_state,
            "classifier_params": self.classifier_params,
            "classes": np.asarray(self.classes_),
            "n_channels": int(self.n_channels_),
            "n_features_in": int(self.n_features_in_),
            "n_classical": int(self.n_classical_),
            "n_train_pixels": int(self.n_train_pixels_),
            "model": self.model_,
            "pca": self.pca_,
        }

    def save(self, path: str | Path) -> Path:
        """Write a skops file atomically (``.skops`` suggested); see :mod:`hrdv2.segmentation.model_file`."""
        from hrdv2.segmentation.lazy_skops import import_skops_io
        from hrdv2.segmentation.model_file import write_model

        self._check_fitted()
        import_skops_io()  # first import of skops without torch (classical models never need it)
        return write_model(path, self._state())

    @classmethod
    def load(cls, path: str | Path) -> "Segmenter":
        """Read a model saved by :meth:`save`. Refuses (ModelFileError) any file holding a type hrdv2
        never writes, before building anything, and any state whose fields do not fit together."""
        from hrdv2.segmentation.lazy_skops import import_skops_io
        from hrdv2.segmentation.model_file import read_model

        import_skops_io()
        path = Path(path)
        state = read_model(path)  # validated: every field present, typed and consistent
        try:
            seg = cls(
                features=FeatureConfig.from_dict(state["features"]),
                classifier=state["classifier"],
                crf=state["crf"],
                max_samples=state["max_samples"],
                class_names=state["class_names"],
                random_state=state["random_state"],
                classifier_params=state["classifier_params"],
                crf_params=state["crf_params"],
            )
        except HRDv2Error as exc:
            raise ModelFileError(f"{path}: model file is inconsistent ({exc}). Re-train it.") from None
        seg.classes_ = np.asarray(state["classes"], dtype=np.int64)
        seg.n_channels_ = int(state["n_channels"])
        seg.n_features_in_ = int(state["n_features_in"])
        seg.n_classical_ = int(state["n_classical"])
        seg.n_train_pixels_ = int(state["n_train_pixels"])
        seg.model_ = state["model"]
        seg.pca_ = state["pca"]
        if int(state.get("normalise_version", 1)) < 2 and seg.features.normalise == "auto" and seg.n_channels_ == 1:
            # trained when 'auto' meant the plain percentile stretch on grey images: featurise as it was trained
            seg.features = seg.features.replace(normalise="percentile")
        trained_with = int(state.get("classical_version", 1))
        if seg.features.uses_classical and trained_with != CLASSICAL_VERSION:
            warnings.warn(
                f"{path}: trained with classical features version {trained_with}; this hrdv2 computes "
                f"version {CLASSICAL_VERSION}, whose values differ slightly. The model still runs, but "
                "re-train it (same scribbles) for the accuracy it was trained to.",
                stacklevel=2,
            )
        return seg

    def __repr__(self) -> str:
        fitted = f", classes={self.classes_.tolist()}" if hasattr(self, "classes_") else ""
        if getattr(self, "auto_choice_", None) is not None:
            c = self.auto_choice_
            fitted += f", auto={c.label!r}, cv_miou={c.cv_miou:.3f}"
        kind = "auto" if self.auto and not hasattr(self, "auto_choice_") else self.features.kind
        return f"Segmenter(features={kind!r}, classifier={self.classifier!r}, crf={self.crf}{fitted})"
