"""Readers for the RITM/f-BRS layouts (built here in miniature) and the shared NAME_gt folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from hrdv2.datasets.interactive import load_interactive, read_sbd_instances
from hrdv2.errors import ConfigError, ImageReadError, ShapeError


def _rgb(h=20, w=30, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_grabcut_layout_with_uncertain_band(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    mask[4, 5:20] = 128  # the uncertain band
    _save(tmp_path / "data_GT" / "flower.jpg", _rgb())
    _save(tmp_path / "boundary_GT" / "flower.bmp", mask)
    _save(tmp_path / "data_GT" / "zebra.bmp", _rgb(seed=1))
    _save(tmp_path / "boundary_GT" / "zebra.bmp", mask)
    ds = load_interactive("grabcut", tmp_path)
    assert [s.name for s in ds] == ["flower", "zebra"]
    image, obj, ignore = ds[0].load()
    assert image.shape == (20, 30, 3)
    assert np.array_equal(obj, mask == 255) and np.array_equal(ignore, mask == 128)


def test_berkeley_layout(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[2:9, 3:7] = 255
    _save(tmp_path / "images" / "42049.jpg", _rgb())
    _save(tmp_path / "masks" / "42049.png", mask)
    image, obj, ignore = load_interactive("berkeley", tmp_path)[0].load()
    assert obj.sum() == 28 and not ignore.any()


def test_davis_layout_any_channel_is_object(tmp_path):
    mask = np.zeros((20, 30, 3), np.uint8)
    mask[3:6, 3:6, 0] = 200  # coloured object mask
    mask[10:12, 10:12, 2] = 255
    _save(tmp_path / "img" / "bear.jpg", _rgb())
    _save(tmp_path / "gt" / "bear.png", mask)
    _, obj, ignore = load_interactive("davis", tmp_path)[0].load()
    assert obj.sum() == 9 + 4 and not ignore.any()


def _sbd(root, stems_train, stems_val):
    (root / "inst").mkdir(parents=True)
    for i, stem in enumerate(stems_train + stems_val):
        _save(root / "img" / f"{stem}.jpg", _rgb(seed=i))
        inst = np.zeros((20, 30), np.uint8)
        inst[2:8, 2:8] = 1
        inst[10:18, 12:25] = 2
        savemat(root / "inst" / f"{stem}.mat", {"GTinst": {"Segmentation": inst, "Boundaries": np.zeros(1),
                                                           "Categories": np.array([[15], [12]])}})
    (root / "train.txt").write_text("\n".join(stems_train) + "\n")
    (root / "val.txt").write_text("\n".join(stems_val) + "\n")


def test_sbd_one_sample_per_instance(tmp_path):
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    _sbd(root, ["2008_000002"], ["2008_000003", "2008_000004"])
    assert read_sbd_instances(root / "inst" / "2008_000003.mat").max() == 2
    val = load_interactive("sbd", root.parent, split="val")  # the parent of dataset/ also works
    assert [s.name for s in val] == ["2008_000003#1", "2008_000003#2", "2008_000004#1", "2008_000004#2"]
    _, obj, _ = val[1].load()
    assert obj.sum() == 8 * 13
    assert len(load_interactive("sbd", root, split="train")) == 2


def test_folder_layout_on_shared_data(shared_data):
    ds = load_interactive("folder", shared_data / "grabcut")
    assert len(ds) == 10 and ds.name == "grabcut"
    image, obj, ignore = ds[0].load()
    gt = np.asarray(Image.open(shared_data / "grabcut" / f"{ds[0].name}_gt.png"))
    assert np.array_equal(obj, gt == 2) and np.array_equal(ignore, gt == 0)
    assert image.shape[:2] == obj.shape
    horse = load_interactive("folder", shared_data / "horse")
    assert len(horse) == 30 and not horse[0].load()[2].any()  # horse has no ignore region
    with pytest.raises(ImageReadError, match="--dataset folder"):  # the RITM reader points to the right one
        load_interactive("grabcut", shared_data / "grabcut")


def test_folder_multiclass_gives_one_sample_per_class(tmp_path):
    gt = np.ones((20, 30), np.uint8)
    gt[2:6, 2:6] = 2
    gt[10:15, 10:15] = 3
    _save(tmp_path / "a.png", _rgb())
    _save(tmp_path / "a_gt.png", gt)
    ds = load_interactive("folder", tmp_path)
    assert [s.name for s in ds] == ["a#2", "a#3"]
    assert ds[1].load()[1].sum() == 25


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(ImageReadError, match="boundary_GT"):
        load_interactive("grabcut", tmp_path)
    with pytest.raises(ConfigError, match="grabcut"):
        load_interactive("coco", tmp_path)
    _save(tmp_path / "images" / "x.jpg", _rgb())
    (tmp_path / "masks").mkdir()
    with pytest.raises(ImageReadError, match="no mask named x"):
        load_interactive("berkeley", tmp_path)
    _save(tmp_path / "masks" / "x.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ShapeError, match="same size"):
        load_interactive("berkeley", tmp_path)[0].load()
    with pytest.raises(ConfigError, match="split"):
        load_interactive("sbd", tmp_path, split="test")
