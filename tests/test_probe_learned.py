"""LiFT and FeatUp-JBU modules: any (odd) size, the published checkpoint layouts (files saved
here from random init), unavailability without weights, LiFT's self-supervised training, and
the FeatUp hub adapter fed with the probe backbone's own features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrdv2.errors import ConfigError
from hrdv2.probe.jbu import JBUStack
from hrdv2.probe.lift import LiFT
from hrdv2.probe.upsamplers import HubUpsampler, check_available, create_upsampler

# key names of the released checkpoints (LiFT's lift_*.pth; FeatUp's *_jbu_stack_cocostuff.ckpt)
LIFT_KEYS = {"up1.up.weight", "up1.conv_1.double_conv.0.weight", "up1.conv_1.double_conv.4.running_var",
             "outc.weight", "image_convs_1.0.weight", "image_convs_1.4.bias", "image_convs_2.1.running_mean"}
JBU_KEYS = {"up1.range_temp", "up1.range_proj.0.weight", "up1.range_proj.3.weight", "up1.fixup_proj.0.weight",
            "up1.fixup_proj.3.bias", "up1.sigma_spatial", "up4.range_temp", "fixup_proj.1.weight"}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((43, 57, 3)) * 255).astype(np.uint8)  # odd, not patch multiples


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in module.state_dict().items():
            if k.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (1.0 if t.ndim == 0 else 0.0))
    return module.eval()


def test_modules_keep_the_published_key_layout_and_shapes():
    lift = LiFT(16)
    assert LIFT_KEYS <= set(lift.state_dict())
    out = lift.eval()(torch.randn(2, 16, 3, 5), torch.randn(2, 3, 42, 70))
    assert out.shape == (2, 16, 6, 10)
    jbu = JBUStack(8)
    assert JBU_KEYS <= set(jbu.state_dict())
    assert jbu.eval()(torch.randn(1, 8, 3, 4), torch.randn(1, 3, 42, 56)).shape == (1, 8, 48, 64)


@pytest.mark.parametrize("name", ["lift", "featup-jbu"])
def test_learned_upsamplers_need_weights_and_return_chw_at_odd_sizes(name, image, tiny_backbone):
    reason = check_available(create_upsampler(name))
    assert reason and "--upsampler-weights" in reason and "random" in reason
    feats = create_upsampler(name, checkpoint="random")(image, tiny_backbone)
    assert tuple(feats.shape) == (tiny_backbone.embed_dim, 43, 57) and torch.isfinite(feats).all()


def test_lift_loads_a_checkpoint_in_the_published_layout(tmp_path, image, tiny_backbone):
    C = tiny_backbone.embed_dim
    model = _randomised(LiFT(C), seed=3)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "lift.pth")  # DDP-style file
    got = create_upsampler("lift", checkpoint=str(tmp_path / "lift.pth"))(image, tiny_backbone)
    # the same computation by hand: patch grid of the padded image -> LiFT -> bilinear -> crop
    from hrdv2.upsample import PatchGeometry, image_to_tensor

    x = image_to_tensor(image)
    geo = PatchGeometry(43, 57, 14, 14)
    xp = geo.pad(x)
    lowres, _ = tiny_backbone.forward_patches(xp, 14, with_attention=False)
    with torch.no_grad():
        ref = F.interpolate(model(lowres, xp), size=xp.shape[-2:], mode="bilinear", align_corners=False)
    left, _, top, _ = geo.pads()
    assert torch.allclose(got, ref[0, :, top : top + 43, left : left + 57], atol=1e-5)
    rand = create_upsampler("lift", checkpoint="random")(image, tiny_backbone)
    assert not torch.allclose(got, rand)  # the file's weights were used

    torch.save(LiFT(8).state_dict(), tmp_path / "small.pth")
    with pytest.raises(ConfigError, match="8-channel"):
        create_upsampler("lift", checkpoint=str(tmp_path / "small.pth"))(image, tiny_backbone)


def test_jbu_loads_featup_style_checkpoint_with_channel_norm(tmp_path, image, tiny_backbone):
    C = tiny_backbone.embed_dim
    stack = _randomised(JBUStack(C), seed=4)
    norm_w, norm_b = torch.rand(C) + 0.5, torch.randn(C) * 0.1
    state = {f"upsampler.{k}": v for k, v in stack.state_dict().items()}
    state.update({"model.1.norm.weight": norm_w, "model.1.norm.bias": norm_b, "model.0.blocks.0.w": torch.zeros(3)})
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "jbu.ckpt")  # Lightning-style file
    got = create_upsampler("featup-jbu", checkpoint=str(tmp_path / "jbu.ckpt"))(image, tiny_backbone)

    from hrdv2.upsample import PatchGeometry, image_to_tensor

    xp = PatchGeometry(43, 57, 14, 14).pad(image_to_tensor(image))
    lowres, _ = tiny_backbone.forward_patches(xp, 14, with_attention=False)
    normed = F.layer_norm(lowres.permute(0, 2, 3, 1), (C,), norm_w, norm_b).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = F.interpolate(stack(normed, xp), size=xp.shape[-2:], mode="bilinear", align_corners=False)
    left, _, top, _ = PatchGeometry(43, 57, 14, 14).pads()
    assert torch.allclose(got, ref[0, :, top : top + 43, left : left + 57], atol=1e-4)

    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="bad.ckpt"):
        create_upsampler("featup-jbu", checkpoint=str(tmp_path / "bad.ckpt"))(image, tiny_backbone)


def test_featup_hub_adapter_feeds_the_probe_backbone_features(image, tiny_backbone):
    seen = {}

    class FakeJBU(torch.nn.Module):
        def forward(self, lowres, img):
            seen["lowres"], seen["img"] = lowres.clone(), img.shape
            return F.interpolate(lowres, scale_factor=16, mode="bilinear")

    class FakeHub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
            self.upsampler = FakeJBU()

    up = HubUpsampler("mhamilton723/FeatUp", "dinov2", "featup", name="featup")
    up._model = FakeHub()
    feats = up(image, tiny_backbone)
    assert tuple(seen["lowres"].shape) == (1, tiny_backbone.embed_dim, 4, 5)  # ceil(43/14), ceil(57/14)
    assert tuple(feats.shape) == (tiny_backbone.embed_dim, 43, 57)


def test_train_lift_self_supervised_lowers_its_objective_and_resumes(tmp_path, shared_data, tiny_backbone):
    from hrdv2.probe.lift_train import LiftTrainConfig, _batch, _load_images, train_lift

    paths = sorted((shared_data / "horse").glob("horse00[1-4].png"))
    cfg = LiftTrainConfig(steps=8, batch_size=2, lr=3e-3, image_size=28, checkpoint_every=4)
    fixed = _batch(_load_images(paths, 28), 28, 4, np.random.default_rng(5))

    def objective(model):
        low = tiny_backbone.forward_patches(fixed, 14, with_attention=False)[0]
        tgt = tiny_backbone.forward_patches(F.interpolate(fixed, scale_factor=2, mode="bilinear"), 14, False)[0]
        with torch.no_grad():
            return float((1 - F.cosine_similarity(model.eval()(low, fixed), tgt, dim=1)).mean())

    torch.manual_seed(0)
    before = objective(LiFT(tiny_backbone.embed_dim))
    res = train_lift(tiny_backbone, paths, tmp_path, cfg, progress=False)
    assert res.steps_done == 8 and (tmp_path / "lift.pth").exists() and np.all(np.isfinite(res.losses))
    from hrdv2.probe.lift import load_lift_state

    trained = load_lift_state(LiFT(tiny_backbone.embed_dim), tmp_path / "lift.pth")
    assert objective(trained) < before - 0.05
    more = train_lift(tiny_backbone, paths, tmp_path, LiftTrainConfig(**{**cfg.__dict__, "steps": 10}), resume=True,
                      progress=False)
    assert more.steps_done == 10 and more.losses[:8] == res.losses
