"""The compressed-grid classifier: one prediction per distinct (row, column) cell of a deep map."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.segmentation import Segmenter
from hrdv2.segmentation.compressed import compressed_grid, predict_compressed, run_starts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _piecewise(rng: np.random.Generator, row_runs: list[int], col_runs: list[int], f: int = 5) -> np.ndarray:
    cells = rng.random((len(row_runs), len(col_runs), f), dtype=np.float32)
    return np.repeat(np.repeat(cells, row_runs, axis=0), col_runs, axis=1)


def test_runs_and_cells_of_a_constructed_map(rng):
    row_runs, col_runs = [3, 1, 5, 2], [1, 4, 4, 2, 7]
    feats = _piecewise(rng, row_runs, col_runs)
    assert run_starts(feats, 0).tolist() == [0, 3, 4, 9]
    assert run_starts(feats, 1).tolist() == [0, 1, 5, 9, 11]
    cells, row_of, col_of = compressed_grid(feats)
    assert cells.shape == (4, 5, 5)
    np.testing.assert_array_equal(cells[row_of][:, col_of], feats)


def test_a_single_channel_difference_splits_a_run(rng):
    feats = _piecewise(rng, [4], [6])
    feats[2, 5, 3] += 1e-7  # one value of one pixel
    assert run_starts(feats, 0).tolist() == [0, 2, 3]
    assert run_starts(feats, 1).tolist() == [0, 5]


def test_prediction_equals_per_pixel_prediction_and_counts_the_factor(rng):
    feats = _piecewise(rng, [7] * 9, [5, 9] * 4, f=3)
    w = rng.normal(size=(3, 4)).astype(np.float32)

    def predict_rows(rows: np.ndarray) -> np.ndarray:
        return rows @ w

    out, factor = predict_compressed(feats, predict_rows)
    np.testing.assert_allclose(out, feats @ w, rtol=1e-6)
    assert factor == pytest.approx(63 * 56 / (9 * 8))
    noise = rng.random((6, 7, 3), dtype=np.float32)  # no repeats: factor 1, still exact
    out, factor = predict_compressed(noise, predict_rows)
    assert factor == 1.0
    np.testing.assert_allclose(out, noise @ w, rtol=1e-6)


def test_deep_segmenter_predicts_exactly_as_per_pixel_on_hrdv2_features(tiny_backbone, micrograph):
    """Random weights (UNTRAINED): the point is the equality, not the quality."""
    from hrdv2.engine import FeatureEngine

    image, gt = micrograph
    image = image[:98, :112]
    gt = gt[:98, :112]
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=(1,), pattern="neumann", flips=False)
    cfg = engine.config
    feats = engine.features(image)
    cells, _, _ = compressed_grid(feats)
    assert cells.shape[0] * cells.shape[1] * 4 < feats.shape[0] * feats.shape[1]  # really compressed
    scribbles = np.zeros(gt.shape, np.uint8)
    scribbles[::7, ::5] = gt[::7, ::5]
    seg = Segmenter(cfg, classifier="random_forest").fit([image], [scribbles], features=[feats])
    per_pixel = seg.predict_proba_features(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2] + (-1,))
    np.testing.assert_array_equal(seg.predict_proba(image, features=feats), per_pixel)
