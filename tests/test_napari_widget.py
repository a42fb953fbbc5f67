"""The napari dock widget end to end, on real micrographs from ../shared/data: paint scribbles
into a Labels layer, train in a thread worker, check the prediction against ground truth; live
mode, stacks, model files shared with `hrdv2 train` / `apply`, folder runs, deep features with
random weights (UNTRAINED). Runs on an X display (Xvfb, see the ``napari_display`` fixture)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hrdv2.io import read_image, read_labels, write_image
from hrdv2.metrics.segmentation import compact_confusion, mean_iou

pytestmark = pytest.mark.usefixtures("napari_display")

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60_000  # ms a job may take before the test fails


def miou(pred: np.ndarray, gt: np.ndarray) -> float:
    return mean_iou(compact_confusion([(pred, gt)])[1])


def dock(viewer):
    """The widget as napari builds it from the plugin's manifest (the installed entry point)."""
    _, widget = viewer.window.add_plugin_dock_widget("hrdv2", "hrdv2 segmentation")
    return widget


def paint(layer, scribble: np.ndarray, page: int | None = None) -> None:
    """Paint every stroke of ``scribble`` through napari's own editing path (emits paint events)."""
    for c in np.unique(scribble[scribble > 0]):
        idx = np.nonzero(scribble == c)
        if page is not None:
            idx = (np.full(idx[0].shape, page),) + idx
        layer.data_setitem(idx, int(c))


def run(qtbot, widget, action, *args):
    with qtbot.waitSignal(widget.done, timeout=TIMEOUT):
        action(*args)


@pytest.fixture
def isb0(shared_data):
    d = shared_data / "superalloy"
    return (read_image(d / "isb_0.png"), read_labels(d / "isb_0_scribble.png"), read_labels(d / "isb_0_gt.png"),
            d / "isb_0.png", d / "isb_0_scribble.png")


