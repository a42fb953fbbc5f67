"""The upsampler protocol: shapes on odd sizes, agreement with F.interpolate, the joint
bilateral upsampler's limits, and honest unavailability of the torch.hub adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.probe.upsamplers import (
    UpsamplerUnavailableError,
    check_available,
    check_features,
    create_upsampler,
    list_upsamplers,
    register_upsampler,
)
from hrdv2.upsample import PatchGeometry, image_to_tensor

ODD = (25, 31)
BACKBONE_UPSAMPLERS = ["nearest", "bilinear", "bicubic", "stride-only", "joint-bilateral", "hrdv2",
                       "hrdv2-stride", "hrdv2-shift-flip", "hrdv2-shift-flip-stride"]


@pytest.fixture(scope="module")
def odd_image() -> np.ndarray:
    return (np.random.default_rng(1).random((*ODD, 3)) * 255).astype(np.uint8)


def _grid(image, backbone, stride=None):
    x = image_to_tensor(image)
    geo = PatchGeometry(*x.shape[-2:], backbone.patch_size, stride or backbone.patch_size)
    feats, _ = backbone.forward_patches(geo.pad(x), stride or backbone.patch_size, with_attention=False)
    return feats


def test_every_builtin_is_registered():
    assert set(BACKBONE_UPSAMPLERS) | {"classical", "featup", "loftup", "jafar"} <= set(list_upsamplers())


@pytest.mark.parametrize("name", BACKBONE_UPSAMPLERS)
def test_odd_sizes_give_c_h_w(name, odd_image, tiny_backbone):
    kwargs = {"shift_distances": (1,)} if "flip" in name else {}  # 9 x 4 transforms keep the test quick
    feats = create_upsampler(name, **kwargs)(odd_image, tiny_backbone)
    assert tuple(feats.shape) == (tiny_backbone.embed_dim, *ODD)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_grey_image_works(tiny_backbone):
    grey = (np.random.default_rng(2).random((29, 33)) * 255).astype(np.uint8)
    assert tuple(create_upsampler("joint-bilateral")(grey, tiny_backbone).shape) == (tiny_backbone.embed_dim, 29, 33)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_matches_f_interpolate_when_divisible(mode, tiny_backbone):
    img = (np.random.default_rng(3).random((42, 56, 3)) * 255).astype(np.uint8)
    grid = _grid(img, tiny_backbone)
    kw = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(grid, size=(42, 56), mode=mode, **kw)[0]
    torch.testing.assert_close(create_upsampler(mode)(img, tiny_backbone), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_matches_f_interpolate_on_odd_sizes(mode, odd_image, tiny_backbone):
    grid = _grid(odd_image, tiny_backbone)  # the image padded up to whole patches
    P = tiny_backbone.patch_size
    kw = {} if mode == "nearest" else {"align_corners": False}
    expected = F.interpolate(grid, size=(grid.shape[-2] * P, grid.shape[-1] * P), mode=mode, **kw)[0, :, : ODD[0], : ODD[1]]
    torch.testing.assert_close(create_upsampler(mode)(odd_image, tiny_backbone), expected, atol=1e-5, rtol=1e-5)


def test_joint_bilateral_radius_zero_is_nearest(odd_image, tiny_backbone):
    jbu = create_upsampler("joint-bilateral", radius=0)(odd_image, tiny_backbone)
    torch.testing.assert_close(jbu, create_upsampler("nearest")(odd_image, tiny_backbone), atol=1e-5, rtol=1e-5)


def test_joint_bilateral_is_a_convex_mix_of_patch_features(odd_image, tiny_backbone):
    grid = _grid(odd_image, tiny_backbone)[0]
    jbu = create_upsampler("joint-bilateral")(odd_image, tiny_backbone)
    lo = grid.amin(dim=(1, 2))[:, None, None]
    hi = grid.amax(dim=(1, 2))[:, None, None]
    assert (jbu >= lo - 1e-4).all() and (jbu <= hi + 1e-4).all()
    assert not torch.allclose(jbu, create_upsampler("nearest")(odd_image, tiny_backbone))


def test_joint_bilateral_follows_image_edges(tiny_backbone):
    """Left half dark, right half bright: with a narrow colour kernel, a dark pixel next to the
    edge takes (almost) nothing from the bright cells, so its feature stays closer to the dark
    side's features than bilinear interpolation's."""
    img = np.zeros((28, 56, 3), np.uint8)
    img[:, 28:] = 255  # the edge lies on a patch boundary (x = 28 = 2 * 14)
    grid = _grid(img, tiny_backbone)[0]
    jbu = create_upsampler("joint-bilateral", sigma_range=0.05)(img, tiny_backbone)
    bil = create_upsampler("bilinear")(img, tiny_backbone)
    dark_cell = grid[:, 0, 1]
    px = (7, 27)  # last dark column
    assert torch.dist(jbu[:, px[0], px[1]], dark_cell) < torch.dist(bil[:, px[0], px[1]], dark_cell)


def test_hub_adapters_report_unavailable_and_never_fake(monkeypatch, tmp_path, odd_image, tiny_backbone):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    for name, repo in (("featup", "mhamilton723/FeatUp"), ("loftup", "andrehuang/loftup"), ("jafar", "PaulCouairon/JAFAR")):
        up = create_upsampler(name)
        reason = check_available(up)
        assert reason is not None and repo in reason and "torch.hub.load" in reason
        with pytest.raises(UpsamplerUnavailableError, match=repo):
            up(odd_image, tiny_backbone)


def test_registry_errors_and_custom_upsampler(odd_image):
    with pytest.raises(ConfigError, match="bilinear"):
        create_upsampler("no-such-upsampler")

    @register_upsampler("test-constant", "constant features (test only)")
    def _factory():
        class Constant:
            name = "test-constant"

            def __call__(self, image, backbone):
                return torch.ones(2, *image.shape[:2])

        return Constant()

    up = create_upsampler("test-constant")
    assert check_available(up) is None
    assert tuple(check_features(up(odd_image, None), odd_image, up.name).shape) == (2, *ODD)


def test_check_features_names_the_problem(odd_image):
    with pytest.raises(ShapeError, match="'x'.*size"):
        check_features(torch.zeros(3, 5, 5), odd_image, "x")
    with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
        check_features(torch.zeros(5, 5), odd_image, "x")
    with pytest.raises(ShapeError, match="NaN"):
        check_features(torch.full((1, *ODD), float("nan")), odd_image, "x")


def test_classical_baseline_ignores_the_backbone(odd_image):
    up = create_upsampler("classical")
    reason = check_available(up)
    assert reason is None, reason
    feats = up(odd_image, None)
    assert feats.ndim == 3 and tuple(feats.shape[1:]) == ODD and feats.shape[0] > 3
