"""Run a per-block function over a plan, writing each block's result as soon as it is computed."""

from __future__ import annotations

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
) -> Any:
    """For each block not yet done: ``func(reader[block.read], block)``, crop, ``writer.write``.

    ``reader``: anything sliced by a tuple of slices over the plan's spatial axes (a
    :class:`~hrdv2.blocks.readers.LazyArray`, an ndarray); channels, if any, come along whole.
    ``func`` returns a channel-last result covering either the read window (it is then cropped
    to the write window) or the write window. ``progress``: a tqdm bar (``update`` is called per
    block; its ``total`` is set if unset) or a ``(done, total)`` callable; blocks found complete
    from an interrupted run count as done at once. ``resume=False`` discards any staged work.
    Memory: one block's input, result and the writer's copy are alive at a time. Returns
    ``writer.finish()`` (the target path, or the array of an :class:`ArrayWriter`).
    """
    done = writer.start(plan, resume=resume)
    hook = _progress_hook(progress, len(plan), len(done))
    count = len(done)
    for block in plan:
        if block.index in done:
            continue
        out = func(reader[block.read], block)
        spatial = tuple(out.shape[: len(plan.shape)])
        if spatial == block.read_shape:
            out = out[block.crop]
        elif spatial != block.write_shape:
            raise ShapeError(
                f"block {block.index}: the block function returned spatial shape {spatial}; expected the read window "
                f"{block.read_shape} or the write window {block.write_shape}."
            )
        writer.write(block, out)
        del out
        count += 1
        hook(count)
    return writer.finish()
