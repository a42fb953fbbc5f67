"""From patch-resolution ViT features to per-pixel features: HR-Dv2 and baseline upsamplers."""

from hrdv2.upsample.baselines import MODES, upsample_baseline
from hrdv2.upsample.geometry import PatchGeometry
from hrdv2.upsample.highres import HighResFeaturizer, image_to_tensor, parse_dtype, plan_transforms
from hrdv2.upsample.result import HighResResult

__all__ = ["HighResFeaturizer", "HighResResult", "MODES", "PatchGeometry", "image_to_tensor", "parse_dtype",
           "plan_transforms", "upsample_baseline"]
