"""Notebook API: a trained Segmenter as a lazy dask array, and a resumable OME-Zarr writer.

::

    import dask.array as da
    from distributed import Client
    from hrdv2.distributed import segment_dask, write_ome_zarr

    client = Client(n_workers=4, threads_per_worker=1)     # optional: any scheduler works
    labels = segment_dask(seg, "volume.zarr", block_size=512)   # or a dask / numpy array
    fractions = da.bincount(labels.ravel(), minlength=4).compute()   # compose with dask, dask-image, xarray
    write_ome_zarr(labels, "volume_labels.ome.zarr")        # block by block, resumable

Each output chunk is one block of the engine's block plan: its task reads the block's *read
window* (the write window grown by the features' halo, aligned as the engine requires) and
returns the write window, so the result equals ``segment_blockwise`` (and the CLI) exactly.
Whole-page intensity statistics are computed once on the client (a block-wise pass) and shipped
with the graph, so every block is normalised as the whole image would be.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hrdv2.distributed.runner import WriterSpec
from hrdv2.distributed.worker import ModelRef, StatePlugin, WorkerState, worker_state
from hrdv2.engine.blockwise import BlockFeatures
from hrdv2.errors import ConfigError, ShapeError


class _SeededBlockFeatures(BlockFeatures):
    """BlockFeatures whose page statistics were computed elsewhere (on the client, once)."""

    def __init__(self, *args: Any, norms: dict, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._norms.update(norms)  # keyed as normalisation() keys them (-1: a whole volume)


class _LocalState:
    """A WorkerState for the threaded / synchronous schedulers; pickled (to a Dask worker) it
    arrives empty and the worker's own state is used instead."""

    def __init__(self, state: WorkerState | None = None) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        return (_LocalState, (None,))


def _shape_stub(shape: tuple[int, ...], dtype: Any, channels: bool, name: str) -> Any:
    """A LazyArray with the image's shape and dtype but no pixels (BlockFeatures needs only those)."""
    from hrdv2.blocks import as_lazy

    return as_lazy(np.broadcast_to(np.zeros((), dtype), shape), channels=channels, name=name)


def _segment_block(ref: ModelRef, local: _LocalState, params: tuple, norms: dict, data: np.ndarray,
                   index: int) -> np.ndarray:
    """One block's labels (or probabilities) from its read-window pixels ``data``."""
    shape, dtype, channels, name, side, tile, overlap, proba, _ = params
    state = worker_state(local.state)
    seg = state.resolve(ref)
    bf = state.context(("dask-array", ref.key, params), lambda: _SeededBlockFeatures(
        seg.engine, _shape_stub(shape, dtype, channels, name), side, tile=tile, overlap=overlap, norms=norms))
    block = bf.plan[index]
    feats = bf.features(np.asarray(data), block)
    probs = seg.predict_proba_features(feats.reshape(-1, feats.shape[-1]))
    if proba:
        return probs.reshape(feats.shape[:-1] + (probs.shape[-1],))
    return seg.classes_.astype(np.uint8)[np.argmax(probs, axis=-1)].reshape(feats.shape[:-1])


def _assemble(pieces: dict[tuple[int, ...], Any], grid: tuple[int, ...], axis: int = 0, prefix: tuple = ()) -> Any:
    """Concatenate per-block dask arrays along each spatial axis in turn (any trailing channel axis stays)."""
    import dask.array as da

    if axis == len(grid):
        return pieces[prefix]
    return da.concatenate([_assemble(pieces, grid, axis + 1, prefix + (i,)) for i in range(grid[axis])], axis=axis)


