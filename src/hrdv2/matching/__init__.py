"""Keypoint matching and small-object retrieval with dense features (``hrdv2 match``).

    from hrdv2.matching import match_images, pck
    result = match_images(source, target, [(40, 12), (8, 30)], upsampler="hrdv2", backbone=backbone)
    result.matches      # (N, 2) x, y in the target
    result.maps         # (N, Ht, Wt) cosine similarity of each query to every target pixel
"""

from hrdv2.matching.core import MatchResult, check_points, match_features, match_images, pck, standardise_pair
from hrdv2.matching.features import ALIASES, DenseFeatures, resolve_upsampler_name
from hrdv2.matching.points import parse_points, read_pairs_csv, read_points_csv

__all__ = ["ALIASES", "DenseFeatures", "MatchResult", "check_points", "match_features", "match_images", "parse_points",
           "pck", "read_pairs_csv", "read_points_csv", "resolve_upsampler_name", "standardise_pair"]
