"""Reading and writing segmenter model files (skops archives), and what they may hold.

A model file is a zip archive: ``schema.json`` describes a tree of nodes, each naming a skops
loader and a ``module.Class``; the loader rebuilds the object from that name. skops trusts many
types by default (every scikit-learn estimator, numpy ufuncs...) and a name from
``numpy.*`` or ``scipy.*`` can be a class whose finaliser deletes folders or a function that
evaluates strings, so prefix rules are not enough. Here every node of the archive is checked
*before anything is built* against the exact (loader, type) pairs that hrdv2 itself writes,
found by saving the estimators :func:`~hrdv2.segmentation.segmenter.make_classifier` builds
(and the PCA a model can hold, and ``auto``'s blend of a forest with a logistic regression).
Anything else is refused with one line naming the file and the first refused type. After
loading, the state is checked field by field (types, class list, feature counts, tree structure)
so a well-formed archive with the wrong content is refused too.

This module is the only place that knows the allow-list; ``Segmenter.save`` / ``Segmenter.load``
delegate here.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hrdv2.errors import ModelFileError
from hrdv2.io import atomic_path

MAX_FILE_BYTES = 1 << 30  # a default model is well under 50 MB; 1 GiB leaves room for 255 classes
MAX_UNPACKED_BYTES = 4 << 30  # declared size of all members together (zip bombs)
MAX_NODES = 2_000_000
MAX_DEPTH = 64  # real models nest about 15 deep
# loaders whose nodes import and call a name or rebuild arbitrary state: never in hrdv2's files
REFUSED_LOADERS = {
    "FunctionNode": "a function reference",
    "PartialNode": "a functools.partial",
    "MethodNode": "a bound method",
    "OperatorFuncNode": "an operator function",
    "TypeNode": "a type reference",
}
# numbers and dict-key types a state may hold whatever the estimator: numpy scalars of plain
# numeric dtypes (rebuilt as ``numpy.float64(array)``), JSON primitives, builtin key types
_NUMERIC_KINDS = "biuf"
_KEY_TYPES = ("builtins.str", "builtins.int", "builtins.float", "builtins.bool")
_FIX = "only files made by `hrdv2 train`, Segmenter.save or the web app load; re-train from your scribbles"
_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "classical_version": (int,), "normalise_version": (int,),
    "features": (dict,),
    "classifier": (str,), "crf": (bool,), "crf_params": (dict,), "max_samples": (int,),
    "class_names": (list,), "random_state": (int, type(None)), "classifier_params": (dict,),
    "classes": (np.ndarray,), "n_channels": (int,), "n_features_in": (int,), "n_classical": (int,),
    "n_train_pixels": (int,), "model": (object,), "pca": (object,),
}
# absent in older files of format 1: classical_version in the first ones, normalise_version before 2026-12-03
_OPTIONAL_FIELDS = ("classical_version", "normalise_version")


# --------------------------------------------------------------------------- the allow-list

def _node_types(schema: Any) -> Iterator[tuple[str, str]]:
    """(loader, ``module.Class``) of every node of a skops schema, depth-first in file order.

    RandomGeneratorNode also yields its bit generator, which skops resolves from a plain string.
    Raises ValueError on a malformed tree (a node without names, too deep, too many nodes).
    """
    stack: list[tuple[Any, int]] = [(schema, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            if "__loader__" in node:
                seen += 1
                if seen > MAX_NODES:
                    raise ValueError(f"more than {MAX_NODES:,} objects")
                loader, module, cls = node.get("__loader__"), node.get("__module__"), node.get("__class__")
                if not all(isinstance(v, str) and v for v in (loader, module, cls)):
                    raise ValueError("an object without loader, module or class name")
                yield loader, f"{module}.{cls}"
                if loader == "RandomGeneratorNode":
                    yield "RandomGeneratorNode.bit_generator", f"numpy.random.{_bit_generator_name(node)}"
            stack.extend((v, depth + 1) for v in reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in reversed(node))


def _bit_generator_name(node: dict) -> str:
    try:
        name = json.loads(node["content"]["bit_generator"]["content"]["bit_generator"]["content"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError("a random generator without a bit generator name") from exc
    if not isinstance(name, str):
        raise ValueError("a random generator whose bit generator name is not a string")
    return name


def _sample_states() -> Iterator[dict]:
    """The state of every kind of model hrdv2 builds, on tiny data (fast estimator settings do
    not change which types an estimator holds: tree count, iterations and threads only)."""
    from hrdv2.features.auto import blend
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.segmentation.segmenter import CLASSIFIERS, Segmenter

    fast = {"random_forest": {"n_estimators": 2, "n_jobs": 1}, "gradient_boosting": {"max_iter": 2},
            "logistic": {}}
    rng = np.random.default_rng(0)
    image = np.zeros((12, 12), np.uint8)
    # 2 classes (binary losses) with a PCA, 3 classes (multinomial) with random_state None
    for n_classes, config, random_state in ((2, FeatureConfig("deep", pca_components=2), 0),
                                            (3, FeatureConfig("classical"), None)):
        scribble = (np.arange(144).reshape(12, 12) % n_classes + 1).astype(np.uint8)
        fitted = {}
        for name in CLASSIFIERS:
            feats = rng.random((12, 12, 8), dtype=np.float32)
            seg = Segmenter(config, name, max_samples=144, random_state=random_state, classifier_params=fast[name])
            fitted[name] = seg.fit([image], [scribble], [feats])
            yield seg._state()
        # auto's blend of a forest with a logistic regression (hrdv2.features.auto.blend): the two
        # just fitted, on the same classes and feature width
        yield {**fitted["random_forest"]._state(),
               "model": blend(fitted["random_forest"].model_, fitted["logistic"].model_, 0.25)}


@functools.lru_cache(maxsize=1)
def allowed_types() -> frozenset[tuple[str, str]]:
    """The (loader, ``module.Class``) pairs hrdv2's own model files contain, and nothing more.

    Found by saving each classifier :func:`make_classifier` builds (2 and 3 classes, with the
    PCA of deep features) and ``auto``'s blend, and reading back the archive's node types; plus
    numpy scalars of numeric dtypes and builtin dict-key types, which depend on the data, not on
    the estimator. Cached: computing it fits six tiny estimators and blends two pairs (~0.5 s).
    """
    import skops.io as sio
    from threadpoolctl import threadpool_limits

    found: set[tuple[str, str]] = set()
    with threadpool_limits(1):  # tiny fits: OpenMP threads only spin on a busy machine
        states = list(_sample_states())
    for state in states:
        with zipfile.ZipFile(io.BytesIO(sio.dumps(state))) as zf:
            found.update(_node_types(json.loads(zf.read("schema.json"))))
    scalars = {f"numpy.{np.dtype(c).type.__name__}" for c in np.typecodes["AllInteger"] + np.typecodes["Float"] + "?"
               if np.dtype(c).kind in _NUMERIC_KINDS}
    found.update(("NdArrayNode", s) for s in scalars | {"numpy.ndarray"})
    found.update(("TypeNode", t) for t in _KEY_TYPES)
    return frozenset(found)


def _describe(loader: str, name: str) -> str:
    if loader in REFUSED_LOADERS and not (loader == "TypeNode" and name in _KEY_TYPES):
        return f"{name} ({REFUSED_LOADERS[loader]})"
    if loader == "RandomGeneratorNode.bit_generator":
        return f"{name} (as a random generator's bit generator)"
    return name


def first_refused(schema: Any) -> str | None:
    """The first type in ``schema`` (a parsed schema.json) that hrdv2 never writes, described."""
    allowed = allowed_types()
    for loader, name in _node_types(schema):
        if (loader, name) not in allowed:
            return _describe(loader, name)
    return None


# --------------------------------------------------------------------------- reading

def _read_schema(path: Path, data: bytes) -> Any:
    """schema.json of the archive ``data``; ModelFileError if it is not a sound skops archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
            if unpacked > MAX_UNPACKED_BYTES:
                raise ModelFileError(f"{path}: refusing to load: it unpacks to {unpacked:,} bytes, more than any "
                                     f"hrdv2 model ({MAX_UNPACKED_BYTES:,}). Re-train or re-copy it.")
            return json.loads(zf.read("schema.json"))
    except ModelFileError:
        raise
    except Exception as exc:  # bad zip, missing member, bad JSON, encrypted, corrupt deflate...
        raise ModelFileError(f"{path}: not a readable hrdv2 model file (skops archive: {type(exc).__name__}: "
                             f"{str(exc)[:200]}). Re-train or re-copy it.") from None


