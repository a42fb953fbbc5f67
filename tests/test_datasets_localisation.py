"""Dataset readers on tiny fixture folders in the VOC / CUB / DUTS / ECSSD layouts, built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrdv2.datasets.cub import CUBDataset
from hrdv2.datasets.localisation import FolderLocDataset, open_localisation_dataset
from hrdv2.datasets.saliency import SaliencyDataset
from hrdv2.datasets.voc import VOCDataset, parse_annotation
from hrdv2.errors import HRDv2Error


def _jpg(path: Path, w: int = 40, h: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 120, 40  # distinct channels: read back as RGB
    Image.fromarray(img).save(path)


def _png_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>40</width><height>30</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{cls}</name><difficult>{hard}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def _voc(root: Path, year: str = "2007") -> Path:
    d = root / "VOCdevkit" / f"VOC{year}"
    anns = {
        "000001": [("dog", 0, (1, 1, 10, 20)), ("cat", 1, (5, 6, 30, 25))],
        "000002": [("car", 0, (11, 3, 40, 30))],
        "000003": [],  # no objects: skipped
        "000004": [("cow", 0, (2, 2, 5, 5))],  # not in the split
    }
    for name, objs in anns.items():
        _jpg(d / "JPEGImages" / f"{name}.jpg")
        xml = VOC_XML.format(name=name, objects="".join(OBJ.format(cls=c, hard=h, b=b) for c, h, b in objs))
        (d / "Annotations").mkdir(parents=True, exist_ok=True)
        (d / "Annotations" / f"{name}.xml").write_text(xml)
    (d / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (d / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n")
    return d


def test_voc_reader_boxes_and_split(tmp_path):
    _voc(tmp_path)
    ds = VOCDataset(tmp_path, year="2007")
    assert [s.name for s in ds] == ["000001", "000002"]
    # 1-based inclusive -> 0-based exclusive
    assert ds[0].boxes.tolist() == [[0, 0, 10, 20], [4, 5, 30, 25]]
    assert ds[0].extra["classes"] == ["dog", "cat"] and ds[0].extra["difficult"] == [False, True]
    assert ds[0].image().shape == (30, 40, 3)
    # the same folder found from VOCdevkit/ or VOC2007/ itself, and via the factory
    assert len(VOCDataset(tmp_path / "VOCdevkit")) == 2
    assert len(open_localisation_dataset("voc07", tmp_path / "VOCdevkit" / "VOC2007")) == 2
    assert len(VOCDataset(tmp_path, split=None)) == 3  # every annotated image


def test_voc_reader_drops_difficult_on_request(tmp_path):
    d = _voc(tmp_path)
    boxes, names, hard = parse_annotation(d / "Annotations" / "000001.xml", include_difficult=False)
    assert boxes.tolist() == [[0, 0, 10, 20]] and names == ["dog"] and hard == [False]


def test_voc_wrong_layout_is_a_clear_error(tmp_path):
    with pytest.raises(HRDv2Error, match="JPEGImages"):
        VOCDataset(tmp_path, year="2012")
    d = _voc(tmp_path)
    (d / "ImageSets" / "Main" / "trainval.txt").unlink()
    with pytest.raises(HRDv2Error, match="split file missing"):
        VOCDataset(tmp_path)


def _cub(root: Path, seg_beside: bool = True) -> Path:
    d = root / "CUB_200_2011"
    seg = (root if seg_beside else d) / "segmentations"
    rows = [("1", "001.Albatross/a_1.jpg", "1"), ("2", "001.Albatross/a_2.jpg", "0"), ("3", "002.Auklet/b_3.jpg", "0")]
    for i, rel, _ in rows:
        _jpg(d / "images" / rel)
        m = np.zeros((30, 40), np.uint8)
        m[5:15, 10:30] = 255
        m[20, 0] = 100  # soft, below half: background
        _png_mask(seg / Path(rel).with_suffix(".png"), m)
    (d / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _ in rows))
    (d / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, t in rows))
    (d / "bounding_boxes.txt").write_text("1 10.0 5.0 20.0 10.0\n2 10.0 5.0 20.0 10.0\n3 1.0 2.0 3.0 4.0\n")
    return d


@pytest.mark.parametrize("seg_beside", [True, False])
def test_cub_reader_test_split_masks_and_boxes(tmp_path, seg_beside):
    _cub(tmp_path, seg_beside)
    ds = CUBDataset(tmp_path)
    assert [s.name for s in ds] == ["a_2", "b_3"]
    fg, valid = ds[0].mask()
    assert fg.sum() == 200 and fg[5:15, 10:30].all() and valid.all()
    assert ds[0].boxes.tolist() == [[10, 5, 30, 15]]
    assert len(CUBDataset(tmp_path / "CUB_200_2011", split="train")) == 1
    assert len(open_localisation_dataset("cub", tmp_path, split="all")) == 3


def test_cub_wrong_layout_is_a_clear_error(tmp_path):
    with pytest.raises(HRDv2Error, match="images.txt"):
        CUBDataset(tmp_path)
    d = _cub(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "segmentations")
    with pytest.raises(HRDv2Error, match="segmentations"):
        CUBDataset(d)
    with pytest.raises(HRDv2Error, match="split"):
        CUBDataset(tmp_path, split="val")


@pytest.mark.parametrize("kind,dirs", [("duts", ("DUTS-TE", "DUTS-TE-Image", "DUTS-TE-Mask")),
                                       ("ecssd", ("ECSSD", "images", "ground_truth_mask"))])
def test_saliency_readers(tmp_path, kind, dirs):
    name, img_dir, mask_dir = dirs
    for n in ("x1", "x2"):
        _jpg(tmp_path / name / img_dir / f"{n}.jpg")
        m = np.zeros((30, 40), np.uint8)
        m[:, :10] = 255
        _png_mask(tmp_path / name / mask_dir / f"{n}.png", m)
    ds = SaliencyDataset(tmp_path, kind)
    assert [s.name for s in ds] == ["x1", "x2"]
    fg, _ = ds[1].mask(ds[1].image().shape)
    assert fg.sum() == 300
    # no annotated boxes: one GT box derived from the mask component
    assert ds[1].gt_boxes().tolist() == [[0, 0, 10, 30]]
    assert len(open_localisation_dataset(kind, tmp_path / name)) == 2


def test_saliency_wrong_layout_and_missing_mask(tmp_path):
    with pytest.raises(HRDv2Error, match="DUTS-TE-Mask"):
        SaliencyDataset(tmp_path, "duts")
    _jpg(tmp_path / "ECSSD" / "images" / "a.jpg")
    (tmp_path / "ECSSD" / "ground_truth_mask").mkdir()
    with pytest.raises(HRDv2Error, match="no mask"):
        SaliencyDataset(tmp_path, "ecssd")
    with pytest.raises(HRDv2Error, match="unknown"):
        open_localisation_dataset("coco", tmp_path)


def test_folder_reader_uses_label_convention(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    gt = np.ones((20, 30), np.uint8)
    gt[2:12, 3:23] = 2  # 200 px object
    gt[0, :] = 0  # ignore band
    Image.fromarray(gt).save(tmp_path / "a_gt.png")
    ds = FolderLocDataset(tmp_path)
    fg, valid = ds[0].mask()
    assert fg.sum() == 200 and (~valid).sum() == 30
    assert ds[0].gt_boxes().tolist() == [[3, 2, 23, 12]]


def test_folder_reader_on_shared_horses(shared_data):
    ds = open_localisation_dataset("folder", shared_data / "horse")
    assert len(ds) == 30
    s = ds[0]
    fg, valid = s.mask(s.image().shape)
    assert fg.any() and (~fg).any() and valid.all()
    assert len(s.gt_boxes()) >= 1


def test_folder_wrong_layout(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lonely.png")
    with pytest.raises(HRDv2Error, match="NAME_gt"):
        FolderLocDataset(tmp_path)
