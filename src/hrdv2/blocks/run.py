"""Run a per-block function over a plan, writing each block's result as soon as it is computed.

With ``workers > 1`` several blocks are computed at once, each on its own thread: reading and
writing stay on the calling thread, in plan order, so writers need no locks and an interrupted run
leaves the same done markers as a serial one. Why threads per block rather than threads inside a
block: on the 2-CPU machine a block's stages (filters, forest) reach only ~1.4x with two threads
each, while two blocks side by side reach ~1.95x (measured in ``benchmarks/blockwise.py``).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from hrdv2.blocks.plan import Block, BlockPlan
from hrdv2.blocks.writers import BlockWriter
from hrdv2.errors import ShapeError

BlockFunc = Callable[[np.ndarray, Block], np.ndarray]


def _progress_hook(progress: Any, total: int, already: int) -> Callable[[int], None]:
    """A ``done_so_far -> None`` hook for a tqdm-like object (``update``) or a ``(done, total)`` callable."""
    if progress is None:
        return lambda done: None
    if hasattr(progress, "update"):
        if getattr(progress, "total", None) is None and hasattr(progress, "total"):
            progress.total = total
        if already:
            progress.update(already)
        return lambda done: progress.update(1)
    if already:
        progress(already, total)
    return lambda done: progress(done, total)


def map_blocks(
    reader: Any,
    plan: BlockPlan,
    func: BlockFunc,
    writer: BlockWriter,
    progress: Any = None,
    resume: bool = True,
    workers: int = 1,
) -> Any:
    """For each block not yet done: ``func(reader[block.read], block)``, crop, ``writer.write``.

    ``reader``: anything sliced by a tuple of slices over the plan's spatial axes (a
    :class:`~hrdv2.blocks.readers.LazyArray`, an ndarray); channels, if any, come along whole.
    ``func`` returns a channel-last result covering either the read window (it is then cropped
    to the write window) or the write window. ``progress``: a tqdm bar (``update`` is called per
    block; its ``total`` is set if unset) or a ``(done, total)`` callable; blocks found complete
    from an interrupted run count as done at once. ``resume=False`` discards any staged work.
    ``workers``: blocks computed at once, on threads (``func`` must then be safe to call from
    several threads); one more block is read ahead and results are written in plan order.
    Memory: per block in flight, its input, result and the writer's copy. Returns
    ``writer.finish()`` (the target path, or the array of an :class:`ArrayWriter`).
    """
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    done = writer.start(plan, resume=resume)
    hook = _progress_hook(progress, len(plan), len(done))
    count = len(done)
    todo = [block for block in plan if block.index not in done]

    def finish_block(block: Block, out: np.ndarray) -> None:
        nonlocal count
        writer.write(block, _write_window(out, block, len(plan.shape)))
        count += 1
        hook(count)

    if workers == 1 or len(todo) < 2:
        for block in todo:
            finish_block(block, func(reader[block.read], block))
        return writer.finish()
    pending: deque[tuple[Block, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hrdv2-block") as pool:
        try:
            for block in todo:
                if len(pending) > workers:  # bounded: `workers` blocks computing, one read and queued
                    oldest, future = pending.popleft()
                    finish_block(oldest, future.result())
                pending.append((block, pool.submit(func, reader[block.read], block)))
            while pending:
                oldest, future = pending.popleft()
                finish_block(oldest, future.result())
        except BaseException:
            for _, future in pending:  # an error (or Ctrl-C) stops the run: drop queued blocks
                future.cancel()
            raise
    return writer.finish()


def _write_window(out: np.ndarray, block: Block, ndim: int) -> np.ndarray:
    """``out`` cropped to the block's write window if it covers the read window (checked)."""
    spatial = tuple(out.shape[:ndim])
    if spatial == block.read_shape:
        return out[block.crop]
    if spatial != block.write_shape:
        raise ShapeError(
            f"block {block.index}: the block function returned spatial shape {spatial}; expected the read window "
            f"{block.read_shape} or the write window {block.write_shape}."
        )
    return out