def read_model(path: str | Path) -> dict:
    """The validated state dict of the model file ``path`` (see ``Segmenter._state``).

    Raises ModelFileError (one line: the file, what is wrong, the fix) for a missing or damaged
    file, any type hrdv2 never writes (checked before anything is built), or a wrong schema.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        kind = "is a folder" if path.is_dir() else "no such file"
        raise ModelFileError(f"{path}: {kind}; give a model file made by `hrdv2 train` (.skops).")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"{path}: refusing to load a {size:,}-byte file; hrdv2 models stay under "
                             f"{MAX_FILE_BYTES:,} bytes. Check the path.")
    try:
        data = path.read_bytes()  # read once: what is checked is what is loaded
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions.") from None
    schema = _read_schema(path, data)
    try:
        refused = first_refused(schema)
    except ValueError as exc:
        raise ModelFileError(f"{path}: not a readable hrdv2 model file ({exc}). Re-train or re-copy it.") from None
    if refused:
        raise ModelFileError(f"{path}: refusing to load: it holds type {refused}, which hrdv2 never writes ({_FIX}).")
    try:
        state = sio.loads(data, trusted=sorted({name for _, name in allowed_types()}))
    except Exception as exc:  # every node is of an allowed type: what fails here is damaged content
        raise ModelFileError(f"{path}: model file is damaged ({type(exc).__name__}: {str(exc)[:200]}). "
                             "Re-train or re-copy it.") from None
    check_state(state, path)
    return state


# --------------------------------------------------------------------------- the state schema

def _bad(path: Path | str, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: not a valid hrdv2 model: {what}. Re-train it from your scribbles (`hrdv2 train`).")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_fields(state: Any, path: Path | str) -> None:
    from hrdv2.segmentation.segmenter import FORMAT, FORMAT_VERSION

    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an hrdv2 segmenter model (made by `hrdv2 train` / Segmenter.save).")
    missing = [k for k in _STATE_FIELDS if k not in state and k not in _OPTIONAL_FIELDS]
    extra = sorted(set(state) - set(_STATE_FIELDS))
    if missing or extra:
        parts = ([f"fields missing {missing}"] if missing else []) + ([f"unknown fields {extra}"] if extra else [])
        raise _bad(path, ", ".join(parts))
    for key, types in _STATE_FIELDS.items():
        if key not in state:
            continue
        v = state[key]
        ok = (_is_int(v) or (v is None and type(None) in types)) if int in types else isinstance(v, types)
        if not ok:
            want = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise _bad(path, f"field {key!r} is {type(v).__name__}, expected {want}")
    if state["format_version"] > FORMAT_VERSION:
        raise ModelFileError(f"{path}: made by a newer hrdv2 (format {state['format_version']}); upgrade hrdv2.")
    for key in ("crf_params", "classifier_params"):
        for k, v in state[key].items():
            if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str))):
                raise _bad(path, f"{key} must map names to numbers or strings, got {k!r}: {type(v).__name__}")
    if not all(isinstance(n, str) for n in state["class_names"]):
        raise _bad(path, "class_names must be a list of strings")


def _check_counts(state: dict, path: Path | str) -> tuple[np.ndarray, int]:
    """Classes and the classifier's input width implied by the state's own counts."""
    from hrdv2.features.sets import FeatureConfig, n_classical
    from hrdv2.segmentation.segmenter import CLASSIFIERS

    try:
        config = FeatureConfig.from_dict(state["features"])
    except Exception as exc:  # ConfigError, or TypeError / ValueError from fields of the wrong type
        raise _bad(path, f"its feature config is invalid ({exc})") from None
    if state["classifier"] not in CLASSIFIERS:
        raise _bad(path, f"unknown classifier {state['classifier']!r} (hrdv2 builds {list(CLASSIFIERS)})")
    classes = state["classes"]
    if classes.ndim != 1 or classes.dtype.kind not in "iu" or len(classes) < 2 \
            or classes.min() < 1 or classes.max() > 255 or np.any(np.diff(classes.astype(np.int64)) <= 0):
        raise _bad(path, f"classes must be 2+ increasing ids in 1..255, got {classes.tolist()[:10]}")
    if len(state["class_names"]) < int(classes.max()):
        raise _bad(path, f"{len(state['class_names'])} class names for class ids up to {int(classes.max())}")
    nch, nin, ncl = state["n_channels"], state["n_features_in"], state["n_classical"]
    if not 1 <= nch <= 4 or nin < 1 or state["n_train_pixels"] < 0 or state["max_samples"] < 10:
        raise _bad(path, f"impossible counts (n_channels {nch}, n_features_in {nin}, n_train_pixels "
                         f"{state['n_train_pixels']}, max_samples {state['max_samples']})")
    want_classical = n_classical(config, nch) if config.uses_classical else 0
    if config.kind == "classical" and nin != want_classical:
        raise _bad(path, f"{nin} features, but {config.kind} features of {nch}-channel images have {want_classical}")
    if ncl != (want_classical if config.kind == "hybrid" else 0) or (config.uses_deep and nin <= ncl):
        raise _bad(path, f"n_classical {ncl} does not fit {config.kind} features of {nch}-channel images "
                         f"with {nin} features")
    width = nin
    pca = state["pca"]
    if pca is not None:
        from sklearn.decomposition import PCA

        if type(pca) is not PCA or not config.uses_deep:
            raise _bad(path, f"field 'pca' holds {type(pca).__name__}; only deep features carry a PCA")
        n_comp, n_in = np.shape(getattr(pca, "components_", np.empty((0, 0))))
        if n_in != nin - ncl or getattr(pca, "n_features_in_", None) != n_in or n_comp < 1:
            raise _bad(path, f"its PCA takes {n_in} features, but the deep block has {nin - ncl}")
        width = ncl + n_comp
    return classes, width


def _model_kind(model: Any) -> str | None:
    """The classifier name a model is, or None. ``auto``'s blend (a soft-voting classifier of one
    random forest and one logistic-regression pipeline, :func:`hrdv2.features.auto.blend`) counts
    as ``random_forest``, the family its ensembles are saved as and that the app retrains with."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    from hrdv2.segmentation.forest import blend_parts, is_linear_pipeline

    if type(model) is RandomForestClassifier:
        return "random_forest"
    if type(model) is HistGradientBoostingClassifier:
        return "gradient_boosting"
    if is_linear_pipeline(model):
        return "logistic"
    if blend_parts(model) is not None:
        return "random_forest"
    return None


