"""Apply a trained :class:`Segmenter` block by block: any image or stack size in bounded memory.

Each block's features come from the model's own feature engine (:class:`hrdv2.engine.
BlockFeatures`), are classified at once and dropped; only the labels (or probabilities) of the
block are written, straight into an OME-Zarr / BigTIFF writer (or memory). With classical
features the labels equal a whole-image run's exactly. An interrupted run resumes: blocks
already written are skipped.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.blocks import ArrayWriter, BigTiffWriter, BlockWriter, LazyArray, OmeZarrWriter, as_lazy, map_blocks, open_array
from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for
from hrdv2.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.classical import COMPILED_MIN_PIXELS
from hrdv2.segmentation.compressed import predict_compressed
from hrdv2.segmentation.forest import labels_of

BLOCK_FORMATS = ("ome-zarr", "bigtiff")
BAND_PIXELS = 1 << 16  # feature rows classified per call when a block's features are a strided crop


def classify_block(seg: Any, feats: np.ndarray, threads: int | None = None) -> np.ndarray:
    """(N, K) class probabilities of a block's (..., F) features, N = the block's pixels.

    A block's classical features are a crop of its read window's, so flattening them whole would
    copy ~150 MB per 1024² block into fresh memory (page faults included: ~0.2-0.9 s measured on
    this 2-CPU machine); bands of ``BAND_PIXELS`` rows are copied into memory that is reused and
    stays in cache (~0.1 s for the same block). The result is the same. ``threads``: of the
    compiled forest (see :meth:`Segmenter.predict_proba_features`).
    """
    if feats.ndim != 3 or feats.flags.c_contiguous:
        return seg.predict_proba_features(feats.reshape(-1, feats.shape[-1]), threads)
    from hrdv2.segmentation.forest import fast_forest

    h, w, f = feats.shape
    fast_forest(seg, seg.model_, h * w)  # the compiled forest if a block this size would use it (bands are smaller)
    out = np.empty((h * w, len(seg.classes_)), np.float32)
    step = max(1, BAND_PIXELS // max(w, 1))
    for y in range(0, h, step):
        band = np.ascontiguousarray(feats[y : y + step]).reshape(-1, f)
        out[y * w : y * w + band.shape[0]] = seg.predict_proba_features(band, threads)
    return out


def _load_compiled(seg: Any, pixels: int) -> None:
    """Import numba and load the compiled kernels a large classical apply uses (the forest, packed
    once for all workers; the resampling of the features), so the first blocks do not wait."""
    from hrdv2.features.classical import _compiled
    from hrdv2.segmentation.forest import fast_forest

    # first calls on tiny arrays of the real calls' types: numba loads each kernel's cached code once
    fast = fast_forest(seg, seg.model_, pixels)
    k = len(seg.classes_)
    if fast is not None:
        probs = np.zeros((1, k), np.float32)
        fast(np.zeros((1, seg.n_features_in_), np.float32), probs, 1)
        labels_of(probs, seg.classes_.astype(np.uint8))
    kernels = _compiled(pixels)
    if kernels is not None:
        kernels.upsample2_into(np.zeros((1, 1, 1), np.float32), np.zeros((2, 2, 1), np.float32), 0, 0, 0)
        kernels.planes_into(np.zeros((1, 1, 1), np.float32), np.zeros((1, 1, 1), np.float32), 0, 0, 0)


def label_writer(fmt: str, target: str | Path, key: str, channels: int | None = None, proba: bool = False) -> BlockWriter:
    """The writer of labels (uint8, mode pyramid) or probabilities (float32, mean pyramid)."""
    dtype, kind = (np.float32, "intensity") if proba else (np.uint8, "labels")
    if fmt == "ome-zarr":
        return OmeZarrWriter(target, dtype, channels, kind=kind, key=key)
    if fmt == "bigtiff":
        return BigTiffWriter(target, dtype, channels, kind=kind, key=key)
    raise ConfigError(f"block-wise output format {fmt!r} is unknown; use one of {list(BLOCK_FORMATS)}.")


def segment_blockwise(
    seg: Any,
    source: str | Path | LazyArray | np.ndarray,
    writer: BlockWriter | None = None,
    *,
    block_size: int | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    proba: bool = False,
    proba_writer: BlockWriter | None = None,
    progress: Any = None,
    resume: bool = True,
    workers: int | None = None,
) -> Any:
    """Labels (uint8 class ids; ``proba=True``: float32 class probabilities, channel-last) of an
    image ``(Y, X[, C])`` or stack ``(Z, Y, X[, C])``, block by block.

    ``writer`` receives each block (default: an in-memory array, returned). ``proba_writer``
    additionally receives the probabilities of the same blocks in the same pass (written before
    the block's labels, so a block whose labels are done has its probabilities too). Returns
    ``writer.finish()``: the output path for disk writers. ``workers``: classical blocks computed
    at once (None: :func:`~hrdv2.engine.blockwise.block_parallelism`'s default; deep features run
    one block at a time).
    """
    seg._check_fitted()
    if seg.crf:
        raise ConfigError("the dense CRF needs the whole image at once, so it cannot run block-wise; apply with "
                          "--no-crf (or segment images that fit in memory whole).")
    lazy = open_array(source) if isinstance(source, (str, Path)) else as_lazy(source)
    channels = lazy.channels or 1
    if channels != seg.n_channels_:
        raise ShapeError(f"{lazy.name}: the model was trained on {seg.n_channels_}-channel images but this one has "
                         f"{channels}; convert it, or train a model on images like it.")
    size = block_sizes_for(seg.features.kind, block_size, tile, overlap, seg.features.volume, seg.features.planes)
    bf = BlockFeatures(seg.engine, lazy, size, tile=tile, overlap=overlap)
    warm = None
    pixels = int(np.prod(lazy.spatial_shape))
    if bf.parallel_safe and pixels >= COMPILED_MIN_PIXELS:
        warm = threading.Thread(target=_load_compiled, args=(seg, pixels),
                                name="hrdv2-load-kernels", daemon=True)
        warm.start()  # ~1 s of numba import and first calls, beside the statistics pass
    blocks_at_once = bf.use_workers(workers)
    threads = bf.threads
    if warm is not None:
        warm.join()  # the workers then share one packed forest (not joining measured no faster)
    classes = seg.classes_.astype(np.uint8)
    proba_lock = threading.Lock()

    def func(data: np.ndarray, block) -> np.ndarray:
        feats = bf.features(data, block)
        if seg.features.kind == "deep" and feats.ndim == 3:  # one prediction per distinct cell
            probs = predict_compressed(feats, seg.predict_proba_features)[0].reshape(-1, len(classes))
        else:
            probs = classify_block(seg, feats, threads)
        if proba_writer is not None:
            with proba_lock:  # written from the worker computing the block: one writer call at a time
                proba_writer.write(block, probs.reshape(feats.shape[:-1] + (probs.shape[-1],)))
        if proba:
            return probs.reshape(feats.shape[:-1] + (probs.shape[-1],))
        return labels_of(probs, classes).reshape(feats.shape[:-1])

    if writer is None:
        writer = ArrayWriter(np.float32 if proba else np.uint8, len(classes) if proba else None)
    if proba_writer is not None:
        proba_writer.start(bf.plan, resume=resume)
    try:
        result = map_blocks(lazy, bf.plan, func, writer, progress=progress, resume=resume, workers=blocks_at_once)
    finally:
        bf.close()  # deep xyz plane features on scratch disk are deleted
    if proba_writer is not None:
        proba_writer.finish()
    return result

