"""The feature engine: the one owner of featurisation (see :mod:`hrdv2.engine.core`)."""

from hrdv2.engine.core import BackboneCache, FeatureEngine, check_image, compute_features, transform_set

__all__ = ["BackboneCache", "FeatureEngine", "check_image", "compute_features", "transform_set"]