def _register_plugin() -> None:
    """On a distributed client, make sure the workers keep loaded models (idempotent)."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return
    client.register_plugin(StatePlugin())


def segment_dask(seg: Any, source: Any, *, block_size: int | None = None, tile: int | None = None,
                 overlap: int | None = None, proba: bool = False) -> Any:
    """A lazy dask array of ``seg``'s labels (uint8, the image's spatial shape) or, with
    ``proba=True``, class probabilities (float32, channel-last) of ``source``: a dask array, a
    numpy array or a path ``open_array`` reads (zarr, OME-Zarr, TIFF, .npy). Chunks are the
    engine's blocks (``block_size`` px per side; default as ``hrdv2 apply``); computing it runs one
    task per block on the current Dask scheduler. A distributed client, if any, must exist first
    (the hrdv2 worker plugin is registered on it)."""
    import dask
    import dask.array as da

    from hrdv2.blocks import as_lazy, open_array
    from hrdv2.engine.blockwise import block_sizes_for
    from hrdv2.engine.tiling import DEFAULT_TILE

    if not hasattr(seg, "classes_"):
        raise ConfigError("segment_dask needs a trained Segmenter; call fit() or Segmenter.load() first.")
    if seg.crf:
        raise ConfigError("the dense CRF needs the whole image at once, so it cannot run block-wise; set seg.crf = False.")
    tile = DEFAULT_TILE if tile is None else int(tile)
    overlap = tile // 8 if overlap is None else int(overlap)
    if isinstance(source, (str, os.PathLike)):
        lazy = open_array(source)
        array = da.from_array(lazy, chunks=lazy.shape, name=f"hrdv2-source-{Path(source).name}-{os.urandom(4).hex()}")
    else:
        array = source if isinstance(source, da.Array) else da.from_array(np.asarray(source))
        lazy = as_lazy(array, name="dask array")  # reads regions by computing them (statistics pass only)
    if (lazy.channels or 1) != seg.n_channels_:
        raise ShapeError(f"{lazy.name}: the model was trained on {seg.n_channels_}-channel images but this one has "
                         f"{lazy.channels or 1}; convert it, or train a model on images like it.")
    side = block_sizes_for(seg.features.kind, block_size, tile, overlap, seg.features.volume, seg.features.planes)
    bf = BlockFeatures(seg.engine, lazy, side, tile=tile, overlap=overlap)
    norms = {z: bf.normalisation(z) for z in bf.normalisation_keys()}  # one statistics pass per page (or volume), once
    params = (tuple(lazy.shape), lazy.dtype.str, lazy.has_channels, lazy.name, side, tile, overlap, bool(proba),
              dask.base.tokenize(norms))
    _register_plugin()
    ref = dask.delayed(ModelRef.from_segmenter(seg), pure=True)  # one graph key: shipped once per worker
    local = dask.delayed(_LocalState(WorkerState()), pure=False)
    norms_key = dask.delayed(norms, pure=True)
    n_classes = len(seg.classes_)
    out_dtype = np.float32 if proba else np.uint8
    pieces = {}
    for block in bf.plan:
        data = array[block.read]
        task = dask.delayed(_segment_block, pure=True)(ref, local, params, norms_key, data, block.index)
        shape = block.write_shape + ((n_classes,) if proba else ())
        pieces[block.grid] = da.from_delayed(task, shape=shape, dtype=out_dtype)
    return _assemble(pieces, bf.plan.grid_shape)


def _write_chunk(spec: WriterSpec, plan: Any, index: int, data: np.ndarray) -> int:
    spec.attach(plan).write(plan[index], np.asarray(data))
    return index


def write_ome_zarr(array: Any, target: str | os.PathLike, *, kind: str = "labels", channels: bool = False,
                   key: str = "", resume: bool = True) -> Path:
    """Write a dask array ``(Y, X)`` / ``(Z, Y, X)``, or with ``channels=True`` a channel-last
    ``(..., C)`` one (probabilities: ``kind="intensity", channels=True``), to an OME-Zarr with a
    pyramid (mode for labels, mean for intensities), chunk by chunk on the current scheduler. The
    store is staged in ``TARGET.partial/`` with a marker per written chunk: an interrupted write,
    run again with the same ``key``, computes only the missing chunks."""
    import dask
    import dask.array as da

    from hrdv2.blocks import OmeZarrWriter
    from hrdv2.blocks.plan import plan_blocks

    array = array if isinstance(array, da.Array) else da.from_array(np.asarray(array))
    spatial = array.shape[:-1] if channels else array.shape
    if len(spatial) not in (2, 3):
        raise ShapeError(f"write_ome_zarr takes (Y, X[, C]) or (Z, Y, X[, C]) arrays, got shape {array.shape}.")
    block_shape = tuple(c[0] for c in array.chunks[: len(spatial)])
    array = array.rechunk(block_shape + ((array.shape[-1],) if channels else ()))
    plan = plan_blocks(spatial, block_shape)
    writer = OmeZarrWriter(target, array.dtype, array.shape[-1] if channels else None, kind=kind, key=key)
    done = writer.start(plan, resume=resume)
    spec = WriterSpec.of(writer).started(writer)
    tail = (0,) if channels else ()
    tasks = [dask.delayed(_write_chunk, pure=False)(spec, plan, b.index, array.blocks[b.grid + tail])
             for b in plan if b.index not in done]
    dask.compute(*tasks)
    return writer.finish()

