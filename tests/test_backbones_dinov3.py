"""DINOv3 and other EVA-style (rotary-position) ViTs: strides, true rotary positions, CLS attention,
and the official / timm checkpoint layouts. Random weights (UNTRAINED) throughout."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat

from hrdv2.backbones import REGISTRY, load_backbone
from hrdv2.backbones.registry import resolve
from hrdv2.backbones.rope import strided_rope
from hrdv2.backbones.vit import Backbone
from hrdv2.backbones.weights import load_into
from hrdv2.errors import ConfigError, WeightsUnavailableError


def tiny(name: str, **kw) -> Backbone:
    """A shallow random instance of a real timm architecture (same block types, fewer blocks)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
    return Backbone(name, model, pretrained=False, weights_source="random")


@pytest.fixture(scope="module")
def dinov3_s():
    return load_backbone("dinov3_vits16", weights="random")


def test_dinov3_names_map_to_timm_models():
    expected = {"dinov3_vits16": "vit_small_patch16_dinov3", "dinov3_vits16plus": "vit_small_plus_patch16_dinov3",
                "dinov3_vitb16": "vit_base_patch16_dinov3", "dinov3_vitl16": "vit_large_patch16_dinov3"}
    for name, timm_name in expected.items():
        assert resolve(name).timm_name == timm_name and timm.is_model(timm_name)


@pytest.mark.parametrize("stride", [16, 8, 5])
def test_dinov3_any_stride_shapes_and_attention(dinov3_s, stride):
    x = torch.randn(2, 3, 64, 48)
    f, a = dinov3_s.forward_patches(x, stride)
    gh, gw = 1 + (64 - 16) // stride, 1 + (48 - 16) // stride
    assert f.shape == (2, 384, gh, gw) and a.shape == (2, 6, gh, gw)
    assert torch.isfinite(f).all() and (a > 0).all() and (a.sum((2, 3)) < 1).all()  # CLS + registers hold the rest
    if stride == 16:  # at the patch stride: exactly timm's own forward
        m = dinov3_s.model
        ref = m.forward_features(x)[:, m.num_prefix_tokens:].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(f, ref, rtol=0, atol=1e-5)


def test_eva02_from_timm_name_runs_strided():
    """Crashed before with TypeError in backbones/vit.py."""
    bb = load_backbone("timm:eva02_tiny_patch14_224.mim_in22k", weights="random")
    f, a = bb.forward_patches(torch.randn(1, 3, 42, 56), 7)
    assert f.shape == (1, 192, 5, 7) and a.shape == (1, 3, 5, 7)


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "eva02_tiny_patch14_224", "vit_pe_core_tiny_patch16_384"])
def test_rope_at_patch_stride_is_timms_table(name):
    rope = tiny(name, depth=1).model.rope
    P = 16 if "patch16" in name else 14
    for grid in [(3, 5), (4, 4)]:
        torch.testing.assert_close(strided_rope(rope, grid, P, P, (grid[0] * P, grid[1] * P)),
                                   rope.get_embed(shape=list(grid)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit_small_patch16_dinov3", "eva02_tiny_patch14_224"])
def test_strided_rope_puts_patches_at_their_true_positions(name):
    """At S = P/2 on a g*P image, token 2j starts where stride-P patch j starts: same rotation; token
    2j+1 lies half-way, so its rotation angle is the mean of its neighbours' (e^{2i m} = e^{i a} e^{i b})."""
    rope = tiny(name, depth=1).model.rope
    P, g = (16, 4) if "patch16" in name else (14, 4)
    G = 2 * g - 1
    strided = strided_rope(rope, (G, G), P // 2, P, (g * P, g * P)).view(G, G, -1)
    native = rope.get_embed(shape=[g, g]).view(g, g, -1)
    torch.testing.assert_close(strided[::2, ::2], native, rtol=0, atol=1e-5)

    def phase(e: torch.Tensor) -> torch.Tensor:
        sin, cos = e.chunk(2, -1)
        return torch.complex(cos, sin)

    mid = phase(strided[1::2, ::2])  # rows half-way between native rows j and j+1
    torch.testing.assert_close(mid ** 2, phase(native[:-1]) * phase(native[1:]), rtol=0, atol=1e-4)
    naive = rope.get_embed(shape=[G, G]).view(G, G, -1)  # the model's own table for a G x G grid
    assert not torch.allclose(strided, naive, atol=1e-3)


@pytest.mark.parametrize("stride", [16, 6])
def test_dinov3_cls_attention_matches_explicit_recomputation(stride):
    """softmax(q_cls k^T / sqrt(d)) from the last block's own qkv, with rotary positions applied to the
    patch tokens only, recomputed here by hand."""
    bb = tiny("vit_small_patch16_dinov3", depth=2)
    m, x = bb.model, torch.randn(1, 3, 48, 64)
    _, att = bb.forward_patches(x, stride)
    with torch.no_grad():
        t = F.conv2d(x, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=stride).permute(0, 2, 3, 1)
        gh, gw = t.shape[1:3]
        t, _ = m._pos_embed(t)
        rope = strided_rope(m.rope, (gh, gw), stride, 16, (48, 64))
        t = m.blocks[0](t, rope=rope)
        blk, npt = m.blocks[1], m.num_prefix_tokens
        qkv = blk.attn.qkv(blk.norm1(t)).reshape(1, t.shape[1], 3, 6, 64).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=True)], 2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=True)], 2)
        full = (q @ k.transpose(-1, -2) / 8.0).softmax(-1)
    torch.testing.assert_close(att[0], full[0, :, 0, npt:].reshape(6, gh, gw), rtol=1e-4, atol=1e-6)


