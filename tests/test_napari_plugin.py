"""The plugin's manifest, reader, writer and sample data, and the widget's answers to bad input:
one napari notification line each, never a traceback (runs on an X display, see
``napari_display``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hrdv2.io import read_image, read_labels

pytestmark = pytest.mark.usefixtures("napari_display")

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "hrdv2" / "napari" / "napari.yaml"
TIMEOUT = 60_000


def test_manifest_validates_and_is_registered():
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "hrdv2", "--imports"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "valid" in res.stdout, res.stdout + res.stderr
    from importlib.metadata import entry_points

    from npe2 import PluginManifest

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "hrdv2"]
    assert ep.value == "hrdv2.napari:napari.yaml"
    mf = PluginManifest.from_distribution("hrdv2")  # found through that entry point
    assert mf.name == "hrdv2" and PluginManifest.from_file(MANIFEST).name == "hrdv2"
    assert [w.display_name for w in mf.contributions.widgets] == ["hrdv2 segmentation"]
    assert {s.key for s in mf.contributions.sample_data} == {"immunohistochemistry", "cell"}


def test_samples_reader_and_writer(make_napari_viewer, shared_data, tmp_path):
    from click.testing import CliRunner

    from hrdv2.cli.main import cli
    from hrdv2.napari.io import get_reader, write_labels
    from hrdv2.segmentation import Segmenter

    viewer = make_napari_viewer()
    viewer.open_sample("hrdv2", "cell")
    viewer.open_sample("hrdv2", "immunohistochemistry")
    assert viewer.layers[0].data.ndim == 2 and viewer.layers[1].rgb and viewer.layers[1].data.shape[-1] == 3

    # an OME-Zarr label output of `hrdv2 apply` opens as a multiscale Labels layer with its pyramid
    from hrdv2.io import write_image

    d = shared_data / "superalloy"
    image = read_image(d / "isb_0.png")[:256, :256]
    write_image(tmp_path / "isb_0.png", image)
    seg = Segmenter("classical", classifier="logistic").fit([image], [read_labels(d / "isb_0_scribble.png")[:256, :256]])
    seg.save(tmp_path / "m.skops")
    res = CliRunner().invoke(cli, ["apply", str(tmp_path / "m.skops"), str(tmp_path / "isb_0.png"), "--format",
                                   "ome-zarr", "--block-size", "64", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    store = tmp_path / "out" / "isb_0_labels.ome.zarr"
    assert get_reader(str(tmp_path / "m.skops")) is None  # not ours: napari asks other readers
    layers = viewer.open(str(store), plugin="hrdv2")
    assert len(layers) == 1 and layers[0].__class__.__name__ == "Labels" and layers[0].multiscale
    levels = layers[0].data
    assert len(levels) >= 2 and levels[0].shape == image.shape and levels[1].shape == (128, 128)
    assert np.array_equal(np.asarray(levels[0]), seg.predict(image))

    # the writer: PNG for one label map, multi-page TIFF for a stack; PNG refuses a stack in one line
    labels = np.asarray(levels[0])
    assert write_labels(str(tmp_path / "l.png"), labels, {}) == [str(tmp_path / "l.png")]
    assert np.array_equal(read_labels(tmp_path / "l.png"), labels)
    stack = np.stack([labels, labels[::-1]])
    write_labels(str(tmp_path / "s.tif"), stack, {})
    from hrdv2.io import read_label_stack

    assert np.array_equal(np.stack(read_label_stack(tmp_path / "s.tif")), stack)
    with pytest.raises(Exception, match="save it as .tif"):
        write_labels(str(tmp_path / "s.png"), stack, {})


def _messages(since: int) -> list[tuple[str, str]]:
    from napari.utils.notifications import notification_manager

    return [(str(n.severity), n.message) for n in notification_manager.records[since:]]


def test_bad_input_gives_one_notification_line(make_napari_viewer, qtbot, shared_data):
    from napari.utils.notifications import notification_manager

    d = shared_data / "superalloy"
    grey = read_image(d / "isb_0.png")[:96, :96]
    scribble = read_labels(d / "isb_0_scribble.png")[:96, :96]
    viewer = make_napari_viewer()
    viewer.add_image(grey, name="grey")
    _, widget = viewer.window.add_plugin_dock_widget("hrdv2", "hrdv2 segmentation")
    widget.classifier.setCurrentText("logistic")

    def expect(action, pattern: str, severity: str = "error") -> None:
        seen = len(notification_manager.records)
        action()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT)
        news = _messages(seen)
        hits = [m for s, m in news if s == severity and pattern in m]
        assert hits, f"expected a {severity} containing {pattern!r}, got {news}"
        assert all("\n" not in m and "Traceback" not in m for _, m in news)

    # no scribble layer yet, then a labels layer of another shape
    expect(lambda: widget._guard(widget.train), "pick a scribble layer")
    viewer.add_labels(np.zeros((50, 60), np.uint8), name="wrong")
    widget.scribble_box.setCurrentText("wrong")
    expect(widget.train_button.click, "is (50, 60) but image layer 'grey' is (96, 96)")
    # no strokes, then strokes of one class only
    layer = widget.new_scribble_layer()
    expect(widget.train_button.click, "no strokes yet")
    layer.data_setitem(np.nonzero(scribble == 1), 1)
    expect(widget.train_button.click, "label only class 1")
    # a good model on grey, then applied to an RGB(A) image: the RGBA note, then the refusal
    layer.data_setitem(np.nonzero(scribble == 2), 2)
    with qtbot.waitSignal(widget.done, timeout=TIMEOUT):
        widget.train_button.click()
    rgba = np.dstack([np.stack([grey] * 3, -1), np.full(grey.shape, 255, np.uint8)])
    viewer.add_image(rgba, name="rgba", rgb=True)
    widget.image_box.setCurrentText("rgba")
    expect(widget.predict_button.click, "alpha channel is ignored", "warning")
    expect(widget.predict_button.click, "trained on grey images")
    # a 16-bit image is rescaled (said once), then segmented
    viewer.add_image(grey.astype(np.uint16) * 257, name="sixteen")
    widget.image_box.setCurrentText("sixteen")
    expect(widget.predict_button.click, "16-bit", "warning")
    assert viewer.layers["hrdv2 prediction"].data.any()
    # a setting the library refuses, before any work starts
    widget.kind.setCurrentText("deep")
    widget.shifts.setText("1,x")
    expect(widget.train_button.click, "shifts must be comma-separated")
