"""`features="auto"`: folds that never score a pixel whose stroke is in training, the choice on a
synthetic image where one preset is clearly best, the ensemble of forests (its merged forest
equals the average of its members, and round-trips through Segmenter.save / load), the logistic
regression blended in at ``LINEAR_SHARE``, the time budget, and the CLI summary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from click.testing import CliRunner

from hrdv2.errors import ConfigError
from hrdv2.features import auto
from hrdv2.features.auto import GAP, AutoChoice, Member, fit_ensemble, image_folds, stroke_folds
from hrdv2.features.classical import feature_names, resolve_filters
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


def test_auto_picks_the_structure_tensor_where_only_orientation_coherence_differs(tmp_path):
    img, scr, gt = _texture_pair()
    seg = Segmenter("auto", auto_budget_s=120).fit([img], [scr])
    choice = seg.auto_choice_
    keys = [m.key for m in choice.members] or [f"{choice.label}/{choice.classifier_label}"]
    # only candidates with the structure tensor: the other forests are too far behind to be averaged
    # in, and the logistic regression blended in is the best by CV, which has it too
    assert all(k.startswith("default+structure/") for k in keys), choice.scores
    logistic = max((k for k in choice.scores if k.endswith("/logistic")), key=choice.scores.get)
    assert [k for k in keys if k.endswith("/logistic")] == [logistic] == keys[-1:]
    assert "structure" in seg.features.filters and seg.features.kind == "classical"
    # candidates with the structure tensor score clearly above all others; the reported score is the choice's
    assert choice.cv_miou == choice.scores[f"ensemble({'|'.join(keys)})" if choice.members else keys[0]]
    with_st = max(v for k, v in choice.scores.items() if "structure" in k)
    assert with_st > max(v for k, v in choice.scores.items() if "structure" not in k) + auto.ENSEMBLE_DELTA
    assert mean_iou(seg.predict(img), gt) > 0.75
    assert f"auto={choice.label!r}" in repr(seg) and "cv_miou=" in repr(seg)
    assert "default+structure" in choice.summary() and "(sigmas 1,2,4,8,16)" in choice.summary()
    assert seg.classifier_params == choice.classifier_params  # e.g. the subsampled forest's 5 % samples
    assert "blended with default+structure + logistic (0.25 of the probability)" in choice.summary()
    loaded = Segmenter.load(seg.save(tmp_path / "blend.skops"))  # forests + logistic: scikit-learn types only
    np.testing.assert_array_equal(loaded.predict_proba(img), seg.predict_proba(img))


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


def test_auto_featurises_colour_in_lab_unless_told_otherwise(tmp_path):
    """A colour image's ``auto`` normalisation means CIE Lab for auto (measured: one model per
    GrabCut photo 0.69 against 0.63 in RGB, level across photos); an explicit normalisation is
    kept; grey images keep the percentile stretch."""
    from hrdv2.cli.main import cli

    img, scr, _ = _texture_pair(96, seed=3)
    rgb = np.stack([img, img[:, ::-1], 0.5 * img], -1)
    seg = Segmenter("auto", auto_budget_s=0).fit([rgb], [scr])
    assert seg.auto_choice_.normalise == "lab" and seg.features.normalise == "lab"
    assert "normalise lab" in seg.auto_choice_.summary()
    np.testing.assert_array_equal(Segmenter.load(seg.save(tmp_path / "m.skops")).predict(rgb), seg.predict(rgb))
    told = Segmenter("auto", auto_budget_s=0)
    told.features = told.features.replace(normalise="none")
    assert told.fit([rgb], [scr]).auto_choice_.normalise == "none"
    assert Segmenter("auto", auto_budget_s=0).fit([img], [scr]).auto_choice_.normalise == "auto"
    write_image(tmp_path / "grey.png", (img * 255).astype(np.uint8))
    write_image(tmp_path / "s.png", scr)
    res = CliRunner().invoke(cli, ["train", "--normalise", "lab", "--image", str(tmp_path / "grey.png"), "--scribble",
                                   str(tmp_path / "s.png"), "--out", str(tmp_path / "n.skops")])
    assert res.exit_code != 0 and "grey.png has 1 channel" in res.output and "normalise 'auto'" in res.output
    assert not (tmp_path / "n.skops").exists()


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


def test_ensemble_forest_is_the_average_of_its_members_on_their_own_channels():
    """The merged forest reads the union map; each member's trees must see exactly the columns
    the member was fitted on, so its probabilities equal the members' mean computed separately."""
    from hrdv2.segmentation.segmenter import make_classifier

    members = (Member("fine", resolve_filters("default"), (1.0, 2.0), "random_forest", "random_forest"),
               Member("smooth", resolve_filters("intensity,gaussian"), (1.0, 2.0, 4.0), "subsampled_forest",
                      "random_forest", (("max_samples", 0.2), ("n_estimators", 50))))
    filters = resolve_filters("default")
    choice = AutoChoice("ensemble", filters, (1.0, 2.0, 4.0), "random_forest", "auto", 0.0, "", members=members)
    names = feature_names(1, choice.sigmas, filters)
    rng = np.random.default_rng(0)
    x = rng.random((600, len(names))).astype(np.float32)
    y = np.where(x[:, names.index("gaussian_s4")] + 0.5 * x[:, names.index("dog_s2")] > 0.8, 1, 2)
    merged = fit_ensemble(choice, x, y, 1, random_state=0)
    assert merged.n_estimators == 2 * auto.ENSEMBLE_TREES and merged.n_features_in_ == len(names)
    expected = []
    for m in members:
        cols = [names.index(n) for n in feature_names(1, m.sigmas, m.filters)]
        one = make_classifier("random_forest", 0, len(y), **{**dict(m.params), "n_estimators": auto.ENSEMBLE_TREES})
        expected.append(one.fit(x[:, cols], y).predict_proba(x[:, cols]))
    np.testing.assert_allclose(merged.predict_proba(x), np.mean(expected, axis=0), atol=1e-6)
    # "smooth" never sees a Hessian channel: no tree of its half splits on one
    used = {names[f] for est in merged.estimators_[auto.ENSEMBLE_TREES:] for f in est.tree_.feature if f >= 0}
    assert used and all(n == "intensity" or n.startswith("gaussian") for n in used)

    # with a logistic regression member: 1 - LINEAR_SHARE for the forests' mean, the rest for it,
    # read from the union map through coefficients that are zero off its own channels
    linear = Member("basic", resolve_filters("gaussian,gradient"), (1.0, 2.0), "logistic", "logistic")
    blended = fit_ensemble(AutoChoice("ensemble", filters, choice.sigmas, "random_forest", "auto", 0.0, "",
                                      members=members + (linear,)), x, y, 1, random_state=0)
    cols = [names.index(n) for n in feature_names(1, linear.sigmas, linear.filters)]
    alone = make_classifier("logistic", 0, len(y)).fit(x[:, cols], y).predict_proba(x[:, cols])
    np.testing.assert_allclose(blended.predict_proba(x), (1 - auto.LINEAR_SHARE) * np.mean(expected, axis=0)
                               + auto.LINEAR_SHARE * alone, atol=1e-6)
    coef = blended.estimators_[1][-1].coef_
    assert coef.shape == (1, len(names)) and not np.any(np.delete(coef, cols, axis=1))


