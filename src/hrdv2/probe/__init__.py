"""Interactive-segmentation probe of feature upsamplers (iSegProbe-style).

``upsamplers`` (protocol + registry), ``clicks`` (click simulator), ``click_segmenter``
(training-free segmenter), ``runner`` (dataset x upsamplers -> CSV + plot), ``head``
(optional trained click head, torch). Metrics live in ``hrdv2.metrics.clicks``, dataset
readers in ``hrdv2.datasets.interactive``.
"""

from hrdv2.probe.click_segmenter import ClickSegmenter, SegmenterConfig
from hrdv2.probe.clicks import Click, ClickRun, iou, next_click, simulate
from hrdv2.probe.runner import ProbeConfig, ProbeResult, run_probe
from hrdv2.probe.upsamplers import (
    Upsampler,
    UpsamplerUnavailableError,
    create_upsampler,
    list_upsamplers,
    register_upsampler,
)

__all__ = [
    "Click", "ClickRun", "ClickSegmenter", "ProbeConfig", "ProbeResult", "SegmenterConfig", "Upsampler",
    "UpsamplerUnavailableError", "create_upsampler", "iou", "list_upsamplers", "next_click", "register_upsampler",
    "run_probe", "simulate",
]
