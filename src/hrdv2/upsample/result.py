"""What every upsampler returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HighResResult:
    """Dense features (C, H, W) and CLS attention (heads, H, W), float32, on the image's pixels.

    HR-Dv2 results are (C, H, W) *views* of channels-last (H, W, C) storage (that layout makes
    the featurizer fast, and per-pixel classifiers want (H, W, C) anyway): use ``features_hwc``
    for a free (H, W, C) array, or ``.contiguous()`` before ``.view``.
    """

    features: torch.Tensor
    attention: torch.Tensor | None
    info: dict = field(default_factory=dict)  # backbone, stride, transforms, seconds, untrained flag...

    @property
    def features_hwc(self) -> torch.Tensor:
        return self.features.permute(1, 2, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[-2:])

    def mean_attention(self) -> torch.Tensor | None:
        return None if self.attention is None else self.attention.mean(0)