def _four_forests(every):
    """A candidates() of its first 4 forests only: quick, and no logistic regression to blend in."""
    return lambda: [m for m in every() if m.classifier == "random_forest"][:4]


def test_auto_averages_the_forests_within_the_delta_of_the_best_and_round_trips(tmp_path, monkeypatch):
    img, scr, gt = _texture_pair(96, seed=3)
    monkeypatch.setattr(auto, "candidates", _four_forests(auto.candidates))  # 4 forests: quick
    monkeypatch.setattr(auto, "ENSEMBLE_DELTA", 1.0)  # every forest is close enough: all 4 averaged
    seg = Segmenter("auto", auto_budget_s=120).fit([img], [scr])
    c = seg.auto_choice_
    forest_keys = sorted((k for k in c.scores if not k.startswith("ensemble")), key=lambda k: -c.scores[k])
    assert c.label == "ensemble" and [m.key for m in c.members] == forest_keys  # best first
    assert c.cv_miou == c.scores["ensemble(" + "|".join(forest_keys) + ")"]
    assert "auto chose an ensemble of " + ", ".join(f"{m.label} + {m.classifier_label}" for m in c.members) \
        in c.summary()
    assert set(seg.features.filters) == {f for m in c.members for f in m.filters}
    assert seg.model_.n_estimators == 4 * auto.ENSEMBLE_TREES
    assert mean_iou(seg.predict(img), gt) > 0.75
    loaded = Segmenter.load(seg.save(tmp_path / "ens.skops"))  # a plain forest to the safe loader
    assert loaded.features == seg.features
    np.testing.assert_array_equal(loaded.predict_proba(img), seg.predict_proba(img))

    monkeypatch.setattr(auto, "ENSEMBLE_K", 2)  # at most K members, the best two
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    assert [m.key for m in c.members] == forest_keys[:2]


def test_auto_ensemble_leaves_out_forests_beyond_the_delta(monkeypatch):
    img, scr, _ = _texture_pair(96, seed=3)
    monkeypatch.setattr(auto, "candidates", _four_forests(auto.candidates))
    monkeypatch.setattr(auto, "ENSEMBLE_DELTA", 0.0)  # only exact ties with the best are averaged
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    forests = {k: v for k, v in c.scores.items() if not k.startswith("ensemble")}
    order = list(forests)  # candidate order
    tied = [k for k in order if forests[k] == max(forests.values())]
    assert [m.key for m in c.members] == (tied if len(tied) > 1 else [])
    levels = sorted(set(forests.values()), reverse=True)
    assert len(levels) >= 3, forests
    monkeypatch.setattr(auto, "ENSEMBLE_DELTA", levels[0] - (levels[1] + levels[2]) / 2)  # the best two levels
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    assert {m.key for m in c.members} == {k for k, v in forests.items() if v >= levels[1]}
    monkeypatch.setattr(auto, "ENSEMBLE_K", 1)  # one forest: the best, the earliest of a tie
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    assert c.label != "ensemble" and not c.members and f"{c.label}/{c.classifier_label}" == tied[0]
    assert c.cv_miou == levels[0]


