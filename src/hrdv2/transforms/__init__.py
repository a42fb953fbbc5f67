"""Invertible transforms and the transform sets HR-Dv2 averages over."""

from hrdv2.transforms.base import Compose, Flip, Identity, PublishedCompose, Rot90, Shift, Transform, coordinate_map
from hrdv2.transforms.sets import (
    FLIP_SETS, default_transforms, flips, product, rotations, shifts, validate_shifts,
)

__all__ = [
    "Compose", "FLIP_SETS", "Flip", "Identity", "PublishedCompose", "Rot90", "Shift", "Transform", "coordinate_map",
    "default_transforms", "flips", "product", "rotations", "shifts", "validate_shifts",
]
