"""Class-agnostic (unsupervised) segmentation, saliency and object localisation (HR-Dv2 sec. 3.2).

Per image, no training: HR features + CLS attention -> k-means over-segmentation -> attention
density per cluster (foreground = denser than the mean) -> semantic distance (modal fg-bg
cosine distance) -> complete-linkage merging below factor x that distance -> optional CRF ->
label map, foreground mask, multi-object boxes and the single-object superbox.
"""

from hrdv2.unsupervised.boxes import (
    Boxes,
    component_boxes,
    components,
    largest_component,
    mask_box,
    predict_boxes,
    superbox,
)
from hrdv2.unsupervised.clustering import Clusters, distinct_pixels, kmeans_clusters, l2_normalise
from hrdv2.unsupervised.foreground import (
    above_mean,
    attention_map,
    cosine_distances,
    foreground_clusters,
    region_densities,
    semantic_distance,
)
from hrdv2.unsupervised.merging import Merged, foreground_classes, merge_clusters, merge_segmentation, relabel_foreground
from hrdv2.unsupervised.pipeline import (
    PRESETS,
    UnsupervisedResult,
    UnsupervisedSettings,
    build_featurizer,
    crf_refine,
    labels_to_probs,
    reduce_features,
    resize_for_processing,
    segment_features,
    segment_unsupervised,
)

__all__ = [
    "Boxes", "Clusters", "Merged", "distinct_pixels", "PRESETS", "UnsupervisedResult", "UnsupervisedSettings",
    "above_mean", "attention_map", "build_featurizer", "component_boxes", "components", "cosine_distances",
    "crf_refine", "foreground_classes", "foreground_clusters", "kmeans_clusters", "l2_normalise", "labels_to_probs",
    "largest_component", "mask_box", "merge_clusters", "merge_segmentation", "predict_boxes", "reduce_features",
    "region_densities", "relabel_foreground", "resize_for_processing", "segment_features", "segment_unsupervised",
    "semantic_distance", "superbox",
]
