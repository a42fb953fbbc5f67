"""3D classical filters: names and shapes, the spacing convention (exact properties), brick-wise
equal to whole-volume on a real EM stack, closed-form eigenvalues, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from hrdv2.blocks import MIN_BLOCK_SIZE, ArrayWriter, map_blocks, plan_blocks
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.classical3d import (
    DEFAULT_FILTERS_3D, TRUNCATE, VOLUME_FILTERS, _eigvalsh3, check_spacing, classical3d_halo,
    classical_features_3d, feature_names_3d,
)
from hrdv2.io import read_image


@pytest.fixture(scope="module")
def stack(shared_data: Path) -> np.ndarray:
    """The 10 ISBI 2012 serial-section EM slices as a (10, 96, 96) volume in [0, 1]."""
    pages = [read_image(shared_data / "isbi2012" / f"isbi_{i:02d}.png") for i in range(10)]
    vol = np.stack(pages)[:, 200:296, 150:246]
    assert vol.dtype == np.uint8 and vol.shape == (10, 96, 96)
    return vol.astype(np.float32) / np.float32(255)


def _channel(names: list[str], name: str) -> int:
    return names.index(name)


# --------------------------------------------------------------------------- names and shapes

def test_names_match_output_channels(stack: np.ndarray) -> None:
    names = feature_names_3d((1, 2), "all")
    # intensity + per sigma: gaussian, gradient, 3 hessian, dog, 3 structure
    assert len(names) == 1 + 2 * 9 and len(set(names)) == len(names)
    assert names[:3] == ["intensity", "gaussian_s1", "gradient_s1"]
    assert "structure_min_s2" in names and "hessian_mid_s1" in names
    out = classical_features_3d(stack[:4, :20, :24], (1, 2), "all")
    assert out.shape == (4, 20, 24, len(names)) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 0], stack[:4, :20, :24])
    # eigenvalues come sorted max >= mid >= min
    for kind in ("hessian", "structure"):
        hi, mid, lo = (out[..., names.index(f"{kind}_{e}_s2")] for e in ("max", "mid", "min"))
        assert (hi >= mid - 1e-7).all() and (mid >= lo - 1e-7).all()
    # the default selection and presets
    assert feature_names_3d() == feature_names_3d(sigmas=(1, 2, 4, 8, 16), filters="default")
    assert not any(n.startswith("structure") for n in feature_names_3d(filters=DEFAULT_FILTERS_3D))
    assert feature_names_3d((1,), "dog,intensity") == ["intensity", "dog_s1"]
    assert set(VOLUME_FILTERS) >= set(DEFAULT_FILTERS_3D)


def test_uint8_and_crop_agree_with_float_whole(stack: np.ndarray) -> None:
    vol8 = np.round(stack[:, :32, :32] * 255).astype(np.uint8)
    whole = classical_features_3d(vol8.astype(np.float32) / np.float32(255), (1, 2), "all", (2, 1, 1))
    np.testing.assert_array_equal(classical_features_3d(vol8, (1, 2), "all", (2, 1, 1)), whole)
    crop = (slice(3, 7), slice(5, 21), slice(10, 32))
    part = classical_features_3d(vol8, (1, 2), "all", (2, 1, 1), crop=crop)
    assert part.shape == (4, 16, 22, whole.shape[-1])
    np.testing.assert_allclose(part, whole[crop], atol=1e-6, rtol=0)


def test_progress_counts_sigmas(stack: np.ndarray) -> None:
    calls: list[tuple[int, int]] = []
    classical_features_3d(stack[:3, :16, :16], (1, 2, 4), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


# --------------------------------------------------------------------------- spacing convention

@pytest.mark.parametrize("spacing", [(1, 1, 1), (3, 1, 1)])
def test_volume_constant_along_z_gives_2d_gaussian(stack: np.ndarray, spacing: tuple) -> None:
    """Whatever the z spacing, a z-constant volume blurs like its slice in 2D (scipy, reflect, 4 sigma)."""
    page = stack[4, :48, :40]
    vol = np.repeat(page[None], 5, axis=0)
    sigmas = (1, 2, 4)
    names = feature_names_3d(sigmas, "gaussian,gradient")
    out = classical_features_3d(vol, sigmas, "gaussian,gradient", spacing)
    for s in sigmas:
        ref = ndi.gaussian_filter(page, s, mode="reflect", truncate=TRUNCATE)
        got = out[..., _channel(names, f"gaussian_s{s:g}")]
        for z in range(vol.shape[0]):
            np.testing.assert_allclose(got[z], ref, atol=2e-6, rtol=0)
        # no z derivative: the gradient is the in-plane one, identical on every slice
        grad = out[..., _channel(names, f"gradient_s{s:g}")]
        np.testing.assert_allclose(grad, np.broadcast_to(grad[2], grad.shape), atol=1e-6, rtol=0)


def test_z_sigma_is_divided_by_relative_spacing(stack: np.ndarray) -> None:
    """Sigmas count finest-axis voxels: with spacing (2, 1, 1) a z profile is blurred by sigma / 2
    slices; only spacing ratios matter."""
    profile = stack[:, 40, 40]
    vol = np.broadcast_to(profile[:, None, None], (10, 6, 7)).copy()
    sigmas = (1, 2, 4)
    names = feature_names_3d(sigmas, "gaussian")
    out = classical_features_3d(vol, sigmas, "gaussian", (2, 1, 1))
    for s in sigmas:
        ref = ndi.gaussian_filter1d(profile, s / 2, mode="reflect", truncate=TRUNCATE)
        np.testing.assert_allclose(out[:, 3, 3, _channel(names, f"gaussian_s{s:g}")], ref, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(classical_features_3d(vol, sigmas, "gaussian", (6, 3, 3)), out)
    np.testing.assert_array_equal(classical_features_3d(vol, sigmas, "gaussian", "2,1,1"), out)


def test_derivatives_are_in_finest_voxel_units() -> None:
    """V = c (zp^2 + y^2) with zp = 2 z (spacing (2, 1, 1)): in the interior, where blurring a
    quadratic only adds a constant and central differences of a quadratic are exact, the gradient
    is 2 c sqrt(zp^2 + y^2) and the Hessian eigenvalues are (2c, 2c, 0); voxel units would give
    8c along z instead."""
    c, spacing, sigmas = 1e-4, (2, 1, 1), (1, 2)
    z, y = np.meshgrid(np.arange(24, dtype=np.float64), np.arange(40, dtype=np.float64), indexing="ij")
    vol = np.repeat((c * ((2 * z) ** 2 + y**2))[..., None], 5, axis=2).astype(np.float32)
    names = feature_names_3d(sigmas, "gradient,hessian")
    out = classical_features_3d(vol, sigmas, "gradient,hessian", spacing)
    hz, hy, _ = classical3d_halo(sigmas, "gradient,hessian", spacing)
    inner = (slice(hz, 24 - hz), slice(hy, 40 - hy))
    for s in sigmas:
        grad = out[..., 2, _channel(names, f"gradient_s{s}")][inner]
        np.testing.assert_allclose(grad, (2 * c * np.hypot(2 * z, y))[inner], rtol=1e-3, atol=1e-6)
        for e, want in (("max", 2 * c), ("mid", 2 * c), ("min", 0.0)):
            got = out[..., 2, _channel(names, f"hessian_{e}_s{s}")][inner]
            np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------- brick-wise == whole

def _bricks(vol: np.ndarray, block: int | tuple, sigmas, filters, spacing, use_crop: bool) -> np.ndarray:
    halo = classical3d_halo(sigmas, filters, spacing)
    plan = plan_blocks(vol.shape, block, halo=halo)
    n = len(feature_names_3d(sigmas, filters))

    def func(data: np.ndarray, block) -> np.ndarray:
        return classical_features_3d(data, sigmas, filters, spacing, crop=block.crop if use_crop else None)

    return map_blocks(vol, plan, func, ArrayWriter(np.float32, n))


@pytest.mark.parametrize("block, use_crop", [(MIN_BLOCK_SIZE, False), (MIN_BLOCK_SIZE, True), (40, True)])
def test_bricks_equal_whole_volume(stack: np.ndarray, block: int, use_crop: bool) -> None:
    """All filters, anisotropic; 16-voxel bricks are smaller than the halo, 40 does not divide 96."""
    sigmas, spacing = (1, 2, 4), (2, 1, 1)
    halo = classical3d_halo(sigmas, "all", spacing)
    assert halo[0] < halo[1] and MIN_BLOCK_SIZE < max(halo)
    whole = classical_features_3d(stack, sigmas, "all", spacing)
    got = _bricks(stack, block, sigmas, "all", spacing, use_crop)
    np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)


def test_bricks_split_z_too(stack: np.ndarray) -> None:
    """The same stack seen from the side (z = image rows): bricks now cut z, with a z spacing."""
    side = np.ascontiguousarray(stack.transpose(1, 0, 2))  # (96, 10, 96)
    sigmas, spacing = (1, 2), (1.5, 3, 1)
    whole = classical_features_3d(side, sigmas, "all", spacing)
    got = _bricks(side, (MIN_BLOCK_SIZE, 16, 32), sigmas, "all", spacing, True)
    np.testing.assert_allclose(got, whole, atol=1e-5, rtol=0)


def test_default_bank_bricks_and_the_halo_is_needed(stack: np.ndarray) -> None:
    whole = classical_features_3d(stack)
    np.testing.assert_allclose(_bricks(stack, 32, (1, 2, 4, 8, 16), "default", (1, 1, 1), True), whole, atol=1e-5, rtol=0)
    # without the halo, the brick edges are wrong: the comparison above can fail
    plan = plan_blocks(stack.shape, 32, halo=0)
    bad = map_blocks(stack, plan, lambda d, b: classical_features_3d(d), ArrayWriter(np.float32, whole.shape[-1]))
    assert np.abs(bad - whole).max() > 1e-3


def test_halo_grows_with_sigma_and_shrinks_with_spacing() -> None:
    assert classical3d_halo((1, 2, 4, 8, 16), "default") == (65, 65, 65)  # int(4 * 16 + 0.5) + 1
    assert classical3d_halo((1, 2, 4, 8, 16), "gaussian,dog") == (64, 64, 64)
    assert classical3d_halo((1, 2, 4, 8, 16), "intensity") == (0, 0, 0)
    assert classical3d_halo((4,), "structure", (4, 1, 1)) == (4 + 1 + 2, 16 + 1 + 8, 17 + 8)


# --------------------------------------------------------------------------- eigenvalues

def test_closed_form_eigenvalues_match_lapack(rng: np.random.Generator) -> None:
    a = rng.normal(size=(5000, 3, 3))
    a = a + a.transpose(0, 2, 1)
    a[:100] = np.eye(3) * rng.normal(size=(100, 1, 1))  # triple eigenvalue
    a[100:200] = np.diag([1.0, 1.0, -2.0])  # double eigenvalues, both orders
    a[200:300] = np.diag([3.0, -1.0, -1.0])
    a[300:400] = 0.0
    a[400:500] *= 1e-6  # small scales, as for Hessians of flat regions
    ref = np.linalg.eigvalsh(a)[:, ::-1]
    got = np.stack(_eigvalsh3(a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], a[:, 0, 1], a[:, 0, 2], a[:, 1, 2]), -1)
    scale = np.abs(ref).max(axis=1, keepdims=True) + 1e-30
    assert (np.abs(got - ref) / scale).max() < 1e-7


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "spacing", [(1, 1), (4, 1, 1, 1), (0, 1, 1), (-4, 1, 1), (float("nan"), 1, 1), (float("inf"), 1, 1), "4,1", "a,b,c", "", 4]
)
def test_bad_spacing_is_one_line_with_the_fix(stack: np.ndarray, spacing) -> None:
    for call in (
        lambda: check_spacing(spacing),
        lambda: classical3d_halo((1,), "default", spacing),
        lambda: classical_features_3d(stack[:2, :8, :8], (1,), "default", spacing),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and repr(spacing) in msg
        assert "--spacing takes three positive numbers z,y,x, e.g. 4,1,1" in msg


def test_good_spacing_forms() -> None:
    assert check_spacing("4, 1,1") == (4.0, 1.0, 1.0)
    assert check_spacing(np.array([0.5, 0.25, 0.25])) == (0.5, 0.25, 0.25)


def test_bad_volumes_and_filters(stack: np.ndarray) -> None:
    rgb = np.zeros((3, 8, 8, 3), np.float32)
    with pytest.raises(ConfigError, match=r"grey volumes.*\(3, 8, 8, 3\)"):
        classical_features_3d(rgb)
    with pytest.raises(ShapeError, match=r"\(Z, Y, X\) volume.*\(8, 8\)"):
        classical_features_3d(np.zeros((8, 8), np.float32))
    with pytest.raises(ConfigError, match="uint16; normalise it first"):
        classical_features_3d(np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(ConfigError, match=r"unknown 3D filter\(s\) \['variance'\]"):
        feature_names_3d((1,), "gaussian,variance")
    with pytest.raises(ConfigError, match="sigmas must be positive and increasing"):
        classical_features_3d(stack[:2, :8, :8], (2, 1))
    # a (Z, Y, X, 1) volume is grey
    np.testing.assert_array_equal(
        classical_features_3d(stack[:2, :8, :8, None], (1,)), classical_features_3d(stack[:2, :8, :8], (1,))
    )
