"""The compiled forest predictor (hrdv2.segmentation.forest) equals scikit-learn's predict_proba to
float rounding, with identical labels, on forests of every shape the Segmenter can meet; it is
used by Segmenter for random forests, falls back to sklearn without numba, and stays out of the
train / load path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier

from hrdv2.io import read_image, read_labels
from hrdv2.segmentation import Segmenter, forest
from hrdv2.segmentation.forest import fast_forest, float32_threshold, pack_forest, predict_proba, supports

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "superalloy"


def _data(n: int, f: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose class depends on a few features non-linearly, so trees grow deep and uneven."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    score = x[:, 0] + x[:, 1] * x[:, 2] + 0.5 * rng.normal(size=n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, k + 1)[1:-1]))
    return x, y


def _check_equal(model, x: np.ndarray, threads: int = 1) -> None:
    ref = model.predict_proba(x)
    got = predict_proba(pack_forest(model), x, threads)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("k", [2, 3, 5, 7])
@pytest.mark.parametrize("depth", [3, 10, None])
@pytest.mark.parametrize("kind", [RandomForestClassifier, ExtraTreesClassifier])
def test_equals_sklearn_on_many_forest_shapes(k, depth, kind):
    x, y = _data(3000, 9, k, seed=k)
    model = kind(n_estimators=8, max_depth=depth, random_state=k, n_jobs=1).fit(x, y)
    assert supports(model)
    test, _ = _data(3000, 9, k, seed=100 + k)
    _check_equal(model, test)
    if depth is None:  # unlimited trees are deep: the fixed-step walk must still end at every leaf
        assert max(e.tree_.max_depth for e in model.estimators_) > 12


def test_float64_and_non_contiguous_input_and_threads():
    x, y = _data(4000, 6, 3, seed=1)
    model = RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0, n_jobs=1).fit(x, y)
    test, _ = _data(40_000, 12, 3, seed=2)
    wide64 = test.astype(np.float64) * 1.0000001  # float64 values between float32 neighbours
    _check_equal(model, wide64[:, ::2])  # float64, strided columns
    _check_equal(model, test[::2, 3:9])  # float32, strided rows and an offset
    _check_equal(model, np.asfortranarray(test[:, :6]), threads=2)  # Fortran order, two threads


def test_compiled_labels_follow_numpy_argmax_ties_included():
    forest._kernel_module()  # loaded: labels_of uses the compiled pass
    rng = np.random.default_rng(2)
    probs = rng.integers(0, 4, (5000, 4)).astype(np.float32) / 4  # many exact ties
    classes = np.array([3, 7, 9, 200], np.uint8)
    np.testing.assert_array_equal(forest.labels_of(probs, classes), classes[np.argmax(probs, axis=-1)])
    cube = probs.reshape(50, 100, 4)
    np.testing.assert_array_equal(forest.labels_of(cube, classes), classes[np.argmax(cube, axis=-1)])


def test_single_leaf_trees_and_values_on_thresholds():
    x, y = _data(200, 4, 3, seed=3)
    stumps = RandomForestClassifier(n_estimators=5, min_samples_split=10_000, random_state=0).fit(x, y)
    assert all(e.tree_.node_count == 1 for e in stumps.estimators_)
    _check_equal(stumps, x)
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, y)
    # rows exactly on every threshold (rounded to float32 like sklearn does): x <= thr goes left
    thr = np.concatenate([e.tree_.threshold[e.tree_.feature >= 0] for e in model.estimators_])
    on = np.repeat(thr.astype(np.float32)[:, None], 4, axis=1)
    _check_equal(model, on)
    t64 = np.array([0.1, -1e-30, 3.0000000001, 1e39, -1e39])
    t32 = float32_threshold(t64)
    with np.errstate(over="ignore"):
        assert np.all(t32.astype(np.float64) <= t64) and np.all(np.nextafter(t32, np.float32(np.inf)) > t64)


def test_missing_values_follow_sklearn():
    x, y = _data(3000, 5, 3, seed=4)
    x[np.random.default_rng(0).random(x.shape) < 0.1] = np.nan  # sklearn learns where NaN goes
    model = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0).fit(x, y)
    test, _ = _data(3000, 5, 3, seed=5)
    test[np.random.default_rng(1).random(test.shape) < 0.2] = np.nan
    _check_equal(model, test)


@pytest.fixture(scope="module")
def alloy_model(tmp_path_factory):
    image = read_image(DATA / "isb_0.png")
    seg = Segmenter("classical").fit([image], [read_labels(DATA / "isb_0_scribble.png")])
    path = seg.save(tmp_path_factory.mktemp("alloy") / "model.skops")
    return seg, read_image(DATA / "isb_1.png"), path


def test_segmenter_labels_identical_to_sklearn_on_a_real_image(alloy_model, monkeypatch):
    seg, image, _ = alloy_model
    monkeypatch.setattr(forest, "FAST_MIN_ROWS", 0)  # a 512x512 image: use the kernel anyway
    feats = seg.featurise(image)
    fast = seg.predict_proba(image, feats)
    assert seg._fast_forest[1] is not None and fast_forest(seg, seg.model_) is seg._fast_forest[1]  # packed once
    seg._fast_forest = (seg.model_, None)  # force sklearn's own predict_proba
    ref = seg.predict_proba(image, feats)
    del seg._fast_forest
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6)  # float32 outputs: one rounding apart at most
    labels = seg.predict(image, feats)
    np.testing.assert_array_equal(labels, seg.classes_.astype(np.uint8)[ref.argmax(-1)])
    assert len(np.unique(labels)) >= 2


def test_refit_repacks_and_other_classifiers_keep_sklearn(alloy_model):
    seg, _, _ = alloy_model
    first = fast_forest(seg, seg.model_)
    other = RandomForestClassifier(n_estimators=3, random_state=1).fit(*_data(500, seg.n_features_in_, 2, seed=6))
    assert fast_forest(seg, other) is not first and fast_forest(seg, other).packed.n_trees == 3
    boosted = GradientBoostingClassifier(n_estimators=3).fit(*_data(300, 4, 2, seed=7))
    assert not supports(boosted) and fast_forest(seg, boosted) is None


def test_falls_back_to_sklearn_with_a_warning_without_numba(alloy_model, monkeypatch):
    seg, image, path = alloy_model
    monkeypatch.setattr(forest, "FAST_MIN_ROWS", 0)
    feats = seg.featurise(image)
    expected = seg.predict(image, feats)
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" now raises ImportError
    monkeypatch.delitem(sys.modules, "hrdv2.segmentation._forest_kernel", raising=False)
    fresh = Segmenter.load(path)
    with pytest.warns(UserWarning, match="numba is not importable"):
        labels = fresh.predict(image, feats)
    assert fresh._fast_forest[1] is None
    np.testing.assert_array_equal(labels, expected)


_CHILD = r"""
import json, sys
import numpy as np
from hrdv2.segmentation import Segmenter
d = sys.argv[1]
rng = np.random.default_rng(0)
img = (rng.random((96, 96)) * 80).astype(np.uint8); img[:, 48:] += 120
scr = np.zeros((96, 96), np.uint8); scr[10:14, 5:40], scr[60:64, 60:90] = 1, 2
Segmenter("classical").fit([img], [scr]).save(d + "/m.skops")
seg = Segmenter.load(d + "/m.skops")
before = "numba" in sys.modules
labels = seg.predict(img)  # small: sklearn, no numba start-up cost
small = "numba" in sys.modules
seg.predict_proba_features(np.zeros((1 << 20, seg.n_features_in_), np.float32))  # 1 Mpx: the kernel
print(json.dumps({"before": before, "small": small, "after": "numba" in sys.modules,
                  "classes": np.unique(labels).tolist()}))
"""


def test_train_load_and_small_images_never_import_numba(tmp_path):
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"before": False, "small": False, "after": True, "classes": [1, 2]}
