"""Each step of the unsupervised workflow on a constructed scene whose answer is known.

Scene (48 x 48): background, a second background region C, and two foreground objects A
(small) and B (large). Features are noisy copies of one unit vector per region, chosen so that
cos-distances are: A-B 0.28, bg-C 0.40, A-bg = B-bg = B-C = 1.00, A-C 1.48. The attention is
high on A and B only. So: foreground = A and B; semantic distance = 1.00 (3 of the 4 fg-bg
pairs); merging at factor 1 joins A+B and bg+C; at factor 0.2 it joins nothing across regions.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hrdv2.unsupervised import (
    above_mean,
    attention_map,
    component_boxes,
    foreground_clusters,
    kmeans_clusters,
    largest_component,
    merge_clusters,
    merge_segmentation,
    predict_boxes,
    region_densities,
    segment_features,
    semantic_distance,
    superbox,
)
from hrdv2.unsupervised.pipeline import UnsupervisedSettings

H = W = 48
A_BOX = (4, 5, 16, 15)  # x0, y0, x1, y1 (x1/y1 exclusive)
B_BOX = (26, 28, 44, 43)
C_BOX = (28, 4, 44, 16)
E = np.eye(8)
VEC = {
    "bg": E[0],
    "C": 0.6 * E[0] + 0.8 * E[1],
    "A": 0.8 * E[2] - 0.6 * E[1],
    "B": 0.9 * E[2] + np.sqrt(1 - 0.81) * E[3],
}


def _region_map() -> np.ndarray:
    """0 = bg, 1 = C, 2 = A, 3 = B."""
    r = np.zeros((H, W), dtype=np.int32)
    for rid, (x0, y0, x1, y1) in ((1, C_BOX), (2, A_BOX), (3, B_BOX)):
        r[y0:y1, x0:x1] = rid
    return r


def _scene(rng: np.random.Generator, noise: float = 0.02):
    regions = _region_map()
    means = np.stack([VEC["bg"], VEC["C"], VEC["A"], VEC["B"]])  # (4, 8)
    feats = means[regions].transpose(2, 0, 1) + noise * rng.standard_normal((8, H, W))
    attn = np.where(np.isin(regions, [2, 3]), 1.0, 0.1)[None] + 0.01 * rng.standard_normal((3, H, W))
    return feats.astype(np.float32), attn.astype(np.float32), regions


def _true_cos(a: str, b: str) -> float:
    return 1.0 - float(VEC[a] @ VEC[b])


def test_scene_geometry_is_as_documented():
    assert _true_cos("A", "B") == pytest.approx(0.28)
    assert _true_cos("bg", "C") == pytest.approx(0.40)
    for a, b in (("A", "bg"), ("B", "bg"), ("B", "C")):
        assert _true_cos(a, b) == pytest.approx(1.0)
    assert _true_cos("A", "C") == pytest.approx(1.48)


def test_kmeans_recovers_regions_exactly_with_k_equal_to_region_count(rng):
    feats, _, regions = _scene(rng)
    cl = kmeans_clusters(feats, k=4, seed=0)
    assert cl.labels.shape == (H, W) and cl.centroids.shape == (4, 8)
    # a bijection between clusters and regions
    pairs = set(zip(cl.labels.ravel().tolist(), regions.ravel().tolist()))
    assert len(pairs) == 4
    assert len({p[0] for p in pairs}) == 4 and len({p[1] for p in pairs}) == 4


def test_kmeans_overclustering_is_pure_and_seeded(rng):
    feats, _, regions = _scene(rng)
    a = kmeans_clusters(feats, k=12, n_samples=1000, seed=3)
    b = kmeans_clusters(feats, k=12, n_samples=1000, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    for c in range(a.n_clusters):
        assert np.unique(regions[a.labels == c]).size == 1, "a k-means cluster straddles two regions"
    # ids are contiguous and every id is used
    assert set(np.unique(a.labels)) == set(range(a.n_clusters))


def test_k_larger_than_pixel_count_is_lowered_with_a_warning(rng):
    feats = rng.standard_normal((8, 3, 3)).astype(np.float32)
    with pytest.warns(UserWarning, match="k=80"):
        cl = kmeans_clusters(feats, k=80)
    assert cl.k_used == 9 and cl.labels.shape == (3, 3)


def test_single_colour_features_give_one_cluster():
    feats = np.ones((8, 10, 10), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl = kmeans_clusters(feats, k=5)
    assert cl.n_clusters == 1 and np.all(cl.labels == 0)


def test_attention_map_mean_or_head(rng):
    attn = rng.random((6, 5, 7))
    np.testing.assert_allclose(attention_map(attn), attn.mean(0))
    np.testing.assert_allclose(attention_map(attn, head=2), attn[2])
    with pytest.raises(ValueError, match="head=6"):
        attention_map(attn, head=6)


def test_region_densities_are_sum_over_area():
    labels = np.array([[0, 0, 1], [0, 2, 1]])
    attn = np.array([[1.0, 3.0, 4.0], [2.0, 5.0, 6.0]])
    np.testing.assert_allclose(region_densities(labels, attn), [2.0, 5.0, 5.0])
    assert above_mean(np.array([2.0, 5.0, 5.0])).tolist() == [False, True, True]


def test_all_equal_densities_mean_no_foreground():
    assert not above_mean(np.full(7, 0.3)).any()
    assert not above_mean(np.array([np.nan, 1.0, 1.0])).any()


def test_foreground_is_exactly_the_attended_objects(rng):
    feats, attn, regions = _scene(rng)
    cl = kmeans_clusters(feats, k=12, n_samples=2000)
    is_fg, dens = foreground_clusters(cl.labels, attention_map(attn), cl.n_clusters)
    assert dens.shape == (cl.n_clusters,)
    fg_pixels = is_fg[cl.labels]
    np.testing.assert_array_equal(fg_pixels, np.isin(regions, [2, 3]))


def test_semantic_distance_is_the_modal_fg_bg_distance(rng):
    feats, attn, _ = _scene(rng)
    cl = kmeans_clusters(feats, k=12, n_samples=2000)
    is_fg, _ = foreground_clusters(cl.labels, attention_map(attn), cl.n_clusters)
    assert semantic_distance(cl.centroids, is_fg) == pytest.approx(1.0, abs=0.02)


def test_semantic_distance_exact_on_handmade_centroids():
    # fg = [e0], bg = [e0, e0, -e0 (dist 2), e1 (dist 1)] -> distances 0, 0, 2, 1: mode 0
    cents = np.stack([E[0], E[0], E[0], -E[0], E[1]])
    fg = np.array([True, False, False, False, False])
    assert semantic_distance(cents, fg) == pytest.approx(0.0, abs=1e-9)
    # nothing to compare: NaN, not an exception
    assert np.isnan(semantic_distance(cents, np.zeros(5, bool)))


def test_merge_clusters_complete_linkage_threshold():
    cents = np.stack([VEC["bg"], VEC["C"], VEC["A"], VEC["B"]])
    ids = merge_clusters(cents, 1.0)
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert len(set(merge_clusters(cents, 0.3).tolist())) == 3  # only A+B (0.28) merge
    assert len(set(merge_clusters(cents, 0.2).tolist())) == 4
    # complete linkage: a chain e0 -> mid -> e1 does not bridge e0 and e1 at a threshold that
    # only each neighbouring pair satisfies
    mid = (E[0] + E[1]) / np.sqrt(2)
    chain = merge_clusters(np.stack([E[0], mid, E[1]]), 0.35)
    assert len(set(chain.tolist())) == 2
    assert np.isnan(semantic_distance(cents, np.zeros(4, bool)))
    assert merge_clusters(cents, float("nan")).tolist() == [0, 1, 2, 3]


def test_merge_segmentation_gives_one_object_class(rng):
    feats, attn, regions = _scene(rng)
    cl = kmeans_clusters(feats, k=12, n_samples=2000)
    a = attention_map(attn)
    is_fg, _ = foreground_clusters(cl.labels, a, cl.n_clusters)
    sem = semantic_distance(cl.centroids, is_fg)
    merged = merge_segmentation(cl.labels, cl.centroids, a, sem, factor=1.0)
    assert merged.n_classes == 2
    assert len(merged.foreground) == 1
    np.testing.assert_array_equal(merged.foreground_mask(), np.isin(regions, [2, 3]))
    # tighter factor: A and B stay apart, bg and C stay apart -> 4 classes, 2 foreground
    tight = merge_segmentation(cl.labels, cl.centroids, a, sem, factor=0.2)
    assert tight.n_classes == 4 and len(tight.foreground) == 2
    for rid in range(4):
        assert np.unique(tight.classes[regions == rid]).size == 1
    with pytest.raises(ValueError, match="merge factor"):
        merge_segmentation(cl.labels, cl.centroids, a, sem, factor=0)


def test_component_boxes_and_min_area():
    m = np.zeros((20, 30), bool)
    m[2:5, 3:9] = True  # 18 px
    m[10:18, 12:27] = True  # 120 px
    m[0, 29] = True  # 1 px speck
    boxes, areas = component_boxes(m, min_area=10)
    assert boxes.tolist() == [[3, 2, 9, 5], [12, 10, 27, 18]]
    assert areas.tolist() == [18, 120]
    assert len(component_boxes(m, min_area=0)[0]) == 3
    np.testing.assert_array_equal(largest_component(m), np.pad(np.ones((8, 15), bool), ((10, 2), (12, 3))))
    assert superbox(m).tolist() == [12, 10, 27, 18]
    assert superbox(np.zeros((4, 4), bool)) is None


def test_diagonal_pixels_are_one_component():
    m = np.eye(6, dtype=bool)
    assert component_boxes(m, min_area=1)[0].tolist() == [[0, 0, 6, 6]]


def test_boxes_one_per_component_and_superbox_dropped_when_duplicate():
    classes = np.ones((H, W), np.int32)
    regions = _region_map()
    classes[np.isin(regions, [2, 3])] = 2
    b = predict_boxes(classes, [2], min_area=10)
    assert sorted(b.boxes.tolist()) == sorted([list(A_BOX), list(B_BOX)])
    assert b.superbox.tolist() == list(B_BOX)  # B is the larger object
    assert not b.is_superbox.any(), "superbox duplicates B's box (IoU 1 > 0.8) and must be dropped"


def test_superbox_kept_when_no_box_overlaps_it_enough():
    classes = np.ones((40, 40), np.int32)
    classes[10:30, 5:20] = 2
    classes[10:30, 20:35] = 3  # touching: one foreground component, two class boxes
    b = predict_boxes(classes, [2, 3], min_area=10)
    assert len(b) == 3
    assert b.boxes[b.is_superbox].tolist() == [[5, 10, 35, 30]]
    assert sorted(b.boxes[~b.is_superbox].tolist()) == [[5, 10, 20, 30], [20, 10, 35, 30]]
    js = b.to_json()
    assert js["superbox"] == [5, 10, 35, 30] and len(js["boxes"]) == 3


def test_box_scores_rank_attended_boxes_higher():
    classes = np.ones((30, 30), np.int32)
    classes[2:10, 2:10] = 2
    classes[15:28, 15:28] = 2
    attn = np.full((30, 30), 0.1)
    attn[2:10, 2:10] = 1.0
    attn[15:28, 15:28] = 0.5
    b = predict_boxes(classes, [2], attn, min_area=5)
    by_box = {tuple(bx): s for bx, s in zip(b.boxes.tolist(), b.scores)}
    assert by_box[(2, 2, 10, 10)] > by_box[(15, 15, 28, 28)] > 1.0


def test_segment_features_end_to_end_on_scene(rng):
    feats, attn, regions = _scene(rng)
    res = segment_features(feats, attn, settings=UnsupervisedSettings(k=12, n_samples=2000, min_area=10))
    np.testing.assert_array_equal(res.foreground, np.isin(regions, [2, 3]))
    assert res.semantic_distance == pytest.approx(1.0, abs=0.02)
    assert sorted(res.boxes.boxes.tolist()) == sorted([list(A_BOX), list(B_BOX)])
    assert res.message is None
    assert {"pca", "kmeans", "foreground", "merging", "boxes"} <= set(res.timings)


def test_segment_features_output_shape_upscales_maps_and_boxes(rng):
    feats, attn, regions = _scene(rng)
    res = segment_features(
        feats, attn, settings=UnsupervisedSettings(k=12, n_samples=2000, min_area=10), output_shape=(96, 96)
    )
    assert res.classes.shape == (96, 96) and res.foreground.shape == (96, 96)
    assert sorted(res.boxes.boxes.tolist()) == sorted([[2 * v for v in A_BOX], [2 * v for v in B_BOX]])


def test_no_foreground_is_a_documented_empty_result(rng):
    feats, _, _ = _scene(rng)
    flat = np.ones((2, H, W), np.float32)
    res = segment_features(feats, flat, settings=UnsupervisedSettings(k=6, n_samples=2000))
    assert not res.foreground.any()
    assert len(res.boxes) == 0 and res.boxes.superbox is None
    assert "no foreground" in res.message
    assert np.isnan(res.semantic_distance)
    assert res.classes.shape == (H, W) and res.classes.min() >= 1


def test_single_colour_image_features_do_not_crash():
    feats = np.ones((16, 20, 20), np.float32)
    attn = np.ones((3, 20, 20), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = segment_features(feats, attn, settings=UnsupervisedSettings(k=80))
    assert res.message and not res.foreground.any()
    assert res.info["k_used"] == 1


def test_shape_mismatch_is_a_clear_error(rng):
    with pytest.raises(ValueError, match="share"):
        segment_features(rng.random((4, 10, 10)), rng.random((2, 9, 10)))
