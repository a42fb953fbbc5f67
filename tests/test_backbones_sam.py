"""SAM image encoders: stride P and S < P (windowed attention on interleaved stride-P sub-grids),
no CLS token (attention refused clearly). Random weights (UNTRAINED)."""

import numpy as np
import pytest
import timm
import torch

from hrdv2.backbones import load_backbone
from hrdv2.backbones.vit import Backbone
from hrdv2.errors import ConfigError
from hrdv2.upsample import HighResFeaturizer


@pytest.fixture(scope="module")
def sam_b():
    return load_backbone("timm:samvit_base_patch16", weights="random")


def tiny_sam(**kw) -> Backbone:
    torch.manual_seed(0)
    args = dict(depth=2, embed_dim=64, num_heads=2, window_size=3, img_size=64, neck_chans=32, global_attn_indexes=())
    model = timm.create_model("samvit_base_patch16", pretrained=False, num_classes=0, **{**args, **kw})
    return Backbone("tiny_sam", model, pretrained=False, weights_source="random")


@pytest.mark.parametrize("stride", [16, 8])
def test_sam_base_shapes(sam_b, stride):
    f, a = sam_b.forward_patches(torch.randn(1, 3, 48, 64), stride, with_attention=False)
    assert f.shape == (1, 256, 1 + 32 // stride, 1 + 48 // stride) and a is None
    assert torch.isfinite(f).all()


def test_sam_refuses_attention_and_strides_that_break_windows(sam_b):
    with pytest.raises(ConfigError, match="no CLS token.*attention=False"):
        sam_b.forward_patches(torch.randn(1, 3, 32, 32), 16, with_attention=True)
    with pytest.raises(ConfigError, match="no CLS token"):
        HighResFeaturizer(sam_b, attention=True)
    with pytest.raises(ConfigError, match=r"windowed attention.*divide the patch size 16.*16, 8, 4, 2, 1; got 6"):
        sam_b.check_stride(6)


def test_sam_featurizer_without_attention():
    res = HighResFeaturizer(tiny_sam(), stride=8, attention=False)(np.random.rand(40, 36))
    assert res.features.shape == (32, 40, 36) and res.attention is None and res.info["transforms"] == 17


def test_windowed_sam_at_half_stride_is_interleaved_stride_p_passes():
    """With only windowed blocks (and the neck's 3x3 conv dilated), stride P/2 features at phase (a, b)
    are exactly the stride-P features of the image shifted by (a, b) * P/2: every window holds
    tokens P px apart, as in training."""
    bb = tiny_sam(use_abs_pos=False)
    x = torch.randn(1, 3, 64, 80)
    f, _ = bb.forward_patches(x, 8, with_attention=False)
    assert f.shape == (1, 32, 7, 9)
    for a in (0, 1):
        for b in (0, 1):
            ref, _ = bb.forward_patches(x[..., 8 * a:, 8 * b:], 16, with_attention=False)
            torch.testing.assert_close(f[:, :, a::2, b::2], ref, rtol=1e-4, atol=1e-5)


def test_sam_with_global_blocks_mixes_phases():
    """A global block sees the whole strided grid, so phases are no longer independent passes."""
    bb = tiny_sam(use_abs_pos=False, global_attn_indexes=(1,))
    x = torch.randn(1, 3, 64, 64)
    f, _ = bb.forward_patches(x, 8, with_attention=False)
    ref, _ = bb.forward_patches(x, 16, with_attention=False)
    assert f.shape[-2:] == (7, 7) and not torch.allclose(f[:, :, ::2, ::2], ref, atol=1e-4)
