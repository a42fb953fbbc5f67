"""Block plans: how an N-d image (2D tiles, 3D bricks) is cut into blocks with a halo.

A block has a *write window* (the part of the output it owns; write windows tile the image
without overlap) and a *read window* (the write window grown by the halo on every side, clipped
at the image border, and with its ends aligned to a multiple of ``alignment``). The filter runs on
the read window; :attr:`Block.crop` cuts the write window out of its result.

Why clip instead of padding: at a true image border the block's read window ends exactly where
the image ends, so the filter's own boundary handling (reflect, nearest...) acts there exactly as
it does on the whole image; only interior read-window edges are wrong, and the halo keeps that
wrongness out of the write window. Why align: filters that work on a pyramid of 2x block means
(``hrdv2.features.classical``) only see the same block means as on the whole image when the read
window starts on a multiple of the largest block side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from hrdv2.errors import ConfigError

MIN_BLOCK_SIZE = 16  # px per side on axes with a halo: smaller blocks are mostly halo (re-read, re-computed)
DEFAULT_BLOCK_SIZE = 1024  # px per side: ~1 Mpx tiles keep classical features well under 1 GB


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int,)) or hasattr(value, "__index__"):
        return (int(value),) * ndim
    vals = tuple(int(v) for v in value)
    if len(vals) != ndim:
        raise ConfigError(f"{name} {list(vals)} has {len(vals)} values for a {ndim}-d image; give one value or {ndim}.")
    return vals


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class Block:
    """One block of a plan. Windows are tuples of slices in image coordinates (spatial axes only)."""

    index: int  # position in plan order (C order over the block grid): the id used for resume
    grid: tuple[int, ...]  # block coordinates in the grid
    write: tuple[slice, ...]
    read: tuple[slice, ...]

    @property
    def crop(self) -> tuple[slice, ...]:
        """The write window in the coordinates of the read window: ``result_of_read[crop]``."""
        return tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(self.write, self.read))

    @property
    def write_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.write)

    @property
    def read_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.read)


@dataclass(frozen=True)
class BlockPlan:
    """Blocks over ``shape``; iterate it, index it by block id, or ask its length."""

    shape: tuple[int, ...]  # spatial shape of the image
    block_shape: tuple[int, ...]  # write-window side per axis (edge blocks may be smaller)
    halo: tuple[int, ...]
    alignment: tuple[int, ...]

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block_shape))

    def __len__(self) -> int:
        n = 1
        for g in self.grid_shape:
            n *= g
        return n

    def __getitem__(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range 0..{len(self) - 1}")
        grid: list[int] = []
        rest = index
        for g in reversed(self.grid_shape):
            grid.append(rest % g)
            rest //= g
        grid.reverse()
        write, read = [], []
        for i, n, b, h, a in zip(grid, self.shape, self.block_shape, self.halo, self.alignment):
            w0, w1 = i * b, min((i + 1) * b, n)
            r0 = max(0, (w0 - h) // a * a)
            r1 = min(n, _round_up(w1 + h, a))
            write.append(slice(w0, w1))
            read.append(slice(r0, r1))
        return Block(index, tuple(grid), tuple(write), tuple(read))

    def __iter__(self) -> Iterator[Block]:
        return (self[i] for i in range(len(self)))

    @property
    def max_read_shape(self) -> tuple[int, ...]:
        """The largest read window: what bounds the memory of one block in flight."""
        return tuple(
            min(n, _round_up(b + 2 * h + a, a)) for n, b, h, a in zip(self.shape, self.block_shape, self.halo, self.alignment)
        )


def plan_blocks(
    shape: Sequence[int],
    block_size: int | Sequence[int] = DEFAULT_BLOCK_SIZE,
    halo: int | Sequence[int] = 0,
    alignment: int | Sequence[int] = 1,
) -> BlockPlan:
    """Cut a spatial ``shape`` into blocks of ``block_size`` (per axis or one for all) with ``halo``.

    Block sides are rounded up to a multiple of ``alignment`` (so every block origin is aligned),
    and read windows start and end on multiples of it (or at the image border). Blocks may be
    smaller than the halo, and the image need not be a multiple of the block size (edge blocks are
    smaller). Axes without a halo may use any block side >= 1 (e.g. one page of a stack at a time);
    axes with a halo need at least :data:`MIN_BLOCK_SIZE`.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if ndim == 0 or any(n < 1 for n in shape):
        raise ConfigError(f"cannot plan blocks over an image of shape {shape}; every side must be >= 1 px.")
    sizes = _per_axis(block_size, ndim, "block size")
    halos = _per_axis(halo, ndim, "halo")
    aligns = _per_axis(alignment, ndim, "alignment")
    if any(h < 0 for h in halos) or any(a < 1 for a in aligns):
        raise ConfigError(f"halo must be >= 0 and alignment >= 1, got halo {list(halos)}, alignment {list(aligns)}.")
    for b, h in zip(sizes, halos):
        low = MIN_BLOCK_SIZE if h > 0 else 1
        if b < low:
            raise ConfigError(
                f"block size {b} px is below the minimum of {low} px per side; use a block size of at least "
                f"{low} (default {DEFAULT_BLOCK_SIZE})."
            )
    sizes = tuple(_round_up(b, a) for b, a in zip(sizes, aligns))
    return BlockPlan(shape, sizes, halos, aligns)
