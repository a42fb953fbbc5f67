"""The fast HR-Dv2 path equals the method written literally, and the baselines are what they claim."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError, ShapeError
from hrdv2.transforms import Identity, flips, product, rotations, shifts
from hrdv2.upsample import HighResFeaturizer, image_to_tensor, upsample_baseline


def reference_hrdv2(backbone, image, transforms, stride):
    """The method as published, written plainly: per transform, pad (documented policy), ViT,
    nearest-exact resize, crop, inverse transform; then the mean."""
    x = image_to_tensor(image)
    P = backbone.patch_size
    feats, attn = 0, 0
    for t in transforms:
        xt = t.forward(x)
        th, tw = xt.shape[-2:]
        gh, gw = -(-th // stride), -(-tw // stride)
        a = (P - stride) // 2
        ph, pw = (gh - 1) * stride + P, (gw - 1) * stride + P
        pads = (a, pw - a - tw, a, ph - a - th)
        mode = "reflect" if max(pads[:2]) < tw and max(pads[2:]) < th else "replicate"
        f, at = backbone.forward_patches(F.pad(xt, pads, mode=mode), stride)
        up = lambda g: F.interpolate(g, size=(gh * stride, gw * stride), mode="nearest-exact")[..., :th, :tw]  # noqa: E731
        feats = feats + t.inverse(up(f))
        attn = attn + t.inverse(up(at))
    return feats[0] / len(transforms), attn[0] / len(transforms)


SETS = {
    "shifts": lambda: shifts((1, 2), "moore"),
    "shift_x_flip": lambda: product(shifts((1,), "neumann"), flips()),
    "rotations": lambda: rotations(),
    "shift_x_rot": lambda: product(shifts((2,), "neumann"), rotations()),
}


@pytest.mark.parametrize("stride", [14, 6])
@pytest.mark.parametrize("set_name", list(SETS))
@pytest.mark.parametrize("size", [(31, 47)])  # odd, non-square: covers padding and transposed grids
def test_fast_path_equals_reference(tiny_backbone, rng, stride, set_name, size):
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    tfs = SETS[set_name]()
    ref_f, ref_a = reference_hrdv2(tiny_backbone, image, tfs, stride)
    out = HighResFeaturizer(tiny_backbone, stride=stride, transforms=tfs, batch_size=3)(image)
    assert out.features.shape == (384, *size) and out.attention.shape == (6, *size)
    torch.testing.assert_close(out.features, ref_f, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.attention, ref_a, rtol=0, atol=1e-5)
    assert out.info["transforms"] == len(tfs) and out.info["untrained"]


def test_identity_equals_nearest_upsampled_patch_features(tiny_backbone, rng):
    image = rng.integers(0, 256, (42, 56), dtype=np.uint8)  # multiple of P: no padding at all
    out = HighResFeaturizer(tiny_backbone, transforms=[Identity()])(image)
    f, a = tiny_backbone.forward_patches(image_to_tensor(image))
    torch.testing.assert_close(out.features, F.interpolate(f, size=(42, 56), mode="nearest")[0], rtol=0, atol=0)
    torch.testing.assert_close(out.attention, F.interpolate(a, size=(42, 56), mode="nearest")[0], rtol=0, atol=0)
    base = upsample_baseline(image, tiny_backbone, "nearest")
    torch.testing.assert_close(base.features, out.features, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_interpolating_baselines_equal_f_interpolate_on_aligned_images(tiny_backbone, rng, mode):
    image = rng.integers(0, 256, (28, 42, 3), dtype=np.uint8)
    out = upsample_baseline(image, tiny_backbone, mode)
    f, _ = tiny_backbone.forward_patches(image_to_tensor(image))
    torch.testing.assert_close(out.features, F.interpolate(f, size=(28, 42), mode=mode, align_corners=False)[0])


def test_baselines_cover_odd_sizes_and_strides(tiny_backbone, rng):
    image = rng.integers(0, 256, (33, 29, 3), dtype=np.uint8)
    for mode in ("nearest", "bilinear", "bicubic"):
        for stride in (14, 7):
            out = upsample_baseline(image, tiny_backbone, mode, stride=stride)
            assert out.features.shape == (384, 33, 29) and torch.isfinite(out.features).all()


def test_batch_size_does_not_change_the_result(tiny_backbone, rng):
    image = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    a = HighResFeaturizer(tiny_backbone, batch_size=1)(image).features
    b = HighResFeaturizer(tiny_backbone, batch_size=17)(image).features
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bfloat16_is_close_to_float32(tiny_backbone, rng):
    image = rng.integers(0, 256, (42, 42, 3), dtype=np.uint8)
    f32 = HighResFeaturizer(tiny_backbone, transforms=shifts((1,)))(image).features
    bf16 = HighResFeaturizer(tiny_backbone, transforms=shifts((1,)), dtype="bfloat16")(image).features
    cos = F.cosine_similarity(f32.reshape(384, -1), bf16.reshape(384, -1), dim=0)
    assert cos.mean() > 0.99 and bf16.dtype == torch.float32


def test_progress_callback_counts_transforms(tiny_backbone, rng):
    seen = []
    HighResFeaturizer(tiny_backbone, batch_size=5)(rng.random((20, 20)), progress_callback=lambda d, t: seen.append((d, t)))
    assert seen == [(5, 17), (10, 17), (15, 17), (17, 17)]


def test_bad_inputs_get_clear_errors(tiny_backbone):
    with pytest.raises(ShapeError, match="at least 4 px"):
        HighResFeaturizer(tiny_backbone)(np.zeros((1, 50), np.uint8))
    with pytest.raises(ShapeError, match=r"\(H, W\) grey or \(H, W, 3\) RGB"):
        HighResFeaturizer(tiny_backbone)(np.zeros((20, 20, 5), np.uint8))
    with pytest.raises(ConfigError, match="half the patch size"):
        HighResFeaturizer(tiny_backbone, transforms=shifts((7,)))
    with pytest.raises(ConfigError, match="stride"):
        HighResFeaturizer(tiny_backbone, stride=20)
    with pytest.raises(ConfigError, match="dtype"):
        HighResFeaturizer(tiny_backbone, dtype="int8")


def test_16bit_and_rgba_inputs_are_converted(tiny_backbone, rng):
    grey16 = rng.integers(0, 4096, (28, 28), dtype=np.uint16)
    as8 = np.round((grey16 - grey16.min()) / (grey16.max() - grey16.min()) * 255).astype(np.uint8)
    a = HighResFeaturizer(tiny_backbone, transforms=[Identity()])(grey16).features
    b = HighResFeaturizer(tiny_backbone, transforms=[Identity()])(as8).features
    assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999
    rgba = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
    c = HighResFeaturizer(tiny_backbone, transforms=[Identity()])(rgba).features
    d = HighResFeaturizer(tiny_backbone, transforms=[Identity()])(rgba[..., :3]).features
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_projection_on_the_compressed_grid_equals_projecting_the_output(tiny_backbone, rng):
    image = rng.integers(0, 256, (33, 40, 3), dtype=np.uint8)
    fz = HighResFeaturizer(tiny_backbone, stride=7, transforms=shifts((1,)))
    full = fz(image).features
    weight = torch.randn(384, 5)
    projected = fz(image, project=lambda rows: (rows - 1.0) @ weight).features
    expected = torch.einsum("chw,ck->khw", full - 1.0, weight)
    assert projected.shape == (5, 33, 40)
    torch.testing.assert_close(projected, expected, rtol=1e-4, atol=1e-4)
