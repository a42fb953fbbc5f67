"""Backbone factory: architectures, strides, CLS attention, and weight loading without network."""

import hashlib
from pathlib import Path

import pytest
import torch

from hrdv2.backbones import build_architecture, list_backbones, load_backbone
from hrdv2.backbones.registry import REGISTRY, resolve
from hrdv2.backbones.weights import download_checkpoint
from hrdv2.errors import ConfigError, WeightsUnavailableError


def official_dinov2_state(model: torch.nn.Module, registers: bool = False) -> dict:
    """The key layout of facebookresearch's dinov2_*_pretrain.pth, built from a timm model."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    if registers:
        reg = state.pop("reg_token")
        pos = state["pos_embed"]
        cls_pos = torch.zeros(1, 1, pos.shape[-1])
        state["cls_token"] = state["cls_token"] - cls_pos[:, 0]
        state["pos_embed"] = torch.cat([cls_pos, pos], dim=1)
        state["register_tokens"] = reg
    return state


def test_every_named_backbone_resolves_and_timm_names_work():
    assert {"dinov2_vits14", "dinov2_vitg14_reg", "dino_vits8", "dino_vitb16"} <= set(list_backbones())
    assert resolve("timm:vit_small_patch16_224.augreg_in21k").timm_name == "vit_small_patch16_224.augreg_in21k"
    with pytest.raises(ConfigError, match="unknown backbone 'dinov3_huge'"):
        resolve("dinov3_huge")


@pytest.mark.parametrize("name,patch,dim", [("dinov2_vits14", 14, 384), ("dinov2_vits14_reg", 14, 384),
                                            ("dino_vits8", 8, 384), ("dino_vits16", 16, 384)])
def test_random_architectures_have_real_shapes(name, patch, dim):
    bb = load_backbone(name, weights="random")
    assert (bb.patch_size, bb.embed_dim, bb.pretrained) == (patch, dim, False)
    assert "UNTRAINED" in bb.describe()
    x = torch.randn(1, 3, 3 * patch + 2, 2 * patch)
    for stride in (patch, patch // 2):
        f, a = bb.forward_patches(x, stride)
        gh, gw = 1 + (x.shape[2] - patch) // stride, 1 + (x.shape[3] - patch) // stride
        assert f.shape == (1, dim, gh, gw) and a.shape == (1, bb.num_heads, gh, gw)


def test_stride_patch_equals_timm_forward(tiny_backbone):
    x = torch.randn(2, 3, 56, 70)
    ref = tiny_backbone.model.forward_features(x)[:, 1:].reshape(2, 4, 5, -1).permute(0, 3, 1, 2)
    f, _ = tiny_backbone.forward_patches(x)
    torch.testing.assert_close(f, ref, rtol=0, atol=1e-5)


def test_cls_attention_matches_explicit_attention(tiny_backbone):
    """The hook's CLS row equals softmax(q k^T / sqrt(d)) computed by hand from the last block."""
    m = tiny_backbone.model
    x = torch.randn(1, 3, 42, 56)
    _, att = tiny_backbone.forward_patches(x)
    with torch.no_grad():
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for blk in m.blocks[:-1]:
            t = blk(t)
        blk = m.blocks[-1]
        qkv = blk.attn.qkv(blk.norm1(t)).reshape(1, t.shape[1], 3, blk.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        full = (q @ k.transpose(-1, -2) * blk.attn.scale).softmax(-1)  # (1, heads, N, N)
    expected = full[0, :, 0, 1:].reshape(-1, 3, 4)
    torch.testing.assert_close(att[0], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(att.sum((2, 3)) + full[0, :, 0, :1].T, torch.ones(1, blk.attn.num_heads), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stride", [0, 15])
def test_stride_out_of_range_is_refused(tiny_backbone, stride):
    with pytest.raises(ConfigError, match="1 <= stride <= patch size 14"):
        tiny_backbone.forward_patches(torch.randn(1, 3, 28, 28), stride)


@pytest.mark.parametrize("registers", [False, True])
def test_local_official_checkpoint_loads(tmp_path, registers):
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    torch.manual_seed(1)
    src = build_architecture(REGISTRY[name])
    path = tmp_path / "my_dinov2.pth"
    torch.save(official_dinov2_state(src, registers), path)
    bb = load_backbone(name, weights=path)
    assert bb.pretrained and str(path) in bb.describe()
    x = torch.randn(1, 3, 28, 42)
    ref = src.forward_features(x)[:, src.num_prefix_tokens:]
    got, _ = bb.forward_patches(x)
    torch.testing.assert_close(got.flatten(2).transpose(1, 2), ref, atol=1e-5, rtol=0)


def test_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    src = build_architecture(REGISTRY["dino_vits16"])
    path = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    assert load_backbone("dino_vits16", weights=path).pretrained


def test_official_filename_with_wrong_hash_is_refused(tmp_path):
    src = build_architecture(REGISTRY["dinov2_vits14"])
    path = tmp_path / "dinov2_vits14_pretrain.pth"  # claims to be the official release
    torch.save(official_dinov2_state(src), path)
    with pytest.raises(WeightsUnavailableError, match="does not match the published b938bf1b"):
        load_backbone("dinov2_vits14", weights=path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_backbone("dinov2_vits14", weights=path, sha256=digest).pretrained  # explicit digest wins


def test_checkpoint_of_another_size_is_refused_with_shapes(tmp_path):
    path = tmp_path / "vitb.pth"
    torch.save(official_dinov2_state(build_architecture(REGISTRY["dinov2_vitb14"])), path)
    with pytest.raises(WeightsUnavailableError, match=r"does not fit dinov2_vits14: .*shape mismatches.*768"):
        load_backbone("dinov2_vits14", weights=path)


def test_garbage_and_missing_files_are_refused(tmp_path):
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="junk.pth: cannot be read"):
        load_backbone("dinov2_vits14", weights=bad)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_backbone("dinov2_vits14", weights=tmp_path / "nope.pth")


def test_offline_download_failure_says_how_to_supply_weights(tmp_path, monkeypatch):
    """No network is touched: the download function is replaced by one that fails like an offline machine."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "fresh-hub"))  # cache folder not there yet

    def offline(url, dst, progress=True):
        assert Path(dst).parent.is_dir(), "the cache folder must exist before downloading into it"
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("dinov2_vits14")
    msg = str(err.value)
    assert "dinov2_vits14_pretrain.pth" in msg and "--weights" in msg and "classical" in msg


def test_cached_official_file_is_used_and_checksummed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cache = Path(tmp_path) / "checkpoints"
    cache.mkdir()
    torch.save(official_dinov2_state(build_architecture(REGISTRY["dinov2_vits14"])), cache / "dinov2_vits14_pretrain.pth")
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        download_checkpoint(REGISTRY["dinov2_vits14"])
