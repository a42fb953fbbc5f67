"""`hrdv2 match`: an image and a shifted / flipped copy of itself must give back the known
correspondences, with classical features and with random-weight deep features at the right
transform set; plus the point parsers, PCK, the tie rule and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hrdv2.cli.main import cli
from hrdv2.errors import ConfigError, ImageReadError
from hrdv2.io import read_image, write_image
from hrdv2.matching import (
    match_features, match_images, parse_points, pck, read_pairs_csv, read_points_csv, resolve_upsampler_name,
)
from hrdv2.matching.core import best_pixel


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def horse(shared_data) -> np.ndarray:
    return read_image(shared_data / "horse" / "horse001.png")


def _grid_points(w: int, h: int, margin: int, n: int = 4) -> np.ndarray:
    xs, ys = np.linspace(margin, w - 1 - margin, n), np.linspace(margin, h - 1 - margin, n)
    return np.array([(x, y) for y in ys for x in xs]).round().astype(int)


def test_classical_features_recover_a_shift_and_a_flip(horse):
    dx, dy = 5, 3
    src = horse[60 + dy:180 + dy, 60 + dx:220 + dx]  # 120 x 160, content shifted by (dx, dy) against tgt
    tgt = horse[60:180, 60:220]
    pts = _grid_points(160 - dx, 120 - dy, 24)  # the widest filters (sigma 16) reach ~24 px in from the borders
    shifted = match_images(src, tgt, pts, upsampler="classical")
    assert shifted.info["standardised"] and "no backbone" in shifted.info["features"]
    assert pck(shifted.matches, pts + [dx, dy], 1) >= 0.9
    flipped = np.ascontiguousarray(src[:, ::-1])
    res = match_images(src, flipped, pts, upsampler="classical")
    assert pck(res.matches, np.stack([159 - pts[:, 0], pts[:, 1]], 1), 1) >= 0.9
    assert res.maps.shape == (len(pts), 120, 160) and np.all(res.maps <= 1 + 1e-5)


def test_random_weight_deep_features_recover_a_shift_by_one_patch(horse, tiny_backbone):
    P = tiny_backbone.patch_size
    src, tgt = horse[40 + P:96 + P, 60 + P:130 + P], horse[40:96, 60:130]  # 56 x 70 px, shifted by one patch
    pts = _grid_points(70 - P, 56 - P, 4)
    res = match_images(src, tgt, pts, upsampler="nearest", backbone=tiny_backbone)
    assert res.info["untrained"] and "UNTRAINED" in res.info["features"]
    # each patch's features are constant over its 14x14 cell: the tie rule answers the cell centre
    assert pck(res.matches, pts + P, P / 2) >= 0.9


def test_flipped_copy_needs_flips_in_the_transform_set(horse, tiny_backbone):
    src = horse[30:86, 60:116]  # 56 x 56: four whole patches per side, so the grid is flip-symmetric
    flipped = np.ascontiguousarray(src[:, ::-1])
    pts = _grid_points(56, 56, 6)
    truth = np.stack([55 - pts[:, 0], pts[:, 1]], 1)
    # HR-Dv2 averaged over {identity, h-flip, v-flip, both} (no shifts, to stay quick) is flip-equivariant
    with_flips = match_images(src, flipped, pts, upsampler="hrdv2-shift-flip", backbone=tiny_backbone,
                              shift_distances=())
    without = match_images(src, flipped, pts, upsampler="nearest", backbone=tiny_backbone)
    assert pck(with_flips.matches, truth, 7) >= 0.9
    assert pck(with_flips.matches, truth, 7) > pck(without.matches, truth, 7) + 0.3


def test_match_features_finds_planted_vectors_and_breaks_ties_at_the_centre():
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(10, 12, 5)).astype(np.float32), rng.normal(size=(9, 11, 5)).astype(np.float32)
    tgt[4, 7] = 3 * src[2, 3]  # same direction: cosine 1
    res = match_features(src, tgt, [(3, 2)])
    assert res.matches.tolist() == [[7, 4]] and res.scores[0] == pytest.approx(1.0, abs=1e-5)
    plateau = np.zeros((20, 20), np.float32)
    plateau[4:11, 10:17] = 1.0  # a 7x7 tie: the centre pixel, not the first in memory order
    assert best_pixel(plateau).tolist() == [13, 7]


def test_pck_and_point_parsers(tmp_path):
    assert pck([[0, 0], [10, 0]], [[3, 4], [10, 0]], 5) == 1.0
    assert pck([[0, 0], [10, 0]], [[3, 4.1], [10, 0]], 5) == 0.5
    assert parse_points("1,2; 3.0,4;").tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ConfigError, match="x,y"):
        parse_points("1,2;3")
    (tmp_path / "p.csv").write_text("x,y\n1,2\n# comment\n5,6\n")
    assert read_points_csv(tmp_path / "p.csv").tolist() == [[1, 2], [5, 6]]
    (tmp_path / "pairs.csv").write_text("1,2,3,4\n5,6,7,8\n")
    s, t = read_pairs_csv(tmp_path / "pairs.csv")
    assert s.tolist() == [[1, 2], [5, 6]] and t.tolist() == [[3, 4], [7, 8]]
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(ImageReadError, match="row 1 has 3 values"):
        read_pairs_csv(tmp_path / "bad.csv")
    assert resolve_upsampler_name("jbu") == "joint-bilateral" and resolve_upsampler_name("stride") == "stride-only"
    with pytest.raises(ConfigError, match="unknown upsampler"):
        resolve_upsampler_name("magic")


def test_cli_writes_pictures_csv_and_pck(horse, tmp_path):
    write_image(tmp_path / "a.png", np.ascontiguousarray(horse[66:186, 66:226]))
    write_image(tmp_path / "b.png", np.ascontiguousarray(horse[60:180, 60:220]))
    pairs = "x_source,y_source,x_target,y_target\n" + "".join(f"{x},{y},{x + 6},{y + 6}\n" for x, y in
                                                              _grid_points(154, 114, 24, 3))
    (tmp_path / "pairs.csv").write_text(pairs)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["match", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--pairs",
                                   str(tmp_path / "pairs.csv"), "--features", "classical", "--threshold", "2",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "PCK@2px = " in res.output and "classical (hand-crafted filters" in res.output
    picture = read_image(out / "a_to_b_matches.png")
    assert picture.ndim == 3 and picture.shape[1] > 2 * picture.shape[0]  # source | target side by side
    assert len(list(out.glob("a_to_b_similarity_q*.png"))) == 9
    rows = (out / "a_to_b_matches.csv").read_text().splitlines()
    assert rows[0].startswith("query,x_source") and len(rows) == 10
    correct = sum(r.endswith(",1") for r in rows[1:])
    summary = json.loads((out / "a_to_b_match.json").read_text())
    assert correct >= 8 and summary["pck"] == pytest.approx(correct / 9) and summary["untrained"] is False


def test_cli_states_random_weights_and_refuses_bad_points(horse, tmp_path):
    write_image(tmp_path / "a.png", np.ascontiguousarray(horse[:42, :56]))
    runner = CliRunner()
    res = runner.invoke(cli, ["match", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--points", "5,5;30,20",
                              "--upsampler", "nearest", "--stride", "7", "--weights", "random", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "random weights, UNTRAINED" in res.output and "say nothing about the quality" in res.output
    assert "nearest (stride=7) on dinov2_vits14" in res.output
    assert (tmp_path / "o" / "a_to_a_similarity_q1.png").is_file()
    bad = runner.invoke(cli, ["match", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--points", "60,5",
                              "--features", "classical", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "outside the source image" in bad.output and "Traceback" not in bad.output


def test_features_are_cached_once_per_image(horse, tmp_path):
    from hrdv2.matching import DenseFeatures

    image = np.ascontiguousarray(horse[:40, :48])
    dense = DenseFeatures("classical", cache_dir=tmp_path / "cache")
    first = np.array(dense(image))
    assert len(list((tmp_path / "cache").glob("up-classical-*/*.npy"))) == 1

    def refuse(*_args):
        raise AssertionError("featurised again instead of reading the cache")

    dense.upsampler = refuse
    assert np.array_equal(np.asarray(dense(image)), first)
    with pytest.raises(AssertionError, match="featurised again"):
        dense(np.ascontiguousarray(horse[1:41, :48]))  # another image misses
