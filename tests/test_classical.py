"""Classical filters on images whose answers are known: constant, step edge, bright disk."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.classical import (
    ALL_FILTERS, DEFAULT_FILTERS, DEFAULT_SIGMAS, _diff2, _sobel, classical_features, feature_names, resolve_filters,
)

N_PER_SIGMA = 15  # gaussian, gradient, 3 hessian, laplacian, dog, 2 structure, mean, variance, min, max, median, entropy


def _feat(img, **kw):
    """All filters unless told otherwise, as a (F stack, name -> channel) pair."""
    kw.setdefault("filters", ALL_FILTERS)
    f = classical_features(img, **kw)
    names = feature_names(1 if img.ndim == 2 else img.shape[-1], kw.get("sigmas", DEFAULT_SIGMAS), kw["filters"])
    return f, {n: f[..., i] for i, n in enumerate(names)}


def test_feature_count_and_names():
    names = feature_names(1, DEFAULT_SIGMAS, "all")
    # + 2 derivative orders and 8 neighbours per sigma, 5 membrane projections, 4 bilateral means
    assert len(names) == 1 + (N_PER_SIGMA + 10) * len(DEFAULT_SIGMAS) + 5 + 4
    assert len(set(names)) == len(names)
    assert names[0] == "intensity" and "hessian_det_s4" in names and "membrane_median" in names
    rgb = feature_names(3, DEFAULT_SIGMAS, "all")
    assert len(rgb) == 3 * len(names) and rgb[0] == "c0:intensity" and rgb[-1] == "c2:bilateral_r10_t100"
    assert feature_names(1, (2.0,), ("gaussian", "hessian")) == [
        "gaussian_s2", "hessian_max_s2", "hessian_min_s2", "hessian_det_s2"]
    # the default selection: intensity + gaussian, gradient, 3 hessian, dog, variance per sigma
    default = feature_names()
    assert len(default) == 1 + 7 * len(DEFAULT_SIGMAS) and default[:3] == ["intensity", "gaussian_s1", "gradient_s1"]
    assert not any(n.startswith(("membrane", "entropy", "structure")) for n in default)
    img = np.zeros((40, 48), np.uint8)
    assert classical_features(img).shape == (40, 48, len(default))
    assert classical_features(img, filters="all").shape == (40, 48, len(names))
    assert classical_features(np.zeros((40, 48, 3), np.uint8), filters=ALL_FILTERS).shape == (40, 48, len(rgb))


def test_filter_presets_resolve_to_canonical_order():
    assert resolve_filters("default") == DEFAULT_FILTERS
    assert resolve_filters("all") == ALL_FILTERS
    assert resolve_filters("structure, default") == resolve_filters(list(DEFAULT_FILTERS) + ["structure"])
    assert resolve_filters(["dog", "gaussian", "dog"]) == ("gaussian", "dog")


def test_fast_derivatives_equal_scipy():
    import scipy.ndimage as ndi

    rng = np.random.default_rng(0)
    for shape in [(37, 53), (2, 9), (1, 5), (3, 3)]:
        x = rng.random(shape).astype(np.float32)
        for axis in (0, 1):
            np.testing.assert_allclose(_sobel(x, axis), ndi.sobel(x, axis=axis, mode="nearest") / 8, atol=1e-6)
            np.testing.assert_allclose(_diff2(x, axis), ndi.correlate1d(x, [1, -2, 1], axis=axis, mode="nearest"),
                                       atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 4), (5, 17), (16, 16), (17, 3), (6, 6, 3)])
def test_tiny_images_work_at_every_sigma(shape):
    """Pyramid levels of a few-pixel image shrink to 1 px: every filter must still be finite."""
    f = classical_features(np.random.default_rng(1).random(shape).astype(np.float32), filters="all")
    assert f.shape[:2] == shape[:2] and np.isfinite(f).all()


def test_variance_sees_texture_finer_than_the_pyramid_blocks():
    """Fine noise vs a flat patch: block averaging wipes out the noise, so the variance at sigmas
    served by the pyramid must come from block means of x^2, not from the averaged image."""
    rng = np.random.default_rng(0)
    img = np.full((128, 128), 0.5, np.float32)
    img[:, :64] += rng.normal(0, 0.1, (128, 64)).astype(np.float32)
    for pyramid in (True, False):
        _, d = _feat(img, sigmas=(1, 4, 16), filters=("variance",), pyramid=pyramid)
        for s in ("1", "4", "16"):
            noisy, flat = d[f"variance_s{s}"][40:88, 8:40], d[f"variance_s{s}"][40:88, 96:120]
            assert abs(float(noisy.mean()) - 0.01) < 0.003, (pyramid, s, float(noisy.mean()))
            assert float(flat.max()) < 0.0005  # the flat side stays flat away from the border


def test_constant_image_has_flat_responses():
    f, d = _feat(np.full((64, 64), 128, np.uint8))
    assert f.dtype == np.float32 and np.isfinite(f).all()
    c = 128 / 255
    for s in ("1", "4", "16"):
        for name in ("gaussian", "mean", "min", "max", "median"):
            np.testing.assert_allclose(d[f"{name}_s{s}"], c, atol=1e-5)
        for name in ("gradient", "hessian_max", "hessian_min", "hessian_det", "laplacian", "dog", "variance",
                     "entropy", "structure_max", "structure_min"):
            np.testing.assert_allclose(d[f"{name}_s{s}"], 0, atol=1e-5)
    np.testing.assert_allclose(d["membrane_std"], 0, atol=1e-5)


@pytest.mark.parametrize("pyramid", [True, False])
def test_step_edge(pyramid):
    img = np.zeros((64, 96), np.float32)
    img[:, 48:] = 1.0
    _, d = _feat(img, pyramid=pyramid, sigmas=(1, 2, 4, 8))
    row = 32
    for s in ("1", "2", "4", "8"):
        g = d[f"gradient_s{s}"][row]
        # at sigma s the pyramid works on blocks of up to s px: the peak is within half a block
        assert abs(int(np.argmax(g)) - 47.5) <= float(s) / 2 + 1, f"gradient peak off the edge at sigma {s}"
        assert g[5] < 0.05 * g.max() and g[-6] < 0.2 * g.max()
        gauss = d[f"gaussian_s{s}"][row]
        assert np.all(np.diff(gauss) >= -1e-4), "blurred step must rise monotonically"
        assert gauss[2] < 0.1 and gauss[-3] > 0.9
        # Laplacian changes sign across the edge: positive on the dark side, negative on the bright
        lap = d[f"laplacian_s{s}"][row]
        assert lap[46] > 0 > lap[49]
        # structure tensor: one strong direction at the edge (max >> min)
        assert d[f"structure_max_s{s}"][row, 47] > 10 * abs(d[f"structure_min_s{s}"][row, 47]) + 1e-6
    # neighbourhood statistics straddle the edge
    assert d["min_s2"][row, 48] == 0 and d["max_s2"][row, 47] == 1
    assert d["variance_s2"][row, 48] > 0.1 and d["variance_s2"][row, 10] < 1e-6
    assert d["entropy_s2"][row, 48] > 0.5 and d["entropy_s2"][row, 10] < 1e-6
    # sharper blur (smaller sigma) gives a taller, narrower gradient peak
    assert d["gradient_s1"][row].max() > d["gradient_s4"][row].max() > d["gradient_s8"][row].max()


def test_bright_disk_blob_responses():
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot(yy - 48, xx - 48)
    img = (r <= 6).astype(np.float32)
    _, d = _feat(img)
    # a bright blob: both Hessian eigenvalues negative at its centre at the matching scale,
    # so the determinant is positive and the Laplacian negative there, and most negative near it
    assert d["hessian_max_s4"][48, 48] < 0 and d["hessian_min_s4"][48, 48] < 0
    assert d["hessian_det_s4"][48, 48] > 0
    lap = d["laplacian_s4"]
    assert np.unravel_index(np.argmin(lap), lap.shape) in {(y, x) for y in range(46, 51) for x in range(46, 51)}
    # DoG: the blob spreads out as sigma grows, so blur(8) - blur(4) is negative on it, positive around it
    assert d["dog_s8"][48, 48] < 0 < d["dog_s8"][48, 64]
    # disk statistics (exact at sigma 1, block-approximated at larger sigma)
    assert d["mean_s1"][48, 48] == pytest.approx(1) and d["min_s1"][48, 48] == 1
    assert d["mean_s4"][48, 48] > 0.6 > d["mean_s4"][48, 60] > d["mean_s4"][48, 80] - 1e-6
    assert d["max_s4"][48, 52] == 1 and d["max_s1"][48, 70] == 0 and d["max_s4"][48, 90] == 0
    assert d["variance_s2"][48, 54] > 0.1 and d["variance_s2"][48, 48] < 1e-6
    assert d["median_s1"][48, 48] == 1 and d["median_s1"][10, 10] == 0
    # membrane projections respond more on the bright disk than on the background
    assert d["membrane_max"][48, 48] > d["membrane_max"][5, 5]


def test_pyramid_close_to_exact():
    rng = np.random.default_rng(1)
    img = rng.random((128, 128)).astype(np.float32)
    import scipy.ndimage as ndi

    img = ndi.gaussian_filter(img, 3)
    img = (img - img.min()) / (img.max() - img.min())
    filters = ("gaussian", "gradient", "hessian", "dog", "structure")
    fast, _ = _feat(img, sigmas=(2, 4, 8), filters=filters)
    exact, _ = _feat(img, sigmas=(2, 4, 8), filters=filters, pyramid=False)
    for i in range(fast.shape[-1]):
        span = exact[..., i].max() - exact[..., i].min()
        err = np.abs(fast[..., i] - exact[..., i])[8:-8, 8:-8].mean()
        assert err < 0.1 * span


def test_threads_match_serial_and_progress():
    img = (np.random.default_rng(2).random((50, 70)) * 255).astype(np.uint8)
    calls = []
    a = classical_features(img, filters="all", n_threads=1, progress=lambda d, t: calls.append((d, t)))
    # threads finish in any order; the result must not depend on it (repeat to give races a chance)
    for _ in range(6):
        np.testing.assert_array_equal(classical_features(img, filters="all", n_threads=3), a)
    assert calls and calls[-1][0] == calls[-1][1]


def test_bad_config_and_shape():
    with pytest.raises(ConfigError, match="unknown classical filter"):
        feature_names(1, DEFAULT_SIGMAS, ("gaussian", "sharpness"))
    with pytest.raises(ConfigError, match="increasing"):
        classical_features(np.zeros((8, 8)), sigmas=(4, 2))
    with pytest.raises(ShapeError):
        classical_features(np.zeros((2, 8, 8, 3)))


def test_banded_last_upsampling_equals_whole_image(monkeypatch):
    """The last pyramid step runs in bands of rows with a 1-row halo: the result must not depend
    on the band height (odd sizes, colour, an image shorter than a band)."""
    import hrdv2.features.classical as classical

    rng = np.random.default_rng(3)
    for shape in [(133, 517), (70, 65, 3), (5, 40)]:
        img = rng.random(shape).astype(np.float32)
        banded = classical_features(img, filters="all")
        monkeypatch.setattr(classical, "_BAND", 1 << 20)
        whole = classical_features(img, filters="all")
        monkeypatch.setattr(classical, "_BAND", 8)
        narrow = classical_features(img, filters="all")
        monkeypatch.undo()
        np.testing.assert_array_equal(banded, whole)
        np.testing.assert_array_equal(narrow, whole)


@pytest.mark.parametrize("filters", ["default", "all", ["structure", "entropy", "neighbours", "median", "min"]])
@pytest.mark.parametrize("pyramid", [True, False])
def test_crop_equals_the_whole_image_cut_there(filters, pyramid):
    """``crop=``: the full-resolution filters run on the window plus their support only, and the
    return to full resolution is made inside the window only; the values are the whole call's,
    bit for bit, at windows inside, at the edges, one pixel wide, and for colour images."""
    rng = np.random.default_rng(4)
    grey = (rng.random((97, 131)) ** 2).astype(np.float32)
    colour = rng.random((61, 70, 3)).astype(np.float32)
    for img, sigmas in ((grey, (1.0, 2.0, 4.0, 8.0)), (grey, (0.5, 1.0, 3.0)), (colour, (1.0, 2.0))):
        whole = classical_features(img, sigmas, filters, pyramid=pyramid)
        h, w = img.shape[:2]
        for crop in [(slice(30, 60), slice(27, 101)), (slice(0, h), slice(5, 40)), (slice(3, 4), slice(0, 7)),
                     (slice(h - 9, h), slice(w - 20, w)), (slice(-5, None), slice(None, 9))]:
            part = classical_features(img, sigmas, filters, pyramid=pyramid, crop=crop, n_threads=1)
            assert part.flags.c_contiguous
            np.testing.assert_array_equal(part, whole[crop])
    with pytest.raises(ShapeError, match="step 1"):
        classical_features(grey, crop=(slice(0, 10, 2), slice(0, 10)))
    with pytest.raises(ShapeError, match="non-empty"):
        classical_features(grey, crop=(slice(10, 10), slice(0, 10)))


def test_compiled_resampling_is_bit_identical_to_numpy(monkeypatch):
    """Images of a megapixel or more return to full resolution through the compiled kernels;
    their float32 operations are numpy's in numpy's order, so the features are the same bits."""
    import hrdv2.features.classical as classical

    rng = np.random.default_rng(5)
    img = rng.random((1030, 1031)).astype(np.float32)  # odd sides, above COMPILED_MIN_PIXELS
    crop = (slice(101, 1000), slice(3, 1030))
    compiled = classical_features(img, filters="weka"), classical_features(img, crop=crop)
    assert classical._compiled(img.size) is not None  # the kernels did run
    monkeypatch.setattr(classical, "_compiled", lambda pixels: None)
    np.testing.assert_array_equal(compiled[0], classical_features(img, filters="weka"))
    np.testing.assert_array_equal(compiled[1], classical_features(img, crop=crop))
