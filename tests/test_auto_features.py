"""`features="auto"`: folds that never score a pixel whose stroke is in training, the choice on a
synthetic image where one preset is clearly best, the time budget, and the CLI summary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from click.testing import CliRunner

from hrdv2.errors import ConfigError
from hrdv2.features.auto import GAP, image_folds, stroke_folds
from hrdv2.io import write_image
from hrdv2.metrics.segmentation import mean_iou
from hrdv2.segmentation import Segmenter


def _texture_pair(n: int = 160, seed: int = 0, patch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stripes of period 4 px everywhere, with orientations from the same range [0, 90 deg) on both
    halves: on the left the orientation turns slowly across the image (coherent over tens of px),
    on the right it is random per 16-px patch. Every pixel sees the same kind of local 1-D
    texture, so intensity, blur and the Hessian tell the halves apart only at patch borders; the
    structure tensor integrated over 8-16 px sees coherent against incoherent orientation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    rnd = rng.uniform(0, np.pi / 2, (n // patch + 1, n // patch + 1))
    ang = np.where(xx < n / 2, (np.pi / 2) * xx / (n / 2), rnd[(yy // patch).astype(int), (xx // patch).astype(int)])
    img = (0.5 + 0.2 * np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / 4.0)).astype(np.float32)
    gt = np.where(xx < n / 2, 1, 2).astype(np.uint8)
    scr = np.zeros((n, n), np.uint8)
    for k, y in enumerate(np.linspace(0.12 * n, 0.88 * n, 4).astype(int)):  # 4 strokes per class, off the border
        scr[y : y + 3, n // 10 + (k % 2) * n // 16 : n * 11 // 32] = 1
        scr[y : y + 3, n - n * 11 // 32 : n - n // 10 - (k % 2) * n // 16] = 2
    return img, scr, gt


def test_stroke_folds_hold_out_whole_strokes():
    scr = np.zeros((60, 60), np.uint8)
    scr[5:8, 5:30] = 1
    scr[20:23, 5:30] = 1
    scr[40:43, 5:30] = 1
    scr[5:50, 45:48] = 2  # one stroke: cut in two with a gap
    folds = stroke_folds([scr])
    assert len(folds) == 3
    for (roles,) in folds:
        lab, _ = ndi.label(scr == 1)
        for comp in range(1, lab.max() + 1):  # a class-1 stroke is wholly train or wholly held out
            assert len(np.unique(roles[lab == comp])) == 1
        held2, train2 = (roles == 2) & (scr == 2), (roles == 1) & (scr == 2)
        assert held2.any() and train2.any()
        gap = ndi.distance_transform_edt(~train2)[held2].min()  # no held-out pixel next to its stroke's training half
        assert gap >= GAP
        assert set(np.unique(roles[scr == 1])) <= {1, 2} and (roles[scr == 0] == 0).all()


def test_image_folds_need_every_class_in_training():
    a = np.zeros((10, 10), np.uint8)
    a[1, 1:5], a[5, 1:5] = 1, 2
    b = a.copy()
    assert len(image_folds([a, b])) == 2
    c = a.copy()
    c[c == 2] = 0  # class 2 only in image a: holding a out leaves no class-2 training pixel
    assert image_folds([a, c]) is None
    assert image_folds([a]) is None


def test_auto_picks_the_structure_tensor_where_only_orientation_coherence_differs():
    img, scr, gt = _texture_pair()
    seg = Segmenter("auto", auto_budget_s=120).fit([img], [scr])
    choice = seg.auto_choice_
    assert choice.label == "default+structure", choice.scores
    assert "structure" in seg.features.filters and seg.features.kind == "classical"
    # candidates with the structure tensor score clearly above all others; the reported score is the choice's
    assert choice.cv_miou == choice.scores[f"{choice.label}/{choice.classifier}"]
    with_st = max(v for k, v in choice.scores.items() if "structure" in k)
    assert with_st > max(v for k, v in choice.scores.items() if "structure" not in k) + 0.08
    assert mean_iou(seg.predict(img), gt) > 0.75
    assert "auto='default+structure'" in repr(seg) and "cv_miou=" in repr(seg)


def test_budget_stops_after_the_first_candidate_and_model_round_trips(tmp_path):
    img, scr, _ = _texture_pair(96, seed=1)
    seg = Segmenter("auto", auto_budget_s=0).fit([img], [scr])
    c = seg.auto_choice_
    assert len(c.scores) == 1 and c.skipped > 0 and c.label == "default" and "skipped by the time budget" in c.summary()
    loaded = Segmenter.load(seg.save(tmp_path / "m.skops"))  # a plain classical model: loads anywhere
    assert loaded.features == seg.features and loaded.classifier == seg.classifier
    np.testing.assert_array_equal(loaded.predict(img), seg.predict(img))
    with pytest.raises(ConfigError, match="auto"):
        Segmenter("auto").fit([img], [scr], [np.zeros(img.shape + (3,), np.float32)])


def test_cli_train_auto_reports_choice_and_score(tmp_path):
    from hrdv2.cli.main import cli

    img, scr, _ = _texture_pair(96, seed=2)
    write_image(tmp_path / "a.png", (img * 255).astype(np.uint8))
    write_image(tmp_path / "a_s.png", scr)
    res = CliRunner().invoke(cli, ["train", "--features", "auto", "--image", str(tmp_path / "a.png"), "--scribble",
                                   str(tmp_path / "a_s.png"), "--out", str(tmp_path / "m.skops")])
    assert res.exit_code == 0, res.output
    assert "auto chose" in res.output and "CV mIoU" in res.output and "stroke folds" in res.output
    res = CliRunner().invoke(cli, ["train", "--features", "auto", "--sigmas", "1,2", "--image", str(tmp_path / "a.png"),
                                   "--scribble", str(tmp_path / "a_s.png"), "--out", str(tmp_path / "n.skops")])
    assert res.exit_code != 0 and "--sigmas" in res.output and "auto" in res.output
