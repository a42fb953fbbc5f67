"""``geometry="published"`` and the published flip set against a plain re-implementation of the
published HR-Dv2 code (tldr-group/HR-Dv2, hr_dv2/high_res.py + patch.py + transform.py), written
out below step by step, on the same small ViT with random weights (UNTRAINED)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrdv2.backbones.vit import Backbone
from hrdv2.errors import ConfigError
from hrdv2.transforms import Compose, Flip, Identity, PublishedCompose, Shift, coordinate_map, flips, product, shifts
from hrdv2.upsample import HighResFeaturizer, image_to_tensor
from hrdv2.upsample.geometry import PatchGeometry, PublishedGeometry, make_geometry
from hrdv2.upsample.published import interpolate_patch_positions

# tiny images and tensors: one torch thread is fastest and keeps a busy shared machine usable
pytestmark = pytest.mark.usefixtures("one_torch_thread")

P = 14


def small_vit(registers: bool) -> Backbone:
    """A 2-block ViT/14 with a 4x4 positional table (img_size 56), random weights, timm layouts of
    DINOv2 without registers (table has a CLS entry) and with 4 registers (patch entries only)."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1 if registers else 0)
    extra = {"reg_tokens": 4, "no_embed_class": True} if registers else {}
    model = VisionTransformer(img_size=56, patch_size=P, embed_dim=48, depth=2, num_heads=3, num_classes=0,
                              init_values=1e-5, dynamic_img_size=True, **extra)
    with torch.no_grad():  # timm initialises the table to ~0.02 noise: make positions matter
        model.pos_embed.normal_(0, 1.0)
    return Backbone("small-vit", model, pretrained=False, weights_source="random")


# ------------------------------------------------------------------ the plain re-implementation

def reference_positions(model, gh: int, gw: int, H: int, W: int) -> torch.Tensor:
    """(1, gh*gw, C) patch positions: the square table resized bicubically with scale factors
    (g + 0.1) / n, unless the grid has as many patches as the table and the image is square."""
    table = model.pos_embed[:, 0 if model.no_embed_class else 1:]
    n = int(math.sqrt(table.shape[1]))
    if gh * gw == table.shape[1] and H == W:
        return table
    grid = table.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((gh + 0.1) / n, (gw + 0.1) / n), mode="bicubic", align_corners=False,
                        recompute_scale_factor=False)
    assert out.shape[-2:] == (gh, gw)
    return out.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)


def reference_patch_features(model, x: torch.Tensor, stride: int) -> torch.Tensor:
    """(C, gh, gw) features of one normalised (1, 3, H, W) image: strided patch embedding, no padding."""
    H, W = x.shape[-2:]
    tokens = F.conv2d(x, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=stride)
    C, gh, gw = tokens.shape[1:]
    assert (gh, gw) == (1 + (H - P) // stride, 1 + (W - P) // stride)
    tokens = tokens.flatten(2).transpose(1, 2) + reference_positions(model, gh, gw, H, W)
    if model.no_embed_class:  # registers layout: CLS and registers carry no position
        prefix = [model.cls_token, model.reg_token]
    else:
        prefix = [model.cls_token + model.pos_embed[:, :1]]
    seq = torch.cat(prefix + [tokens], dim=1)
    for block in model.blocks:
        seq = block(seq)
    seq = model.norm(seq)
    return seq[0, model.num_prefix_tokens:].transpose(0, 1).reshape(C, gh, gw)


def reference_transforms(distances, with_flips: bool):
    """(forward, inverse) pairs: identity + Moore shifts, combined with [id, h, id, v] flips as the
    published code combines them (the inverses applied in the forward order)."""
    pairs = [(lambda x: x, lambda x: x)]
    for d in distances:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy, dx) != (0, 0):
                    pairs.append((lambda x, s=(d * dy, d * dx): torch.roll(x, s, (-2, -1)),
                                  lambda x, s=(-d * dy, -d * dx): torch.roll(x, s, (-2, -1))))
    if not with_flips:
        return pairs
    ident = lambda x: x  # noqa: E731
    flip_h = lambda x: torch.flip(x, (-1,))  # noqa: E731
    flip_v = lambda x: torch.flip(x, (-2,))  # noqa: E731
    flip_set = [(ident, ident), (flip_h, flip_h), (ident, ident), (flip_v, flip_v)]
    return [(lambda x, a=f1, b=f2: b(a(x)), lambda x, a=i1, b=i2: b(a(x)))
            for f1, i1 in pairs for f2, i2 in flip_set]


