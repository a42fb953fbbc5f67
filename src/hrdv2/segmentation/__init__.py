"""Scribble-based (weakly supervised) segmentation: paint a few strokes, train, segment."""

from hrdv2.segmentation.scribbles import simulate_scribbles
from hrdv2.segmentation.segmenter import CLASSIFIERS, Segmenter

__all__ = ["Segmenter", "CLASSIFIERS", "simulate_scribbles"]
