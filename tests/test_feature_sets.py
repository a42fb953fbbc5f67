"""FeatureConfig round trips and keys, compute_features for each kind, the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.cache import FeatureCache, image_hash
from hrdv2.features.classical import DEFAULT_FILTERS, feature_names
from hrdv2.engine import FeatureEngine, compute_features
from hrdv2.features.sets import FeatureConfig, normalise_image, standardise

SMALL_DEEP = dict(weights="random", shifts=())  # identity transform only: keeps the ViT cheap on CPU


def test_config_round_trip_and_key():
    c = FeatureConfig(kind="hybrid", sigmas=(1, 3), weights="random", pca_components=8)
    d = json.loads(json.dumps(c.to_dict()))
    c2 = FeatureConfig.from_dict(d)
    assert c2 == c and c2.key() == c.key()
    assert c.key().startswith("hybrid-")
    assert c.replace(device="cuda").key() == c.key()  # where it runs does not change the features
    assert c.replace(sigmas=(1, 2)).key() != c.key()
    # classical keys ignore deep-only fields, deep keys ignore classical-only ones
    assert FeatureConfig(backbone="x").key() == FeatureConfig().key()
    assert FeatureConfig(kind="deep", sigmas=(2,)).key() == FeatureConfig(kind="deep").key()
    # presets resolve before keying; filters and normalisation are part of the key
    assert FeatureConfig(filters="default").key() == FeatureConfig(filters=list(reversed(DEFAULT_FILTERS))).key()
    assert FeatureConfig(filters="all").key() != FeatureConfig().key()
    assert FeatureConfig(normalise="none").key() != FeatureConfig().key()
    # a change in what the classical filters compute invalidates cached classical features only
    import hrdv2.features.sets as sets_mod

    before = (FeatureConfig().key(), FeatureConfig(kind="deep").key())
    sets_mod.CLASSICAL_VERSION += 1
    try:
        assert FeatureConfig().key() != before[0] and FeatureConfig(kind="deep").key() == before[1]
    finally:
        sets_mod.CLASSICAL_VERSION -= 1
    with pytest.raises(ConfigError, match="unknown feature set"):
        FeatureConfig(kind="fancy")
    with pytest.raises(ConfigError, match="unknown field"):
        FeatureConfig.from_dict({"kind": "classical", "colour": 1})
    with pytest.raises(ConfigError):
        FeatureConfig(pca_components=0)


def test_classical_features_shape_and_names(rng):
    img = (rng.random((40, 50)) * 255).astype(np.uint8)
    cfg = FeatureConfig(sigmas=(1, 2))
    f = compute_features(img, cfg)
    assert f.shape == (40, 50, len(feature_names(1, (1, 2)))) and f.dtype == np.float32
    rgb = np.stack([img, img[::-1], img[:, ::-1]], -1)
    assert compute_features(rgb, cfg).shape[-1] == 3 * f.shape[-1]
    with pytest.raises(ShapeError):
        compute_features(np.zeros((40, 50, 5), np.uint8), cfg)


def test_percentile_normalisation_makes_features_contrast_invariant(rng):
    base = rng.random((48, 48)).astype(np.float32)
    low = (100 + 40 * base).astype(np.uint8)  # a dim, low-contrast copy
    high = (10 + 240 * base).astype(np.uint8)
    a = compute_features(low, FeatureConfig(sigmas=(1, 2)))
    b = compute_features(high, FeatureConfig(sigmas=(1, 2)))
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()
    raw = FeatureConfig(sigmas=(1, 2), normalise="none")
    assert np.abs(compute_features(low, raw) - compute_features(high, raw)).mean() > 0.2 * np.abs(b).mean()
    n = normalise_image(high)
    assert n.min() == 0 and n.max() == 1


def test_auto_normalisation_stretches_grey_but_keeps_colour(rng):
    """``auto``: grey micrographs are percentile-stretched; colour keeps its hue (uint8 / 255)."""
    grey = (100 + 40 * rng.random((32, 32))).astype(np.uint8)
    assert normalise_image(grey).max() == 1 and normalise_image(grey, "auto").min() == 0
    rgb = np.stack([grey, grey // 2, grey // 4], -1)
    np.testing.assert_allclose(normalise_image(rgb), rgb / 255, atol=1e-6)
    stretched = normalise_image(rgb, "percentile")
    assert stretched[..., 2].max() == 1  # per channel: the dim blue is stretched to full scale
    assert FeatureConfig().normalise == "auto"
    with pytest.raises(ConfigError, match="normalise"):
        FeatureConfig(normalise="zscore")


def test_robust_stretch_moves_only_an_outlier_tail_to_the_fence(rng):
    """'robust' (what 'auto' does to grey images): a 2 % dark defect no longer sets the low end of
    the stretch (the plain 0.5th percentile lies in it); without a tail it equals the plain
    stretch; a dark phase of 10 % is never treated as an outlier past the 5th percentile."""
    import hrdv2.features.sets as sets_mod

    bulk = np.clip(rng.normal(180, 8, (200, 200)), 0, 255).astype(np.uint8)
    defect = bulk.copy()
    defect[:28, :28] = 40  # 1.96 % of the pixels

    def explicit(img, robust):
        q1, q3 = np.percentile(img, (25, 75))
        p = np.percentile(img, (0.5, 5, 95, 99.5))
        if not robust:
            return p[0], p[3]
        return np.clip(q1 - 1.5 * (q3 - q1), p[0], p[1]), np.clip(q3 + 1.5 * (q3 - q1), p[2], p[3])

    for img in (bulk, defect):
        for mode, robust in (("robust", True), ("percentile", False)):
            lo, hi = explicit(img, robust)
            want = np.clip((img.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
            np.testing.assert_allclose(normalise_image(img, mode), want, atol=1e-6)
    np.testing.assert_array_equal(normalise_image(defect), normalise_image(defect, "robust"))  # auto on grey
    np.testing.assert_array_equal(normalise_image(bulk, "robust"), normalise_image(bulk, "percentile"))
    lo_plain, lo_robust = explicit(defect, False)[0], explicit(defect, True)[0]
    assert lo_plain == 40 and lo_robust > 150  # the fence, inside the bulk's tail
    # the bulk's contrast: squeezed by the defect in the plain stretch, not in the robust one
    core = (slice(100, 200), slice(100, 200))
    assert normalise_image(defect, "percentile")[core].std() < 0.6 * normalise_image(defect)[core].std()
    np.testing.assert_allclose(normalise_image(defect)[core], normalise_image(bulk)[core], atol=0.05)

    phase = bulk.copy()
    phase[:, :20] = np.clip(rng.normal(40, 8, (200, 20)), 0, 255).astype(np.uint8)  # 10 %: a phase, not a defect
    lo, hi = sets_mod.stretch_limits(np.percentile(phase.reshape(-1, 1).astype(np.float32), sets_mod.PERCENTILES,
                                                   axis=0), robust=True)
    assert lo[0] == np.percentile(phase, 5) < 60  # stopped at the 5th percentile, inside the dark phase
    assert (normalise_image(phase)[:, :20] > 0).mean() > 0.4  # half the phase keeps its grey levels
    rgb = np.stack([defect, defect // 2, defect // 4], -1)  # colour: 'auto' stays uint8 / 255
    np.testing.assert_allclose(normalise_image(rgb), rgb / 255, atol=1e-6)


def test_auto_normalisation_keys_carry_its_version():
    """Features cached when 'auto' stretched grey images differently are not reused."""
    import hrdv2.features.sets as sets_mod

    auto, plain = FeatureConfig().key(), FeatureConfig(normalise="percentile").key()
    sets_mod.NORMALISE_VERSION -= 1
    try:
        assert FeatureConfig().key() != auto and FeatureConfig(normalise="percentile").key() == plain
    finally:
        sets_mod.NORMALISE_VERSION += 1


def test_lab_normalisation_gives_cie_lab_scaled_to_unit_range(rng):
    """``lab``: sRGB to CIE Lab (D65), L / 100 and (a, b + 128) / 255. Known answers: white is
    L 100 with a = b = 0; black L 0; sRGB red is L 53.24, a 80.09, b 67.20 (the standard values);
    a grey pixel has no colour (a = b = 0) at any lightness. Grey images and deep features refuse it."""
    im = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [90, 90, 90]]], np.uint8)
    lab = normalise_image(im, "lab")
    assert lab.dtype == np.float32 and lab.shape == im.shape
    scaled = lambda L, a, b: [L / 100, (a + 128) / 255, (b + 128) / 255]  # noqa: E731
    np.testing.assert_allclose(lab[0, :3], [scaled(100, 0, 0), scaled(0, 0, 0), scaled(53.24, 80.09, 67.20)], atol=2e-4)
    np.testing.assert_allclose(lab[0, 3, 1:], [128 / 255, 128 / 255], atol=1e-4)
    assert 0.3 < lab[0, 3, 0] < 0.45  # sRGB 90 is L ~37.8: lightness follows the gamma curve, not 90/255
    rgb16 = im.astype(np.uint16) * 257  # other dtypes: min-max to [0, 1] first, as 'none'
    np.testing.assert_allclose(normalise_image(rgb16, "lab"), lab, atol=1e-5)
    with pytest.raises(ConfigError, match="1 channel.*normalise 'auto'"):
        normalise_image(im[..., 0], "lab")
    with pytest.raises(ConfigError, match="classical features"):
        FeatureConfig(kind="hybrid", normalise="lab")
    assert FeatureConfig(normalise="lab").key() != FeatureConfig().key()
    colour = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    feats = compute_features(colour, FeatureConfig(sigmas=(1,), filters=("intensity",), normalise="lab"))
    np.testing.assert_allclose(feats, normalise_image(colour, "lab"), atol=1e-6)  # the filters see Lab


def test_standardise():
    x = np.random.default_rng(0).normal(3, 2, (10, 10, 4)).astype(np.float32)
    z, m, s = standardise(x)
    np.testing.assert_allclose(z.reshape(-1, 4).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, 4).std(0), 1, atol=1e-4)
    z2, _, _ = standardise(x, m, s)
    np.testing.assert_array_equal(z, z2)


def test_deep_and_hybrid_features(rng):
    img = (rng.random((56, 70)) * 255).astype(np.uint8)
    deep = compute_features(img, FeatureConfig(kind="deep", **SMALL_DEEP))
    assert deep.shape == (56, 70, 384) and deep.dtype == np.float32 and np.isfinite(deep).all()
    hyb = compute_features(img, FeatureConfig(kind="hybrid", sigmas=(1, 2), **SMALL_DEEP))
    n_cls = len(feature_names(1, (1, 2)))
    assert hyb.shape == (56, 70, n_cls + 384)
    # each block standardised on its own
    flat = hyb.reshape(-1, hyb.shape[-1])
    assert abs(flat[:, :n_cls].mean()) < 1e-3 and abs(flat[:, n_cls:].mean()) < 1e-3
    pca = compute_features(img, FeatureConfig(kind="deep", pca_components=6, **SMALL_DEEP))
    assert pca.shape == (56, 70, 6)


def test_deep_without_weights_is_a_clear_error(tmp_path):
    from hrdv2.errors import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match="classical"):
        compute_features(np.zeros((28, 28), np.uint8), FeatureConfig(kind="deep", weights=str(tmp_path / "none.pth")))


def test_cache_hits_after_first_compute(tmp_path, rng):
    img = (rng.random((32, 40)) * 255).astype(np.uint8)
    cfg = FeatureConfig(sigmas=(1, 2))
    engine = FeatureEngine(cfg)
    cache = FeatureCache(tmp_path)
    a = cache.get_or_compute(img, cfg, lambda: engine.compute(img))
    assert cache.misses == 1 and cache.path_for(img, cfg).exists()

    def boom():
        raise AssertionError("features recomputed despite a cache entry")

    b = FeatureCache(tmp_path).get_or_compute(img.copy(), cfg, boom)  # a fresh cache object, same content
    np.testing.assert_array_equal(a, b)
    # a different image or config misses
    other = img.copy()
    other[0, 0] ^= 1
    assert image_hash(other) != image_hash(img)
    cache.get_or_compute(other, cfg, lambda: engine.compute(other))
    cfg3 = cfg.replace(sigmas=(1, 3))
    cache.get_or_compute(img, cfg3, lambda: FeatureEngine(cfg3).compute(img))
    assert cache.misses == 3
    assert not list(tmp_path.rglob("*.part*"))  # atomic writes leave no temporaries
    assert cache.clear() == 3


def test_engine_features_go_through_its_cache_and_share_backbones(tmp_path, rng):
    from hrdv2.engine import BackboneCache

    img = (rng.random((28, 42)) * 255).astype(np.uint8)
    backbones = BackboneCache()
    cfg = FeatureConfig(kind="deep", **SMALL_DEEP)
    one = FeatureEngine(cfg, cache_dir=tmp_path, backbones=backbones)
    a = one.features(img)
    two = FeatureEngine(cfg.replace(batch_size=2), cache_dir=tmp_path, backbones=backbones)
    assert two.backbone is one.backbone and len(backbones) == 1  # loaded once
    b = two.features(img)  # batch size is not part of the key: a cache hit, read back
    np.testing.assert_array_equal(a, b)
    assert isinstance(b, np.memmap) or not b.flags.owndata
    assert len(list(tmp_path.glob("*/*.npy"))) == 1
