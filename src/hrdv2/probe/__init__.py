"""Interactive-segmentation probe of feature upsamplers (iSegProbe-style).

``upsamplers`` (protocol + registry), ``clicks`` (click simulator), ``click_segmenter``
(training-free segmenter), ``runner`` (dataset x upsamplers -> CSV + plot), ``head`` (the
trained click head and its checkpoints), ``training`` (iterative-click training, NFL),
``feature_cache`` (frozen features on disk), ``lift`` / ``jbu`` / ``learned_upsamplers``
(LiFT and FeatUp's JBU on the probe backbone's features), ``lift_train`` (LiFT's
self-supervised training), ``diagnostics`` (feature and per-click pictures), ``compare``
(curves of several runs in one plot). Metrics live in ``hrdv2.metrics.clicks``, dataset
readers in ``hrdv2.datasets.interactive``.
"""

from hrdv2.probe.click_segmenter import ClickSegmenter, SegmenterConfig
from hrdv2.probe.clicks import Click, ClickRun, iou, next_click, simulate
from hrdv2.probe.head import ClickHead, HeadSegmenter, load_head, save_head
from hrdv2.probe.runner import ProbeConfig, ProbeResult, run_probe
from hrdv2.probe.upsamplers import (
    Upsampler,
    UpsamplerUnavailableError,
    create_upsampler,
    list_upsamplers,
    register_upsampler,
)

__all__ = [
    "Click", "ClickHead", "ClickRun", "ClickSegmenter", "HeadSegmenter", "ProbeConfig", "ProbeResult",
    "SegmenterConfig", "Upsampler", "load_head", "save_head",
    "UpsamplerUnavailableError", "create_upsampler", "iou", "list_upsamplers", "next_click", "register_upsampler",
    "run_probe", "simulate",
]
