"""Block-by-block writers: OME-Zarr (NGFF 0.4 / 0.5, multiscale), tiled BigTIFF (SubIFD pyramid), memory.

Every writer takes channel-last blocks (``(*write_shape)`` or ``(*write_shape, C)``) through the
same three calls: ``start(plan, resume) -> completed block ids``, ``write(block, data)``,
``finish() -> result``. :func:`hrdv2.blocks.run.map_blocks` drives them.

Interrupted runs. The disk writers stage everything in ``TARGET.partial/`` beside the target: a
``manifest.json`` (what is being written: shape, blocks, dtype, a caller's ``key``), a ``done/``
folder with one empty marker per completed block (created after the block's data is stored), and
a zarr group holding level 0. A re-run with the same manifest skips the marked blocks; a different
manifest (other image, config, block size) discards the stage. Only ``finish`` builds the pyramid
and moves the result to the target (a folder rename for OME-Zarr, ``hrdv2.io.atomic_path`` for
the TIFF), so nothing half-written ever sits at the target.

Pyramids halve Y and X per level (Z is kept: volumes are often anisotropic, and viewers page
through Z) until the level fits one chunk: the mode of each 2x2 for label maps (a thin class is
kept where nearest sampling would drop it at random), the mean for intensities.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from hrdv2.blocks.plan import Block, BlockPlan, plan_blocks
from hrdv2.blocks.pyramid import downsample2, pyramid_shapes
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.io import atomic_path, write_text_atomic

KINDS = ("labels", "intensity")
NGFF_VERSIONS = ("0.4", "0.5")


# --------------------------------------------------------------------------- data checks

def label_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned integer type that holds class ids 0..n_classes."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_classes <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def check_format_holds(fmt: str, dtype: Any, channels: int | None = None, max_value: float | None = None) -> None:
    """Raise a one-line ConfigError if output format ``fmt`` ("png", "tiff", "bigtiff", "ome-zarr",
    "zarr", "npy") cannot hold ``dtype`` data with ``channels`` channels up to ``max_value``
    (e.g. 300 classes in uint8, float probabilities in PNG). Call it before a run starts."""
    dt = np.dtype(dtype)
    fmt = fmt.lower()
    if fmt == "png":
        if dt.kind == "f":
            raise ConfigError(f"PNG cannot hold {dt} data; write tiff, bigtiff or ome-zarr instead.")
        if dt not in (np.uint8, np.uint16) or (channels not in (None, 1, 3, 4)) or (channels in (3, 4) and dt != np.uint8):
            raise ConfigError(
                f"PNG holds 8/16-bit grey or 8-bit RGB(A), not {dt} with {channels} channels; write tiff or ome-zarr instead."
            )
    if max_value is not None and dt.kind in "iu" and max_value > np.iinfo(dt).max:
        raise ConfigError(
            f"{max_value:g} does not fit in {dt} (max {np.iinfo(dt).max}); use {label_dtype(int(max_value))} "
            f"({'tiff, bigtiff or ome-zarr' if fmt == 'png' and max_value > 65535 else 'a wider type'})."
        )


def _check_block(data: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``data`` cast to ``dtype``, refusing casts that would change values (float -> int, overflow)."""
    if data.dtype == dtype:
        return data
    if dtype.kind in "iu":
        if data.dtype.kind == "f":
            raise ConfigError(f"{where}: float data cannot be written to a {dtype} output; write a float dtype (float32).")
        if data.size and data.dtype.kind in "iu":
            lo, hi = int(data.min()), int(data.max())
            info = np.iinfo(dtype)
            if lo < info.min or hi > info.max:
                bad = hi if hi > info.max else lo
                raise ConfigError(
                    f"{where}: value {bad} does not fit in {dtype} ({info.min}..{info.max}); write {label_dtype(max(hi, 0))} instead."
                )
    return data.astype(dtype, copy=False)


# --------------------------------------------------------------------------- writers

