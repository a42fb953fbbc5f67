"""The rest of the Weka-style bank (higher-order derivatives, neighbours, bilateral means), the
`weka` preset, and the torch-free 2x upsampling of the pyramid: each on images whose answer is
known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from hrdv2.features import extra_filters as ex
from hrdv2.features.classical import (
    ALL_FILTERS, FILTER_PRESETS, _upsample2, classical_alignment, classical_features, classical_halo, feature_names,
    resolve_filters,
)


def _grid(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    return yy - n / 2, xx - n / 2


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_third_derivative_of_a_cubic_is_six_in_every_direction(angle):
    yy, xx = _grid()
    a = np.deg2rad(angle)
    u = (xx * np.cos(a) + yy * np.sin(a)) / 20.0
    x = (u**3).astype(np.float32)
    d = ex.derivatives(x, 2.0, 1)
    inner = (slice(20, -20), slice(20, -20))
    # d^3/du^3 (u/20)^3 = 6 / 20^3 per px^3, whatever the direction (the binomial weights make it invariant)
    np.testing.assert_allclose(d["deriv3"][inner], 6 / 20**3, rtol=0.02)
    assert np.abs(d["deriv4"][inner]).max() < 0.02 * 6 / 20**3 * 20  # a cubic has no 4th derivative


def test_fourth_derivative_of_a_quartic_and_level_units():
    yy, xx = _grid()
    x = ((xx / 20.0) ** 4).astype(np.float32)
    inner = (slice(30, -30), slice(30, -30))
    np.testing.assert_allclose(ex.derivatives(x, 2.0, 1)["deriv4"][inner], 24 / 20**4, rtol=0.03)
    # the same image at pyramid level 2 (every other pixel): values stay in full-resolution units
    half = ex.derivatives(x[::2, ::2].copy(), 1.0, 2)["deriv4"][12:-12, 12:-12]
    np.testing.assert_allclose(half, 24 / 20**4, rtol=0.05)


def test_derivatives_wired_into_the_bank():
    rng = np.random.default_rng(0)
    x = ndi.gaussian_filter(rng.random((64, 64)), 2).astype(np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    f = classical_features(x, sigmas=(1.0, 2.0), filters="derivatives", pyramid=False)
    names = feature_names(1, (1.0, 2.0), "derivatives")
    assert names == ["deriv3_s1", "deriv4_s1", "deriv3_s2", "deriv4_s2"]
    np.testing.assert_allclose(f[..., names.index("deriv3_s2")], ex.derivatives(x, 2.0, 1)["deriv3"], rtol=1e-5)


def test_neighbours_are_shifted_copies_with_edges_repeated():
    rng = np.random.default_rng(1)
    x = rng.random((30, 40)).astype(np.float32)
    f = classical_features(x, sigmas=(2.0,), filters="neighbours")
    names = feature_names(1, (2.0,), "neighbours")
    e, nw, s = (f[..., names.index(n)] for n in ("neighbour_e_s2", "neighbour_nw_s2", "neighbour_s_s2"))
    np.testing.assert_array_equal(e[:, :-2], x[:, 2:])
    np.testing.assert_array_equal(e[:, -1], x[:, -1])  # past the edge: the edge value
    np.testing.assert_array_equal(nw[2:, 2:], x[:-2, :-2])
    np.testing.assert_array_equal(s[:-2], x[2:])
    assert len(names) == 8 and len(set(names)) == 8


def test_bilateral_keeps_a_strong_step_and_mixes_a_weak_one():
    x = np.full((40, 40), 0.2, np.float32)
    x[:, 20:] = 0.8  # 153 grey levels apart: outside both ranges
    b = ex.bilateral(x)
    for name in ex.bilateral_names():
        np.testing.assert_allclose(b[name][:, :20], 0.2, atol=1e-5)
        np.testing.assert_allclose(b[name][:, 20:], 0.8, atol=1e-5)
    y = np.full((40, 40), 0.3, np.float32)
    y[:, 20:] = 0.6  # 76 grey levels apart: outside t=50, inside t=100
    b = ex.bilateral(y)
    np.testing.assert_allclose(b["bilateral_r5_t50"][:, :20], 0.3, atol=1e-5)
    box = ndi.uniform_filter(y, 11, mode="reflect")  # t=100: the plain (2r+1)^2 window mean
    np.testing.assert_allclose(b["bilateral_r5_t100"], box, atol=1e-4)
    assert abs(float(b["bilateral_r5_t100"][5, 19]) - 0.3) > 0.05  # mixed across the step


def test_weka_preset_and_all():
    weka = resolve_filters("weka")
    assert set(weka) == {"intensity", "gaussian", "gradient", "hessian", "laplacian", "dog", "membrane"}
    names = feature_names(1, (1.0, 2.0), "weka")
    assert "membrane_mean" in names and "laplacian_s2" in names and "dog_s1" in names and "variance_s1" not in names
    assert set(FILTER_PRESETS["all"]) == set(ALL_FILTERS)
    assert {"derivatives", "neighbours", "bilateral"} <= set(resolve_filters("all"))
    # the channel order of the filters that existed before is unchanged by the new ones
    old = ["intensity", "gaussian", "gradient", "hessian", "laplacian", "dog", "structure", "mean", "variance",
           "min", "max", "median", "entropy", "membrane"]
    assert list(ALL_FILTERS[: len(old)]) == old


def test_new_filters_block_halo_reproduces_the_whole_image():
    rng = np.random.default_rng(2)
    img = ndi.gaussian_filter(rng.random((128, 128)), 1.5).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    sig, filt = (1.0, 2.0, 4.0), "derivatives,neighbours,bilateral"
    whole = classical_features(img, sig, filt)
    halo, align = classical_halo(sig, filt), classical_alignment(sig)
    y0, y1 = 64, 96  # write window; read window aligned to the pyramid
    r0 = max(0, (y0 - halo) // align * align)
    r1 = min(128, -(-(y1 + halo) // align) * align)
    part = classical_features(img[r0:r1], sig, filt)
    np.testing.assert_allclose(part[y0 - r0 : y1 - r0], whole[y0:y1], atol=2e-5)


def test_numpy_upsample_equals_torch_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for shape in ((5, 7, 3), (1, 4, 2), (16, 9, 11)):
        x = rng.random(shape).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(2, 0, 1)[None], scale_factor=2,
                                              mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(_upsample2(x), ref, atol=1e-6)