def _links_ok(left: np.ndarray, right: np.ndarray, feature: np.ndarray, inner: np.ndarray, width: int) -> bool:
    """Inner nodes point to later nodes of the same tree (no loops, no reads past the end) and
    split on a feature inside the input."""
    n, ids = len(inner), np.arange(len(inner))
    l, r, f = (np.asarray(a)[inner].astype(np.int64) for a in (left, right, feature))
    return n >= 1 and bool(np.all(l > ids[inner]) and np.all(r > ids[inner]) and np.all(l < n) and np.all(r < n)
                           and np.all(f >= 0) and np.all(f < width))


def _check_trees(model: Any, width: int, path: Path | str) -> None:
    """scikit-learn indexes tree node arrays without bounds checks, so a crafted tree could read
    out of memory or loop forever: check every link. hrdv2 never trains categorical splits."""
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    from hrdv2.segmentation.forest import blend_parts

    parts = blend_parts(model)
    if parts is not None:  # auto's blend: its forest's trees (the linear part has no links)
        _check_trees(parts[0], width, path)
        return
    for est in getattr(model, "estimators_", []):
        tree = getattr(est, "tree_", None)
        if type(est) is not DecisionTreeClassifier or type(tree) is not Tree:
            raise _bad(path, f"its forest holds {type(est).__name__}, not decision trees")
        left, right = tree.children_left, tree.children_right
        inner = left != -1
        if tree.n_features != width or len(left) != tree.node_count or np.any(inner != (right != -1)) \
                or not _links_ok(left, right, tree.feature, inner, width):
            raise _bad(path, "a decision tree's node array is inconsistent")
    if hasattr(model, "_predictors"):
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        fields = {"left", "right", "feature_idx", "is_leaf", "is_categorical"}
        for pred in (p for per_iteration in model._predictors for p in per_iteration):
            nodes = getattr(pred, "nodes", None)
            if type(pred) is not TreePredictor or not isinstance(nodes, np.ndarray) or nodes.ndim != 1 \
                    or not fields <= set(nodes.dtype.names or ()):
                raise _bad(path, "its boosted trees are not scikit-learn tree predictors")
            inner = nodes["is_leaf"] == 0
            if np.any(nodes["is_categorical"] != 0) \
                    or not _links_ok(nodes["left"], nodes["right"], nodes["feature_idx"], inner, width):
                raise _bad(path, "a boosted tree's node array is inconsistent")