def official_dinov3_state(model: torch.nn.Module, swiglu: bool = False) -> dict:
    """The key layout of facebookresearch/dinov3's *_pretrain_lvd1689m-*.pth, built from a timm model:
    storage_tokens, ls1/ls2.gamma, fused attn.qkv.bias (+ bias_mask), mlp.w1/w2/w3 for SwiGLU,
    mask_token and rope_embed.periods."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        if swiglu:
            k = k.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc2", "mlp.w3")
        out[k] = v.clone()
    dim = model.embed_dim
    for i in range(len(model.blocks)):
        out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * dim)
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = model.rope.periods.clone()
    return out


@pytest.fixture(scope="module")
def other_dinov3_s(dinov3_s):
    """Another random ViT-S/16 DINOv3 (the module fixture's weights, perturbed): saves a second build."""
    src = copy.deepcopy(dinov3_s.model)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return src


@pytest.mark.parametrize("layout", ["official.pth", "timm.safetensors"])
def test_dinov3_checkpoint_layouts_load(tmp_path, dinov3_s, other_dinov3_s, layout):
    src = other_dinov3_s
    path = tmp_path / f"dinov3_s_{layout}"
    if layout == "official.pth":
        torch.save(official_dinov3_state(src), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    bb = load_backbone("dinov3_vits16", weights=path)
    assert bb.pretrained and str(path) in bb.describe()
    x = torch.randn(1, 3, 32, 48)
    got, _ = bb.forward_patches(x)
    ref = src.forward_features(x)[:, src.num_prefix_tokens:]
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=0)
    assert not torch.allclose(got, dinov3_s.forward_patches(x)[0], atol=1e-3)  # really the file's weights


def test_official_dinov3_with_nonzero_qv_bias_is_refused():
    model = tiny("vit_small_patch16_dinov3", depth=1).model
    state = official_dinov3_state(model)
    load_into(model, state, REGISTRY["dinov3_vits16"], "zero-bias.pth")  # all-zero biases: accepted
    state["blocks.0.attn.qkv.bias"][:10] = 0.5
    with pytest.raises(WeightsUnavailableError, match="biased.pth has non-zero query/value biases.*_qkvb"):
        load_into(model, state, REGISTRY["dinov3_vits16"], "biased.pth")


def test_missing_dinov3_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("dinov3_vits16")  # never downloaded: licensed weights come from a local file
    msg = str(err.value)
    assert "dinov3_vits16_pretrain_lvd1689m-08c60483.pth" in msg and "--weights" in msg and "classical" in msg
    assert "\n" not in msg
    with pytest.raises(WeightsUnavailableError, match="does not exist.*DINOv3 licence"):
        load_backbone("dinov3_vitb16", weights=tmp_path / "nope.pth")


def test_unsupported_models_get_one_line_listing_what_is_supported():
    for name in ("timm:resnet50", "timm:beit_base_patch16_224", "dinov3_huge"):
        with pytest.raises(ConfigError) as err:
            resolve(name)
        msg = str(err.value)
        assert "Supported:" in msg and "dinov3_vits16" in msg and "samvit_*" in msg and "\n" not in msg