class BlockWriter:
    """Interface: ``start(plan, resume) -> set of completed block ids``, ``write(block, data)``,
    ``finish() -> result``."""

    def start(self, plan: BlockPlan, resume: bool = True) -> set[int]:
        raise NotImplementedError

    def write(self, block: Block, data: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> Any:
        raise NotImplementedError

    def _shape_check(self, block: Block, data: np.ndarray, channels: int | None, where: str) -> np.ndarray:
        want = block.write_shape + ((channels,) if channels is not None else ())
        if channels is None and data.shape == block.write_shape + (1,):
            data = data[..., 0]
        if data.shape != want:
            raise ShapeError(f"{where}: block {block.index} result has shape {data.shape}, expected {want}.")
        return data


class ArrayWriter(BlockWriter):
    """Blocks into one in-memory numpy array (images that fit; tests). No resume."""

    def __init__(self, dtype: Any = np.float32, channels: int | None = None) -> None:
        self.dtype = np.dtype(dtype)
        self.channels = channels
        self.result: np.ndarray | None = None

    def start(self, plan: BlockPlan, resume: bool = True) -> set[int]:
        self.result = np.empty(plan.shape + ((self.channels,) if self.channels is not None else ()), self.dtype)
        return set()

    def write(self, block: Block, data: np.ndarray) -> None:
        assert self.result is not None, "start() first"
        data = self._shape_check(block, data, self.channels, "array output")
        self.result[block.write] = _check_block(data, self.dtype, "array output")

    def finish(self) -> np.ndarray:
        assert self.result is not None, "start() first"
        return self.result


class _StagedZarr(BlockWriter):
    """Level 0 staged in ``TARGET.partial/stage.zarr`` with done markers (see module docstring)."""

    fmt = "staged"
    channel_first = False
    zarr_format = 3

    def __init__(
        self,
        target: str | os.PathLike,
        dtype: Any,
        channels: int | None = None,
        *,
        kind: str = "intensity",
        key: str = "",
        n_levels: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"output kind must be one of {list(KINDS)}, got {kind!r}.")
        self.target = Path(target)
        self.dtype = np.dtype(dtype)
        self.channels = channels
        self.kind = kind
        self.key = key
        self.n_levels = n_levels
        self.partial = self.target.with_name(self.target.name + ".partial")
        self._plan: BlockPlan | None = None
        self._level0: Any = None

    # -- layout
    def _array_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        if self.channels is None:
            return tuple(spatial)
        return (self.channels, *spatial) if self.channel_first else (*spatial, self.channels)

    def _chunks(self, spatial_chunk: Sequence[int], spatial: Sequence[int]) -> tuple[int, ...]:
        chunk = tuple(min(c, n) for c, n in zip(spatial_chunk, spatial))
        if self.channels is None:
            return chunk
        c = self.channels if (self.channels <= 4 or not self.channel_first) else 1
        return (c, *chunk) if self.channel_first else (*chunk, c)

    def _region(self, spatial: tuple[slice, ...]) -> tuple[slice, ...]:
        if self.channels is None:
            return spatial
        return (slice(None), *spatial) if self.channel_first else (*spatial, slice(None))

    def _manifest(self, plan: BlockPlan) -> dict:
        return {
            "format": self.fmt, "shape": list(plan.shape), "block_shape": list(plan.block_shape),
            "halo": list(plan.halo), "dtype": self.dtype.str, "channels": self.channels, "kind": self.kind,
            "key": self.key, "zarr_format": self.zarr_format,
        }

    @property
    def _store(self) -> Path:
        return self.partial / "stage.zarr"

    # -- protocol
    def start(self, plan: BlockPlan, resume: bool = True) -> set[int]:
        import zarr

        self._plan = plan
        manifest = self._manifest(plan)
        mpath = self.partial / "manifest.json"
        if resume and mpath.exists() and self._store.exists():
            try:
                same = json.loads(mpath.read_text()) == manifest
            except (OSError, ValueError):
                same = False
            if same:
                self._level0 = zarr.open_array(str(self._store / "0"), mode="r+")
                done_dir = self.partial / "done"
                return {int(p.name) for p in done_dir.iterdir() if p.name.isdigit()} if done_dir.exists() else set()
        if self.partial.exists():
            shutil.rmtree(self.partial)
        (self.partial / "done").mkdir(parents=True)
        group = zarr.open_group(str(self._store), mode="w", zarr_format=self.zarr_format)
        self._level0 = self._create(group, "0", plan.shape, plan.block_shape)
        write_text_atomic(mpath, json.dumps(manifest))
        return set()

    def _create(self, group: Any, name: str, spatial: Sequence[int], chunk: Sequence[int]) -> Any:
        kw: dict[str, Any] = {}
        if self.zarr_format == 3 and getattr(self, "dimension_names", None):
            kw["dimension_names"] = self.dimension_names
        return group.create_array(
            name, shape=self._array_shape(spatial), chunks=self._chunks(chunk, spatial), dtype=self.dtype,
            fill_value=0, overwrite=True, **kw,  # overwrite: levels of a finish() that was interrupted
        )

    def write(self, block: Block, data: np.ndarray) -> None:
        if self._level0 is None:
            raise RuntimeError("start() first")
        where = str(self.target)
        data = _check_block(self._shape_check(block, data, self.channels, where), self.dtype, where)
        if self.channels is not None and self.channel_first:
            data = np.moveaxis(data, -1, 0)
        self._level0[self._region(block.write)] = data
        (self.partial / "done" / str(block.index)).touch()

    def _build_levels(self) -> list[Any]:
        """Every pyramid level as a zarr array of the stage group, each built block by block from
        the one before (memory: 4 chunks)."""
        import zarr

        assert self._plan is not None
        plan = self._plan
        group = zarr.open_group(str(self._store), mode="r+")
        shapes = pyramid_shapes(plan.shape, plan.block_shape, self.n_levels)
        levels = [self._level0]
        nd = len(plan.shape)
        off = 1 if (self.channels is not None and self.channel_first) else 0
        yx_axes = (off + nd - 2, off + nd - 1)
        for k, shape in enumerate(shapes[1:], start=1):
            src = levels[-1]
            dst = self._create(group, str(k), shape, plan.block_shape)
            for b in plan_blocks(shape, plan.block_shape):
                read = tuple(
                    slice(2 * s.start, min(2 * s.stop, n)) if i >= nd - 2 else s
                    for i, (s, n) in enumerate(zip(b.write, shapes[k - 1]))
                )
                dst[self._region(b.write)] = downsample2(np.asarray(src[self._region(read)]), yx_axes, self.kind)
            levels.append(dst)
        return levels

    def _discard_stage(self) -> None:
        if self.partial.exists():
            shutil.rmtree(self.partial)


def _replace_dir(src: Path, target: Path) -> None:
    """Move folder ``src`` to ``target``, replacing an old ``target`` (moved aside first, then removed)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


class OmeZarrWriter(_StagedZarr):
    """OME-Zarr image (NGFF ``0.4``: zarr v2; ``0.5``: zarr v3) with a multiscale pyramid.

    Arrays are ``(c, [z,] y, x)`` (channels first, as NGFF orders axes; blocks still arrive
    channel-last), chunked by the plan's block shape (one channel per chunk beyond 4 channels)."""

    fmt = "ome-zarr"
    channel_first = True

    def __init__(self, target: str | os.PathLike, dtype: Any, channels: int | None = None, *, ngff: str = "0.5",
                 kind: str = "intensity", key: str = "", n_levels: int | None = None, name: str | None = None) -> None:
        if ngff not in NGFF_VERSIONS:
            raise ConfigError(f"NGFF version must be one of {list(NGFF_VERSIONS)}, got {ngff!r}.")
        super().__init__(target, dtype, channels, kind=kind, key=key, n_levels=n_levels)
        self.ngff = ngff
        self.zarr_format = 3 if ngff == "0.5" else 2
        self.name = name or self.target.name.split(".")[0]

    @property
    def dimension_names(self) -> list[str]:
        assert self._plan is not None
        names = ["z", "y", "x"][-len(self._plan.shape):] if len(self._plan.shape) <= 3 else None
        if names is None:
            raise ConfigError(f"OME-Zarr holds at most 3 spatial axes (z, y, x); got shape {self._plan.shape}.")
        return (["c"] if self.channels is not None else []) + names

    def start(self, plan: BlockPlan, resume: bool = True) -> set[int]:
        self._plan = plan
        self.dimension_names  # refuses > 3 spatial axes before anything is written
        return super().start(plan, resume)

    def _metadata(self, n_levels: int) -> dict:
        nd = len(self._plan.shape)  # type: ignore[union-attr]
        axes = [{"name": "c", "type": "channel"}] if self.channels is not None else []
        axes += [{"name": n, "type": "space"} for n in ["z", "y", "x"][-nd:]]
        datasets = []
        for k in range(n_levels):
            scale = [1.0] * (len(axes) - 2) + [float(2**k), float(2**k)]
            datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
        ms: dict[str, Any] = {
            "name": self.name, "axes": axes, "datasets": datasets,
            "type": "mode" if self.kind == "labels" else "mean",
            "metadata": {"description": "2x2 " + ("mode" if self.kind == "labels" else "mean") + " in y, x per level",
                         "written_by": "hrdv2"},
        }
        if self.ngff == "0.4":
            return {"multiscales": [{"version": "0.4", **ms}]}
        return {"ome": {"version": "0.5", "multiscales": [ms]}}

    def finish(self) -> Path:
        import zarr

        levels = self._build_levels()
        group = zarr.open_group(str(self._store), mode="r+")
        group.attrs.update(self._metadata(len(levels)))
        _replace_dir(self._store, self.target)
        self._discard_stage()
        return self.target


class BigTiffWriter(_StagedZarr):
    """Tiled BigTIFF (zlib), pyramid levels as SubIFDs (reduced-resolution, ``subfiletype=1``).

    Z becomes pages (each page with its own SubIFDs); channels are contiguous samples (RGB when
    3 x uint8). Tiles match the block's Y, X sides (multiples of 16 as TIFF requires: rounded
    down, at least 16, at most 1024)."""

    fmt = "bigtiff"

    def __init__(self, target: str | os.PathLike, dtype: Any, channels: int | None = None, *, kind: str = "intensity",
                 key: str = "", n_levels: int | None = None, compression: str | None = "zlib") -> None:
        super().__init__(target, dtype, channels, kind=kind, key=key, n_levels=n_levels)
        self.compression = compression

    def _chunks(self, spatial_chunk: Sequence[int], spatial: Sequence[int]) -> tuple[int, ...]:
        # one page per stage chunk: TIFF tiles are read page by page, so a deeper chunk would be
        # decompressed once per page it holds
        return super()._chunks((1,) * (len(spatial_chunk) - 2) + tuple(spatial_chunk[-2:]), spatial)

    def tile_shape(self) -> tuple[int, int]:
        assert self._plan is not None
        return tuple(min(1024, max(16, b // 16 * 16)) for b in self._plan.block_shape[-2:])  # type: ignore[return-value]

    def _tiles(self, arr: Any, tile: tuple[int, int]) -> Iterator[np.ndarray]:
        nd = len(self._plan.shape)  # type: ignore[union-attr]
        spatial = arr.shape[:nd]
        pages = np.ndindex(*spatial[:-2])
        ty, tx = tile
        for page in pages:
            for y in range(0, spatial[-2], ty):
                for x in range(0, spatial[-1], tx):
                    yield np.asarray(arr[page + (slice(y, y + ty), slice(x, x + tx))])

    def finish(self) -> Path:
        import tifffile

        levels = self._build_levels()
        tile = self.tile_shape()
        photometric = "rgb" if self.channels == 3 and self.dtype == np.uint8 else "minisblack"
        kw: dict[str, Any] = {
            "tile": tile, "compression": self.compression, "photometric": photometric, "dtype": self.dtype,
            "metadata": None,  # tifffile's "shaped" JSON does not describe SubIFD levels; series come from pages
        }
        if self.channels is not None:
            kw["planarconfig"] = "contig"
        with atomic_path(self.target) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
                for k, arr in enumerate(levels):
                    extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
                    tif.write(self._tiles(arr, tile), shape=tuple(arr.shape), **kw, **extra)
        self._discard_stage()
        return self.target
