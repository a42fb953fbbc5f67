"""Segmenter: learns two textures from strokes, saves / loads exactly, refuses bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.ndimage as ndi

from hrdv2.errors import HRDv2Error, ModelFileError, ShapeError
from hrdv2.features.sets import FeatureConfig
from hrdv2.metrics.segmentation import iou_per_class
from hrdv2.segmentation import Segmenter, simulate_scribbles
from hrdv2.segmentation.sampling import balanced_sample, class_quotas

CFG = FeatureConfig(sigmas=(1, 2, 4))
# texture-heavy images: the structure tensor on top of the default set (see docs/segmentation.md)
CFG_TEXTURE = FeatureConfig(sigmas=(1, 2, 4), filters="default,structure")


def two_textures(seed: int = 0, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Same mean grey on both sides: left fine-grained noise, right smooth blobs; GT 1 / 2."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    gt = np.where(np.hypot(yy - size / 2, xx - size / 3) < size / 3.2, 1, 2).astype(np.uint8)
    fine = rng.normal(0, 1, (size, size))
    smooth = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 4)
    smooth *= fine.std() / smooth.std()
    img = np.where(gt == 1, fine, smooth)
    return np.clip(128 + 35 * img, 0, 255).astype(np.uint8), gt


def strokes(gt: np.ndarray) -> np.ndarray:
    return simulate_scribbles(gt, strokes_per_class=2, radius=1, max_fraction=0.02, seed=3)


@pytest.fixture(scope="module")
def trained():
    img, gt = two_textures()
    return Segmenter(CFG, classifier="random_forest").fit([img], [strokes(gt)]), img, gt


def test_two_textures_iou_above_0_9(trained):
    seg, _, _ = trained
    img, gt = two_textures(seed=1)  # a new image of the same two textures
    pred = seg.predict(img)
    assert pred.dtype == np.uint8 and pred.shape == gt.shape and set(np.unique(pred)) <= {1, 2}
    assert np.all(iou_per_class(pred, gt) > 0.9)
    proba = seg.predict_proba(img)
    assert proba.shape == (*gt.shape, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize("clf", ["logistic", "gradient_boosting"])
def test_other_classifiers_learn_too(clf, tmp_path):
    img, gt = two_textures()
    seg = Segmenter(CFG_TEXTURE, classifier=clf).fit([img], [strokes(gt)])
    assert np.all(iou_per_class(seg.predict(img), gt) > 0.8)
    back = Segmenter.load(seg.save(tmp_path / f"{clf}.skops"))
    np.testing.assert_array_equal(back.predict_proba(img), seg.predict_proba(img))


def test_save_load_round_trip_identical(trained, tmp_path):
    seg, img, _ = trained
    seg.class_names = ["grainy", "smooth"]
    path = seg.save(tmp_path / "m.skops")
    back = Segmenter.load(path)
    np.testing.assert_array_equal(back.predict_proba(img), seg.predict_proba(img))
    assert back.class_names == ["grainy", "smooth"] and back.features == seg.features
    assert list(back.classes_) == [1, 2]


def test_model_from_older_classical_features_warns(trained, tmp_path, monkeypatch):
    """A model trained when the classical filters computed other values still loads and runs, but
    says so and asks for re-training; a current model loads silently."""
    import warnings

    import hrdv2.segmentation.segmenter as segmenter

    seg, img, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Segmenter.load(seg.save(tmp_path / "current.skops"))
    monkeypatch.setattr(segmenter, "CLASSICAL_VERSION", segmenter.CLASSICAL_VERSION - 1)
    old = seg.save(tmp_path / "old.skops")
    monkeypatch.undo()
    with pytest.warns(UserWarning, match=r"old\.skops.*classical features version .*re-train"):
        back = Segmenter.load(old)
    assert back.predict(img).shape == img.shape


def test_model_from_before_the_robust_stretch_featurises_as_trained(tmp_path):
    """A grey model saved when normalise 'auto' meant the plain percentile stretch (no
    normalise_version in its file) loads as 'percentile' and predicts exactly as trained; a model
    saved now keeps 'auto' (the robust stretch), and a colour model's 'auto' is left alone."""
    from hrdv2.segmentation.model_file import write_model

    img, gt = two_textures()
    img[:14, :14] = 0  # a dark defect beyond the lower fence: the two stretches differ on this image
    plain = Segmenter(CFG.replace(normalise="percentile")).fit([img], [strokes(gt)])
    state = plain._state()
    del state["normalise_version"]
    state["features"]["normalise"] = "auto"
    old = Segmenter.load(write_model(tmp_path / "old.skops", state))
    assert old.features.normalise == "percentile"
    np.testing.assert_array_equal(old.predict_proba(img), plain.predict_proba(img))
    with_auto = copy.copy(plain)  # the same trees, featurising with 'auto' now
    with_auto.features = plain.features.replace(normalise="auto")
    assert np.abs(with_auto.predict_proba(img) - plain.predict_proba(img)).max() > 0.05
    new = Segmenter.load(with_auto.save(tmp_path / "new.skops"))
    assert new.features.normalise == "auto"
    np.testing.assert_array_equal(new.predict_proba(img), with_auto.predict_proba(img))
    rgb = np.stack([img, img[::-1], img[:, ::-1]], -1)
    colour = Segmenter(CFG).fit([rgb], [strokes(gt)])
    state = colour._state()
    del state["normalise_version"]
    assert Segmenter.load(write_model(tmp_path / "colour.skops", state)).features.normalise == "auto"