def test_train_predict_save_load_and_cli_models(make_napari_viewer, qtbot, isb0, tmp_path):
    from hrdv2.cli.main import cli
    from hrdv2.segmentation import Segmenter

    image, scribble, gt, image_path, scribble_path = isb0
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="isb_0")
    widget = dock(viewer)
    layer = widget.new_scribble_layer()
    assert layer.data.shape == image.shape and widget.scribble_box.currentText() == layer.name
    paint(layer, scribble)
    assert np.array_equal(layer.data, scribble)
    widget.classes.set_names(["matrix", "gamma_prime", "secondary"])
    widget.classifier.setCurrentText("logistic")
    run(qtbot, widget, widget.train)

    pred_layer = viewer.layers["hrdv2 prediction"]
    pred = np.asarray(pred_layer.data)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    assert set(np.unique(pred)) == {1, 2, 3}
    score = miou(pred, gt)
    assert score >= 0.6, f"mIoU {score:.3f} against isb_0's ground truth"
    # phase fractions in the widget and their CSV agree with the prediction layer
    assert widget.fraction_table.rowCount() == 3 and widget.fraction_table.item(0, 0).text() == "matrix"
    widget.export_fractions(tmp_path / "fractions.csv")
    rows = list(csv.reader((tmp_path / "fractions.csv").open()))
    assert rows[0] == ["file", "page", "matrix", "gamma_prime", "secondary"]
    assert np.allclose([float(v) for v in rows[1][2:]], [np.mean(pred == c) for c in (1, 2, 3)], atol=1e-6)

    # the documentation's picture: napari with the widget and the prediction over the micrograph
    viewer.window._qt_window.resize(1600, 1150)
    viewer.reset_view()
    qtbot.wait(200)
    # (written to test-artifacts/, as the web app's screenshot is; docs/img/napari_widget.png is a copy)
    (REPO / "test-artifacts").mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(path=str(REPO / "test-artifacts" / "napari_widget.png"), canvas_only=False)
    assert shot.std() > 10  # a real picture, not a blank window

    # save -> load gives identical predictions; the saved model runs in `hrdv2 apply` with the same labels
    model = widget.save_model(tmp_path / "widget.skops")
    widget.load_model(model)
    pred_layer.data = np.zeros_like(pred)
    run(qtbot, widget, widget.predict)
    assert np.array_equal(viewer.layers["hrdv2 prediction"].data, pred)
    res = CliRunner().invoke(cli, ["apply", str(model), str(image_path), "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_labels(tmp_path / "cli" / "isb_0_labels.png"), pred)

    # a model from `hrdv2 train` loads in the widget (controls follow it) and predicts as the library does
    cli_model = tmp_path / "cli.skops"
    res = CliRunner().invoke(cli, ["train", "--image", str(image_path), "--scribble", str(scribble_path),
                                   "--classifier", "random_forest", "--max-samples", "3000", "--class-names", "a,b,c",
                                   "--out", str(cli_model)])
    assert res.exit_code == 0, res.output
    widget.load_model(cli_model)
    assert widget.classifier.currentText() == "random_forest" and widget.classes.names() == ["a", "b", "c"]
    run(qtbot, widget, widget.predict)
    assert np.array_equal(viewer.layers["hrdv2 prediction"].data, Segmenter.load(cli_model).predict(image))


def test_live_mode_retrains_after_each_stroke_with_cached_features(make_napari_viewer, qtbot, shared_data):
    d = shared_data / "superalloy"
    image, scribble, gt = (read_image(d / "isb_1.png"), read_labels(d / "isb_1_scribble.png"),
                           read_labels(d / "isb_1_gt.png"))
    viewer = make_napari_viewer()
    viewer.add_image(image, name="isb_1")
    widget = dock(viewer)
    widget.classifier.setCurrentText("logistic")
    widget.live.setChecked(True)
    widget.timer.setInterval(100)
    layer = widget.new_scribble_layer()
    first = np.where(np.arange(scribble.shape[1])[None, :] < 140, scribble, 0)  # strokes left of x = 140
    with qtbot.waitSignal(widget.done, timeout=TIMEOUT) as blocker:
        paint(layer, first)  # painting alone starts training, after the debounce delay
    assert blocker.args == ["train"]
    model_1, pred_1 = widget.session.model, np.array(viewer.layers["hrdv2 prediction"].data)
    assert model_1 is not None and set(np.unique(pred_1)) == {1, 2}
    with qtbot.waitSignal(widget.done, timeout=TIMEOUT):
        paint(layer, scribble)  # the rest of the strokes: a retrain on more pixels
    model_2 = widget.session.model
    assert model_2 is not model_1 and model_2.n_train_pixels_ > model_1.n_train_pixels_
    assert widget.session.memo.misses == 1 and widget.session.memo.hits >= 3  # one featurisation for all
    pred_2 = np.asarray(viewer.layers["hrdv2 prediction"].data)
    assert miou(pred_2, gt) >= 0.7


def test_stack_whole_and_current_slice_in_a_worker(make_napari_viewer, qtbot, shared_data):
    d = shared_data / "isbi2012"
    stack = np.stack([read_image(d / f"isbi_0{i}.png")[:160, :192] for i in range(3)])
    gts = np.stack([read_labels(d / f"isbi_0{i}_gt.png")[:160, :192] for i in range(3)])
    rng = np.random.default_rng(0)
    scribble = np.zeros_like(gts, dtype=np.uint8)
    pick = rng.random(gts[1].shape) < 0.01
    scribble[1][pick] = gts[1][pick]  # sparse dots of both classes on the middle slice only
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="isbi")
    widget = dock(viewer)
    widget.classifier.setCurrentText("logistic")
    layer = widget.new_scribble_layer()
    assert layer.data.shape == stack.shape
    paint(layer, scribble[1], page=1)
    viewer.dims.set_current_step(0, 1)
    run(qtbot, widget, widget.train)
    pred = np.asarray(viewer.layers["hrdv2 prediction"].data)
    assert pred.shape == stack.shape and pred[1].all() and not pred[0].any() and not pred[2].any()

    steps = []
    widget.progress.valueChanged.connect(steps.append)
    widget.scope.setCurrentText("whole stack")
    widget.uncertainty.setChecked(True)
    run(qtbot, widget, widget.predict)
    pred = np.asarray(viewer.layers["hrdv2 prediction"].data)
    assert pred.shape == stack.shape and pred.dtype == np.uint8 and all(pred[z].all() for z in range(3))
    assert {1, 2, 3} <= set(steps)  # the progress bar counted the pages
    unc = viewer.layers["hrdv2 uncertainty"].data
    assert unc.shape == stack.shape and 0 <= unc.min() and unc.max() <= 0.5 + 1e-6  # 2 classes: 1 - max p <= 1/2
    assert miou(pred[2], gts[2]) >= 0.5  # a slice without strokes
    assert widget.fraction_table.rowCount() == 2 and len(widget.fractions) == 3


def test_apply_to_folder_and_deep_features(make_napari_viewer, qtbot, shared_data, tmp_path):
    d = shared_data / "superalloy"
    image, scribble = read_image(d / "isb_0.png")[:84, :84], read_labels(d / "isb_0_scribble.png")[:84, :84]
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("nasa_spot3_0d_3.png", "nasa_spot4_0d_3.png"):
        write_image(folder / name, read_image(d / name)[:160, :200])
    (folder / "broken.png").write_bytes(b"not a png")
    viewer = make_napari_viewer()
    viewer.add_image(image, name="crop")
    widget = dock(viewer)
    layer = widget.new_scribble_layer()
    paint(layer, scribble)
    # deep features with random weights (UNTRAINED: only the mechanics are checked, not quality)
    widget.kind.setCurrentText("deep")
    widget.weights.setText("random")
    widget.shifts.setText("")
    widget.classifier.setCurrentText("logistic")
    run(qtbot, widget, widget.train)
    seg = widget.session.model
    assert seg.features.kind == "deep" and seg.features.weights == "random" and seg.n_features_in_ == 384
    assert viewer.layers["hrdv2 prediction"].data.shape == image.shape

    # weights that are missing: one warning line, then classical features (controls follow)
    from napari.utils.notifications import notification_manager

    seen = len(notification_manager.records)
    widget.weights.setText(str(tmp_path / "missing.pth"))
    run(qtbot, widget, widget.train)
    news = [n.message for n in notification_manager.records[seen:]]
    assert any("using classical features" in m and "missing.pth" in m for m in news), news
    assert widget.session.model.features.kind == "classical" and widget.kind.currentText() == "classical"

    run(qtbot, widget, widget.apply_folder, folder, tmp_path / "out")
    news = [n.message for n in notification_manager.records[seen:]]
    assert any(m.startswith("broken.png:") for m in news) and any("segmented 2 of 3" in m for m in news), news
    for name in ("nasa_spot3_0d_3", "nasa_spot4_0d_3"):
        labels = read_labels(tmp_path / "out" / f"{name}_labels.png")
        assert labels.shape == (160, 200) and set(np.unique(labels)) <= {1, 2, 3}
    rows = list(csv.reader((tmp_path / "out" / "phase_fractions.csv").open()))
    assert len(rows) == 3 and all(abs(sum(float(v) for v in r[2:]) - 1) < 1e-4 for r in rows[1:])