@torch.no_grad()
def reference_published(model, image: np.ndarray, stride: int, distances, with_flips: bool) -> torch.Tensor:
    x = image_to_tensor(image)
    H, W = x.shape[-2:]
    total = 0
    pairs = reference_transforms(distances, with_flips)
    for forward, inverse in pairs:
        feats = reference_patch_features(model, forward(x), stride)[None]
        full = F.interpolate(feats, size=(H, W), mode="nearest-exact")
        total = total + inverse(full)
    return total[0] / len(pairs)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=0)


# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("registers,stride,size", [
    (True, 14, (45, 59)), (True, 7, (45, 59)), (True, 4, (45, 59)),  # odd sizes, the paper's registers layout
    (False, 14, (56, 56)), (False, 4, (56, 56)),  # square, grid = table at 14 (table used unchanged)
    (False, 7, (31, 17)), (True, 4, (17, 29)),  # tiny, odd, no shifts
])
def test_published_geometry_matches_plain_reimplementation(registers, stride, size):
    bb = small_vit(registers)
    H, W = size
    image = np.random.default_rng(stride + H).random((H, W, 3)).astype(np.float32)
    distances = (1,) if min(size) > 20 else ()
    transforms = product(shifts(distances, "moore"), flips("published"), composition="published")
    got = HighResFeaturizer(bb, stride=stride, transforms=transforms, geometry="published", batch_size=8)(image)
    ref = reference_published(bb.model, image, stride, distances, with_flips=True)
    assert got.features.shape == ref.shape == (48, H, W)
    cos = cosines(got.features, ref)
    assert float(cos.median()) >= 0.9999 and float(cos.min()) >= 0.999, (float(cos.median()), float(cos.min()))
    assert got.info["geometry"] == "published"
    assert got.info["grid"] == (1 + (H - P) // stride, 1 + (W - P) // stride)
    assert got.attention is not None and got.attention.shape == (3, H, W)


def test_hrdv2_geometry_differs_from_published_below_patch_stride():
    """Not a tautology: at S < P the two geometries put features in different places."""
    bb = small_vit(False)
    image = np.random.default_rng(3).random((45, 59, 3)).astype(np.float32)
    ref = reference_published(bb.model, image, 4, (), with_flips=False)
    ours = HighResFeaturizer(bb, stride=4, transforms=[Identity()])(image).features
    assert float(cosines(ours, ref).median()) < 0.999


def cubic_resample(values: torch.Tensor, positions: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """1-D cubic convolution (Keys, a = -0.75 as torch uses) of ``values`` at real ``positions``,
    neighbours clamped at the border: an explicit formula, independent of F.interpolate."""
    def kernel(d: torch.Tensor) -> torch.Tensor:
        d = d.abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))

    base = torch.floor(positions)
    out = torch.zeros(len(positions), *values.shape[1:], dtype=torch.float64)
    for k in (-1, 0, 1, 2):
        idx = (base + k).clamp(0, len(values) - 1).long()
        w = kernel(positions - (base + k))
        out += w.view(-1, *([1] * (values.dim() - 1))) * values[idx].double()
    return out