def test_precomputed_features_match(trained):
    seg, img, _ = trained
    f = seg.featurise(img)
    np.testing.assert_array_equal(seg.predict(img, features=f), seg.predict(img))


def test_channel_mismatch_refused(trained):
    seg, img, _ = trained
    rgb = np.stack([img] * 2 + [img[::-1]], -1)
    with pytest.raises(ShapeError, match=r"trained on grey images .*3 channel"):
        seg.predict(rgb)
    with pytest.raises(ShapeError, match="channels but the model was trained on"):
        seg.predict(img, features=np.zeros((*img.shape, 5), np.float32))


def test_bad_scribbles_are_clear_errors():
    img, gt = two_textures()
    scr = strokes(gt)
    seg = Segmenter(CFG)
    with pytest.raises(ShapeError, match=r"a\.png: scribble is 95x96"):
        seg.fit([img], [scr[:, :-1]], names=["a.png"])
    with pytest.raises(HRDv2Error, match=r"b\.png: the scribble is empty"):
        seg.fit([img], [np.zeros_like(scr)], names=["b.png"])
    with pytest.raises(HRDv2Error, match="only class 2"):
        seg.fit([img], [np.where(scr == 2, 2, 0).astype(np.uint8)])
    with pytest.raises(HRDv2Error, match=r"class id\(s\) \[3\]"):
        Segmenter(CFG, class_names=["a", "b"]).fit([img], [np.where(scr == 2, 3, scr).astype(np.uint8)], names=["c.png"])
    with pytest.raises(HRDv2Error, match="not trained"):
        Segmenter(CFG).predict(img)


def test_corrupt_and_foreign_model_files(tmp_path, trained):
    bad = tmp_path / "bad.skops"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelFileError, match=r"bad\.skops"):
        Segmenter.load(bad)
    seg = trained[0]
    good = seg.save(tmp_path / "good.skops")
    cut = tmp_path / "cut.skops"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match=r"cut\.skops"):
        Segmenter.load(cut)
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    other = tmp_path / "other.skops"
    sio.dump(LogisticRegression(), other)
    with pytest.raises(ModelFileError, match="not an hrdv2 segmenter"):
        Segmenter.load(other)
    with pytest.raises(ModelFileError, match="no such"):
        Segmenter.load(tmp_path / "missing.skops")


def test_class_balanced_cap():
    assert class_quotas({1: 100, 2: 50}, 1000) == {1: 100, 2: 50}
    assert class_quotas({1: 10_000, 2: 30, 3: 5_000}, 1000) == {1: 485, 2: 30, 3: 485}
    scr = np.zeros((96, 96), np.uint8)
    scr[:60] = 1
    scr[95, :20] = 2
    (rows, labels), = balanced_sample([scr], 200, random_state=0)
    assert len(rows) == 200 and np.sum(labels == 2) == 20 and np.sum(labels == 1) == 180
    assert np.all(scr.ravel()[rows] == labels)
    seg = Segmenter(CFG, max_samples=200).fit([two_textures()[0]], [scr])
    assert seg.n_train_pixels_ == 200


def test_default_forest_caps_each_trees_sample_only_for_large_scribbles():
    """Each default tree fits at most FOREST_TREE_SAMPLES pixels: a 9216-pixel scribble gives
    every tree 5000 (bootstrap indices drawn from all of them); a small one keeps full-size
    samples; an explicit max_samples wins."""
    from hrdv2.segmentation.segmenter import FOREST_TREE_SAMPLES

    img, gt = two_textures()
    big = gt.copy()  # every pixel labelled: 9216 > FOREST_TREE_SAMPLES
    seg = Segmenter(CFG).fit([img], [big])
    assert seg.n_train_pixels_ == big.size > FOREST_TREE_SAMPLES
    assert seg.model_.max_samples == FOREST_TREE_SAMPLES and len(seg.model_.estimators_) == 40
    assert all(t.tree_.n_node_samples[0] <= FOREST_TREE_SAMPLES for t in seg.model_.estimators_)
    assert np.all(iou_per_class(seg.predict(img), gt) > 0.9)
    small = Segmenter(CFG).fit([img], [strokes(gt)])
    assert small.n_train_pixels_ < FOREST_TREE_SAMPLES and small.model_.max_samples is None
    own = Segmenter(CFG, classifier_params={"max_samples": 0.5}).fit([img], [big])
    assert own.model_.max_samples == 0.5


def test_simulated_scribbles_procedure():
    _, gt = two_textures()
    a = simulate_scribbles(gt, seed=5)
    b = simulate_scribbles(gt, seed=5)
    np.testing.assert_array_equal(a, b)  # seeded
    assert set(np.unique(a)) == {0, 1, 2}
    assert np.all(a[a > 0] == gt[a > 0])  # never mislabels
    assert (a > 0).mean() <= 0.01
    assert not np.array_equal(a, simulate_scribbles(gt, seed=6))


def test_deep_features_with_learnt_pca(tmp_path):
    img, gt = two_textures(size=56)
    cfg = FeatureConfig(kind="hybrid", sigmas=(1, 2), weights="random", shifts=(), pca_components=4)
    seg = Segmenter(cfg, classifier="logistic").fit([img], [strokes(gt)])
    assert seg.pca_ is not None and seg.pca_.n_components_ == 4
    back = Segmenter.load(seg.save(tmp_path / "h.skops"))
    np.testing.assert_array_equal(back.predict(img), seg.predict(img))