def test_logistic_replaces_the_forests_only_by_its_margin(monkeypatch):
    img, scr, _ = _texture_pair(96, seed=3)
    plan = [m for m in auto.candidates() if m.label == "default"]  # two forests and a logistic regression
    monkeypatch.setattr(auto, "candidates", lambda: plan)
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    logistic = c.scores["default/logistic"]
    assert c.classifier == "random_forest"  # on this texture the forests win by far
    monkeypatch.setattr(auto, "LOGISTIC_MARGIN", -1.0)  # any logistic score now beats them
    c = Segmenter("auto", auto_budget_s=120).fit([img], [scr]).auto_choice_
    assert c.classifier == "logistic" and c.label == "default" and c.cv_miou == logistic and not c.members


def test_select_on_given_scores_keeps_close_forests_best_first():
    """auto.select alone, on made-up runs: the rule without the cost of scoring candidates."""
    yt = np.array([1, 1, 2, 2])

    def run(label: str, classifier: str, score: float, right: int) -> auto.Run:
        proba = np.zeros((4, 3), np.float32)  # columns: class ids 0, 1, 2; ``right`` pixels predicted correctly
        for i, k in enumerate(yt):
            proba[i, k if i < right else 3 - k] = 1.0
        cl = "random_forest" if classifier != "logistic" else "logistic"
        return score, Member(label, ("intensity",), (1.0,), classifier, cl), "auto", [[(yt, proba)]]

    a, b = run("a", "random_forest", 0.90, 4), run("b", "subsampled_forest", 0.87, 4)
    c = run("c", "random_forest", 0.80, 2)
    chosen, cv = auto.select([c, a, b], 2)
    assert chosen == [a, b] and cv == 1.0  # c is 0.10 behind; the average of a and b gets every pixel right
    close = run("lr", "logistic", 1.05, 4)  # not 0.1 above the forests' 1.0: blended in, last
    assert auto.select([c, a, close, b], 2)[0] == [a, b, close]
    lr = run("lr", "logistic", 1.11, 4)
    assert auto.select([c, a, lr, b], 2) == ([lr], 1.11)
    tie = run("t", "random_forest", 0.90, 4)
    assert auto.select([tie, a], 2)[0] == [tie, a]  # a tie keeps run order
    assert auto.select([a, tie], 2)[0] == [a, tie]


def test_select_blends_the_best_logistic_at_its_share(monkeypatch):
    """The forests' average keeps 1 - LINEAR_SHARE of the probability: a logistic regression
    that is right where the forests are all wrong is outvoted at 0.25, decides at 0.6."""
    yt = np.array([1, 1, 2, 2])

    def run(label: str, classifier: str, score: float, right: int, norm: str = "auto") -> auto.Run:
        proba = np.zeros((4, 3), np.float32)
        for i, k in enumerate(yt):
            proba[i, k if i < right else 3 - k] = 1.0
        cl = "random_forest" if classifier != "logistic" else "logistic"
        return score, Member(label, ("intensity",), (1.0,), classifier, cl), norm, [[(yt, proba)]]

    a, b = run("a", "random_forest", 0.60, 2), run("b", "subsampled_forest", 0.58, 2)  # both wrong on pixels 2, 3
    # the forests' average scores 0.25 (class 1 everywhere); no logistic regression beats it by 0.1
    weak, best = run("w", "logistic", 0.20, 0), run("l", "logistic", 0.30, 4)
    other = run("o", "logistic", 0.31, 4, norm="none")  # another normalisation: never blended with these forests
    chosen, cv = auto.select([a, weak, b, best], 2)
    assert chosen == [a, b, best] and auto.member_weights(chosen) == [0.375, 0.375, 0.25]
    assert cv == auto._miou([(yt, 0.375 * a[3][0][0][1] + 0.375 * b[3][0][0][1] + 0.25 * best[3][0][0][1])], 2) < 1
    assert auto.select([a, b, best, other], 2)[0] == [a, b, best]
    monkeypatch.setattr(auto, "LINEAR_SHARE", 0.6)
    assert auto.select([a, b, best], 2)[1] == 1.0  # the logistic regression now outvotes the forests
    monkeypatch.setattr(auto, "LINEAR_SHARE", 0.0)
    assert auto.select([a, b, best], 2)[0] == [a, b]
    assert auto.member_weights([a, b]) == [0.5, 0.5]