def test_published_positions_sample_at_offset_scale():
    """The published table resize samples at (i + 0.5) n / (g + 0.1) - 0.5 (scale factor
    (g + 0.1) / n used as given), checked against explicit cubic convolution at those positions."""
    n, (gh, gw) = 8, (5, 3)
    table = torch.randn(1, n * n, 2, generator=torch.Generator().manual_seed(0))
    out = interpolate_patch_positions(table, (gh, gw), (100, 61)).reshape(gh, gw, 2).double()
    rows = (torch.arange(gh, dtype=torch.float64) + 0.5) * n / (gh + 0.1) - 0.5
    cols = (torch.arange(gw, dtype=torch.float64) + 0.5) * n / (gw + 0.1) - 0.5
    grid = table.reshape(n, n, 2)
    expected = cubic_resample(cubic_resample(grid, rows).transpose(0, 1), cols).transpose(0, 1)
    assert torch.allclose(out, expected, atol=1e-4)
    # the size-based positions (timm's, without the 0.1) give other values
    naive = (torch.arange(gh, dtype=torch.float64) + 0.5) * n / gh - 0.5
    other = cubic_resample(cubic_resample(grid, naive).transpose(0, 1), cols).transpose(0, 1)
    assert (other - out).abs().max() > 0.05
    # grid as large as the table and a square image: the table is used unchanged
    assert torch.equal(interpolate_patch_positions(table, (n, n), (112, 112)), table)
    assert not torch.equal(interpolate_patch_positions(table, (n, n), (112, 113)), table)


def test_published_grid_and_nearest_exact_cells():
    geo = PublishedGeometry(45, 59, P, 4)
    assert geo.grid == (8, 12) and geo.padded == (45, 59) and geo.pads() == (0, 0, 0, 0)
    rows = geo.cell_of(torch.arange(45), axis=0)
    cols = geo.cell_of(torch.arange(59), axis=1)
    expected_rows = F.interpolate(torch.arange(8.0).view(1, 1, 8, 1), size=(45, 1), mode="nearest-exact").view(-1)
    assert torch.equal(rows, expected_rows.long())
    assert rows.min() == 0 and rows.max() == 7 and cols.max() == 11
    assert torch.all(rows[1:] >= rows[:-1])
    assert isinstance(make_geometry("hrdv2", 45, 59, P, 4), PatchGeometry)
    with pytest.raises(ConfigError, match="geometry 'hrdv2'"):
        PublishedGeometry(10, 59, P, 4)
    with pytest.raises(ConfigError, match="unknown"):
        make_geometry("paper", 45, 59, P, 4)
    with pytest.raises(ConfigError, match="geometry"):
        HighResFeaturizer(small_vit(False), geometry="nope")


def test_published_flip_set_and_composition():
    assert [t.name for t in flips("published")] == ["identity", "flip_h", "identity", "flip_v"]
    assert len(flips()) == 4 and flips()[3].name == "flip_h+flip_v"
    with pytest.raises(ConfigError, match="flip set"):
        flips("paper")
    exact = product([Shift(0, 2)], [Flip("h")])[0]
    published = product([Shift(0, 2)], [Flip("h")], composition="published")[0]
    assert isinstance(exact, Compose) and isinstance(published, PublishedCompose)
    _, tx_exact = coordinate_map(exact, 6, 10)
    _, tx_pub = coordinate_map(published, 6, 10)
    # the exact inverse brings column x back to x; the published one lands 2 * 2 px away (mod W)
    x = torch.arange(10)
    fwd_exact = torch.flip(torch.roll(x, 2), (0,))
    assert torch.equal(fwd_exact[tx_exact[0]], x)
    assert torch.equal(fwd_exact[tx_pub[0]], torch.roll(x, -4)) or torch.equal(fwd_exact[tx_pub[0]], torch.roll(x, 4))
    # a shift followed by a vertical flip is exact along x in both (the axes commute)
    _, tx_v = coordinate_map(product([Shift(0, 2)], [Flip("v")], composition="published")[0], 6, 10)
    _, tx_v_exact = coordinate_map(product([Shift(0, 2)], [Flip("v")])[0], 6, 10)
    assert torch.equal(tx_v, tx_v_exact)