def check_state(state: Any, path: Path | str = "model") -> None:
    """Refuse a loaded state whose fields, classes or feature counts do not fit together."""
    _check_fields(state, path)
    classes, width = _check_counts(state, path)
    model = state["model"]
    kind = _model_kind(model)
    if kind != state["classifier"]:
        raise _bad(path, f"classifier {state['classifier']!r} but the file holds {type(model).__name__}"
                         f"{' (' + kind + ')' if kind else ''}")
    model_classes = np.asarray(getattr(model, "classes_", []))
    if model_classes.shape != classes.shape or not np.array_equal(model_classes, classes):
        raise _bad(path, f"class list {classes.tolist()[:10]} but the classifier predicts "
                         f"{model_classes.tolist()[:10]}")
    if getattr(model, "n_features_in_", None) != width:
        raise _bad(path, f"the classifier takes {getattr(model, 'n_features_in_', None)} features, "
                         f"the state says {width}")
    _check_trees(model, width, path)
    from threadpoolctl import threadpool_limits

    try:  # the fields fit together; one prediction proves the estimator's own arrays do too
        with np.errstate(all="ignore"), threadpool_limits(1):
            probe = model.predict_proba(np.zeros((1, width), np.float32))
            if state["pca"] is not None:
                state["pca"].transform(np.zeros((1, state["n_features_in"] - state["n_classical"]), np.float32))
    except Exception as exc:
        raise _bad(path, f"its classifier cannot predict ({type(exc).__name__}: {str(exc)[:160]})") from None
    if np.shape(probe) != (1, len(classes)):
        raise _bad(path, f"its classifier gives {np.shape(probe)[-1]} probabilities for {len(classes)} classes")


# --------------------------------------------------------------------------- writing

def write_model(path: str | Path, state: dict) -> Path:
    """Write ``state`` as a skops archive at ``path`` atomically, refusing anything the reader
    would refuse (so hrdv2 never writes a model it cannot load again)."""
    import skops.io as sio

    path = Path(path)
    data = sio.dumps(state)
    refused = first_refused(json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json")))
    if refused:
        raise ModelFileError(f"{path}: refusing to write a model holding type {refused}, which hrdv2 model files "
                             "do not allow; train with the default classifier parameters.")
    check_state(state, path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
