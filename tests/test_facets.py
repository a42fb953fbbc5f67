"""Facets (token / key / query / value of any block) and CLS signals (softmax attention, the published
code's ``o``), each checked against an explicit computation from the model's own modules, and
their way through the featurizer, the feature config and the command line. Random weights (UNTRAINED)."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from timm.layers import apply_rot_embed_cat

from hrdv2.backbones import ATTENTIONS, FACETS
from hrdv2.backbones.rope import strided_rope
from hrdv2.backbones.vit import Backbone
from hrdv2.errors import ConfigError
from hrdv2.features.sets import ATTENTION_SIGNALS, FeatureConfig
from hrdv2.features.sets import FACETS as CONFIG_FACETS
from hrdv2.transforms import Identity
from hrdv2.upsample import HighResFeaturizer


def tiny(name: str) -> Backbone:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True, depth=3)
    with torch.no_grad():  # layer scales of 1e-5 would make every block nearly the identity
        for blk in model.blocks:
            scales = [getattr(blk, "gamma_1", None), getattr(blk, "gamma_2", None),  # EVA
                      getattr(getattr(blk, "ls1", None), "gamma", None), getattr(getattr(blk, "ls2", None), "gamma", None)]
            for p in scales:
                if p is not None:
                    p.fill_(0.5)
    return Backbone(name, model, pretrained=False, weights_source="random")


@pytest.fixture(scope="module", params=["vit_small_patch14_dinov2", "vit_small_patch16_dinov3"])
def bb(request) -> Backbone:
    return tiny(request.param)


def explicit_pass(bb: Backbone, x: torch.Tensor, stride: int):
    """Tokens entering every block and the rotary sin/cos, by hand (timm modules called one by one)."""
    m = bb.model
    t = F.conv2d(x, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=stride).permute(0, 2, 3, 1)
    t, grid = m.patch_embed.norm(t), t.shape[1:3]
    rope = None
    if bb.family == "eva":
        t, _ = m._pos_embed(t)
        rope = strided_rope(m.rope, grid, stride, bb.patch_size, tuple(x.shape[-2:]))
    else:
        t = m._pos_embed(t)
    t = m.norm_pre(t)
    inputs = []
    for blk in m.blocks:
        inputs.append(t)
        t = blk(t) if rope is None else blk(t, rope=rope)
    return inputs, t, rope, grid


def qkv_by_hand(blk, t):
    attn = blk.attn
    B, N, _ = t.shape
    qkv = F.linear(blk.norm1(t), attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v  # no q/k norms in these models


@pytest.mark.parametrize("facet", ["key", "query", "value"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_qkv_facets_match_explicit_projection(bb, facet, layer):
    x, S = torch.randn(1, 3, 48, 64), bb.patch_size // 2
    f, _ = bb.forward_patches(x, S, with_attention=False, facet=facet, layer=layer)
    inputs, _, _, (gh, gw) = explicit_pass(bb, x, S)
    q, k, v = qkv_by_hand(bb.model.blocks[layer], inputs[layer])
    t = {"query": q, "key": k, "value": v}[facet]  # (1, heads, N, d), before any rotary embedding
    npt = bb.num_prefix_tokens
    expected = t.transpose(1, 2).flatten(2)[:, npt:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    assert f.shape[1] == bb.feature_dim(facet, layer)
    torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-5)


def test_token_facet_of_an_inner_block_is_its_normed_output(bb):
    x, S = torch.randn(1, 3, 48, 64), bb.patch_size
    inputs, _, _, (gh, gw) = explicit_pass(bb, x, S)
    f, _ = bb.forward_patches(x, S, with_attention=False, facet="token", layer=1)
    expected = bb.model.norm(inputs[2])[:, bb.num_prefix_tokens:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-5)
    default, _ = bb.forward_patches(x, S, with_attention=False)
    assert not torch.allclose(f, default, atol=1e-3)


@pytest.mark.parametrize("kind", ["softmax", "o"])
def test_cls_signals_match_full_attention_by_hand(bb, kind):
    """softmax: A[cls, j] of A = softmax(q k^T / sqrt(d)); o: (A[cls] V) . v_j per head (published code)."""
    x, S = torch.randn(1, 3, 48, 64), bb.patch_size // 2
    _, att = bb.forward_patches(x, S, attention_kind=kind, facet="key", layer=0)
    inputs, _, rope, (gh, gw) = explicit_pass(bb, x, S)
    npt = bb.num_prefix_tokens
    q, k, v = qkv_by_hand(bb.model.blocks[-1], inputs[-1])
    if rope is not None:
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=True)], 2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=True)], 2)
    A = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # (1, heads, N, N)
    if kind == "softmax":
        expected = A[:, :, 0, npt:]
    else:
        out = A @ v  # every token's attention output, per head
        expected = torch.einsum("bhd,bhnd->bhn", out[:, :, 0], v)[:, :, npt:]
    torch.testing.assert_close(att, expected.reshape(1, -1, gh, gw), rtol=1e-4, atol=1e-5)


def test_featurizer_carries_facet_layer_and_o_signal(bb):
    """One identity transform at stride P on an image of whole patches: HR-Dv2 output is the facet
    map repeated P x P, and the attention is the o signal."""
    P = bb.patch_size
    image = np.random.default_rng(0).random((3 * P, 4 * P, 3)).astype(np.float32)
    fz = HighResFeaturizer(bb, transforms=[Identity()], attention="o", facet="value", layer=1)
    res = fz(image)
    from hrdv2.upsample.highres import image_to_tensor

    f, a = bb.forward_patches(image_to_tensor(image), P, facet="value", layer=1, attention_kind="o")
    up = f[0].repeat_interleave(P, 1).repeat_interleave(P, 2)
    torch.testing.assert_close(res.features, up, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.attention, a[0].repeat_interleave(P, 1).repeat_interleave(P, 2), rtol=1e-5, atol=1e-5)
    assert res.info["facet"] == "value@1" and res.info["attention"] == "o"


def test_bad_facet_layer_and_attention_are_config_errors(bb):
    with pytest.raises(ConfigError, match=r"layer 3 is out of range .*3 blocks.*0\.\.2"):
        HighResFeaturizer(bb, facet="key", layer=3)
    with pytest.raises(ConfigError, match="unknown facet 'keys'"):
        bb.forward_patches(torch.randn(1, 3, 32, 32), facet="keys")
    with pytest.raises(ConfigError, match="unknown attention signal 'max'"):
        HighResFeaturizer(bb, attention="max")


def test_feature_config_signals_and_cache_key():
    assert CONFIG_FACETS == FACETS and ATTENTION_SIGNALS == ATTENTIONS  # one vocabulary, two torch-free copies
    base = FeatureConfig(kind="deep")
    assert base.key() == FeatureConfig(kind="deep", facet="token", layer=None, attention="softmax").key()
    keys = {base.key(), base.replace(facet="key").key(), base.replace(layer=3).key(), base.replace(attention="o").key()}
    assert len(keys) == 4
    assert FeatureConfig.from_dict(base.replace(facet="query", layer=-2).to_dict()).layer == -2
    classical = FeatureConfig()
    assert classical.key() == classical.replace(facet="key").key()  # deep-only fields do not split classical caches
    with pytest.raises(ConfigError, match="unknown facet"):
        FeatureConfig(kind="deep", facet="tokens")
    with pytest.raises(ConfigError, match="unknown attention signal"):
        FeatureConfig(kind="deep", attention="max")


def test_features_cli_facet_layer_and_o_attention(tmp_path):
    from hrdv2.cli.main import cli
    from hrdv2.io import read_image, write_image

    src = tmp_path / "img.png"
    write_image(src, (np.random.default_rng(1).random((42, 56)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["features", str(src), "--weights", "random", "--shifts", "", "--facet", "key",
                                   "--layer", "2", "--attention", "o", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "key of block 2, o attention" in res.output
    feats = np.load(out / "img_features.npy")
    assert feats.shape == (384, 42, 56) and read_image(out / "img_attention.png").shape[:2] == (42, 56)


def test_unsupervised_featurizer_uses_o_signal(bb):
    from hrdv2.cli.unsupervised import describe_setup
    from hrdv2.unsupervised import build_featurizer

    fz = build_featurizer(bb, None, bb.patch_size, (), False, attention="o", facet="key", layer=1)
    assert (fz.attention_kind, fz.facet, fz.layer) == ("o", "key", 1)
    text = describe_setup(fz, {"shifts": (), "flips": False, "max_side": None}, "fast")
    assert "key features of block 1" in text and "o attention" in text
    from hrdv2.unsupervised import UnsupervisedSettings, segment_unsupervised

    image = np.random.default_rng(2).random((40, 44))
    res = segment_unsupervised(image, settings=UnsupervisedSettings(k=4, pca_components=8), featurizer=fz)
    assert res.foreground.shape == res.classes.shape == (40, 44) and res.attention.shape == (40, 44)
