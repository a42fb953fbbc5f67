"""Large images: tiles of a pyramid for the page, block-wise training rows and block-wise
prediction as a background job.

An image whose longer side exceeds the engine's ``large_side`` (4096 px by default: beyond
what a browser canvas holds comfortably) is

* shown through a pyramid: ``display.png`` is the first level whose longer side fits
  ``large_side``, and 512-px tiles of the finer levels are fetched for the region on screen;
* trained on block by block: only the blocks holding scribbles are featurised
  (:class:`hrdv2.engine.blockwise.BlockFeatures`, the same features a whole-image run gives),
  so memory stays that of a few blocks;
* predicted block by block with :func:`hrdv2.segmentation.blockwise.segment_blockwise`:
  labels go to an OME-Zarr pyramid (its coarser levels are the overlay the page shows; the
  mode of each 2x2 keeps thin phases), probabilities to a float16 ``.npy`` written in place,
  never whole in memory. The dense CRF needs the whole image, so it is skipped here (the job
  says so).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hrdv2.blocks.writers import BlockWriter

TILE = 512


def is_large(image: dict, large_side: int) -> bool:
    return max(image["width"], image["height"]) > large_side


def display_level(image: dict, large_side: int) -> int:
    """Pyramid level of the page's base picture: 0 for ordinary images."""
    side = max(image["width"], image["height"])
    return 0 if side <= large_side else math.ceil(math.log2(side / large_side))


def level_shape(image: dict, level: int) -> tuple[int, int]:
    """(height, width) of a level: halved (rounded up) ``level`` times, as the zarr pyramid does."""
    h, w = image["height"], image["width"]
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def level_pixels(store: Any, image: dict, level: int) -> np.ndarray:
    """8-bit grey/RGB pixels of a pyramid level (2x2 means per step), cached beside the pixels."""
    from hrdv2.blocks.pyramid import downsample2
    from hrdv2.io import to_float01, write_npy

    path = store.root / "pixels" / f"{image['sha']}.L{level}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    if level == 0:
        px = store.pixels(image)
        arr = px if px.dtype == np.uint8 else np.round(to_float01(px) * 255).astype(np.uint8)
    else:
        finer = level_pixels(store, image, level - 1).astype(np.float32)
        arr = np.round(downsample2(finer, (0, 1), "intensity")).clip(0, 255).astype(np.uint8)
    write_npy(path, np.ascontiguousarray(arr))
    return arr


def tile(store: Any, image: dict, level: int, ty: int, tx: int) -> np.ndarray | None:
    """One TILE x TILE tile of a level (smaller at the right and bottom edges), or None outside."""
    arr = level_pixels(store, image, level)
    y0, x0 = ty * TILE, tx * TILE
    if ty < 0 or tx < 0 or y0 >= arr.shape[0] or x0 >= arr.shape[1]:
        return None
    return np.ascontiguousarray(arr[y0:y0 + TILE, x0:x0 + TILE])


def levels(image: dict, large_side: int) -> list[tuple[int, int]]:
    """(width, height) of levels 0..display level."""
    return [level_shape(image, k)[::-1] for k in range(display_level(image, large_side) + 1)]


# -- training --------------------------------------------------------------------------------
def scribbled_blocks(engine_config: Any, backbones: Any, pixels: np.ndarray, scribble: np.ndarray,
                     progress: Callable[[int, int], None] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels, scribble, features) of every block that holds scribbles: what ``Segmenter.fit``
    needs of a large image, without featurising the rest of it."""
    from hrdv2.blocks import as_lazy
    from hrdv2.engine import FeatureEngine
    from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for

    fe = FeatureEngine(engine_config, backbones=backbones)
    bf = BlockFeatures(fe, as_lazy(pixels), block_sizes_for(engine_config.kind, None))
    todo = [b for b in bf.plan if scribble[b.write].any()]
    out = []
    for k, block in enumerate(todo):
        feats = bf.features(pixels[block.read], block)
        out.append((np.asarray(pixels[block.write]), np.asarray(scribble[block.write]), feats))
        if progress:
            progress(k + 1, len(todo))
    return out


# -- prediction ------------------------------------------------------------------------------
class _ProbaNpy(BlockWriter):
    """Probabilities of each block into a float16 ``(H, W, K)`` .npy on disk (memory-mapped),
    its channels placed at the class values' positions; renamed into place by ``finish``."""

    def __init__(self, target: Path, shape: tuple[int, int], n_channels: int, columns: list[int]):
        self.target = target
        self.tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
        self.shape = (*shape, n_channels)
        self.columns = columns
        self.out: Any = None

    def start(self, plan: Any, resume: bool = True) -> set[int]:
        self.out = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float16, shape=self.shape)
        return set()

    def write(self, block: Any, data: np.ndarray) -> None:
        region = np.zeros((*block.write_shape, self.shape[-1]), np.float16)
        crop = data[block.crop] if data.shape[:2] != block.write_shape else data
        region[..., self.columns] = crop.astype(np.float16)
        self.out[block.write] = region

    def finish(self) -> Path:
        self.out.flush()
        del self.out
        os.replace(self.tmp, self.target)
        return self.target


def predict_blockwise(seg: Any, pixels: np.ndarray, folder: Path, image_id: int, n_classes: int,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Block-wise labels of a large image; writes ``<id>.labels.zarr`` (OME-Zarr pyramid) and
    ``<id>.proba.npy`` and returns the level-0 labels (uint8, what the label PNG is made of)."""
    import copy
    import shutil

    import zarr

    from hrdv2.segmentation.blockwise import label_writer, segment_blockwise

    seg = copy.copy(seg)
    seg.crf = False  # needs the whole image at once
    values = [int(v) for v in np.asarray(seg.classes_).ravel()]
    folder.mkdir(parents=True, exist_ok=True)
    zarr_path = folder / f"{image_id}.labels.zarr"
    proba = _ProbaNpy(folder / f"{image_id}.proba.npy", pixels.shape[:2], max(n_classes, max(values)),
                      [v - 1 for v in values])
    staged = folder / f".{image_id}.labels.zarr.new"
    shutil.rmtree(staged, ignore_errors=True)
    writer = label_writer("ome-zarr", staged, key=f"{image_id}")
    segment_blockwise(seg, pixels, writer, proba_writer=proba, progress=progress, resume=False)
    shutil.rmtree(zarr_path, ignore_errors=True)
    os.replace(staged, zarr_path)
    return np.asarray(zarr.open_group(str(zarr_path), mode="r")["0"][...], dtype=np.uint8)


def prediction_level(folder: Path, image: dict, level: int, labels_png: Path) -> np.ndarray:
    """Predicted labels at a pyramid level: from the OME-Zarr pyramid of a block-wise run, else
    every 2^level-th pixel of the label PNG."""
    import zarr

    from hrdv2.io import read_labels

    zarr_path = folder / f"{image['id']}.labels.zarr"
    if zarr_path.is_dir():
        group = zarr.open_group(str(zarr_path), mode="r")
        if str(level) in group:
            arr = np.asarray(group[str(level)][...], dtype=np.uint8)
            if arr.shape == level_shape(image, level):
                return arr
    step = 2 ** level
    return read_labels(labels_png).astype(np.uint8)[::step, ::step]
