"""The engine's block-wise side: features of one block of a large image or stack.

:class:`BlockFeatures` plans blocks over a lazy image ``(Y, X[, C])`` or stack ``(Z, Y, X[, C])``
(pages are featurised one by one, as whole-image runs do) and computes any block's features:

* classical: the block's read window (write window + a halo that covers every filter's support,
  origins aligned to the filters' pyramid) normalised with the *whole page's* statistics, then
  cropped: equal to whole-image features to float precision;
* deep: blended tiles on a global grid (:mod:`hrdv2.engine.tiling`): equal to a whole-image
  tiled run, without seams between blocks; each tile is computed once (blocks in raster order),
  its parts that later blocks need held in a :class:`~hrdv2.engine.tiling.TileStore`;
* volume mode (``config.volume``): classical filters in 3D over bricks of a (Z, Y, X) volume,
  with a 3-D halo, normalised with the whole volume's statistics: equal to whole-volume features;
* hybrid: classical and deep parts of each block as above (halo and alignment of both),
  standardised with the whole page's per-channel statistics, computed first by a block-wise
  pass (:meth:`BlockFeatures.hybrid_statistics`): equal to a whole-image (tiled) hybrid run, at
  the price of computing the deep tiles twice;
* deep features of a volume (``volume=True``): ``planes="xy"`` runs page by page like a stack
  (blended tiles, bounded memory) with the whole volume's statistics; ``planes="xyz"`` computes
  every slice's features at the first brick (:mod:`hrdv2.engine.planes`) and keeps their mean in
  memory when it fits under ``max_held_bytes``, else on scratch disk (``scratch``), read back
  brick by brick (thin bricks: at most :data:`DEEP_BRICK_BYTES` of features each).

Memory is one block in flight (deep features: plus one tile and the held strip of the next
block row, ``held_rows * W * C * 4`` bytes, refused above ``max_strip_bytes``). Classical blocks
may also run several at once (:meth:`BlockFeatures.prepare_parallel`, ``threads=1``): then as
many blocks as workers are in flight.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from hrdv2.blocks import DEFAULT_BLOCK_SIZE, Block, BlockPlan, LazyArray, plan_blocks
from hrdv2.engine.core import FeatureEngine, check_finite_volume
from hrdv2.engine.planes import (DiskPlanes, HeldPlanes, check_scratch, disk_planes_bytes, n_slices,
                                 planes_fit_in_memory, scratch_folder)
from hrdv2.engine.tiling import (DEFAULT_OVERLAP, DEFAULT_TILE, TileGrid, TileStore, blended_features, held_extent,
                                 tile_coverage)
from hrdv2.errors import ConfigError, ResourceLimitError, ShapeError
from hrdv2.features.blockwise import Normalisation, image_normalisation, normalise_block
from hrdv2.features.classical import classical_alignment, classical_features, classical_halo
from hrdv2.features.sets import n_classical, standardise


MAX_PARALLEL_BLOCKS = 2  # classical blocks computed at once by default (each with cpus // 2 threads)


def block_parallelism(workers: int | None) -> tuple[int, int]:
    """(blocks computed at once, threads inside each block) for ``workers`` (None: the default).

    Why two blocks by default: on 2 CPUs two single-threaded blocks side by side run 1.95x one
    block, where one block on two threads reaches ~1.4x (its filter and forest stages do not split
    evenly); more blocks at once would only add memory (one block's features each: ~0.4 GB at the
    default block size). Larger machines give each of the two blocks ``cpus // 2`` threads."""
    cpus = max(1, os.cpu_count() or 1)
    blocks = min(cpus, MAX_PARALLEL_BLOCKS) if workers is None else int(workers)
    if blocks < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}.")
    return blocks, max(1, cpus // blocks)


DEEP_BRICK_BYTES = 256 * 1024**2  # deep features of one xyz-planes brick: its depth is cut to fit
MAX_STRIP_BYTES = 2 * 1024**3  # deep tile parts held between blocks: ViT-S (384 ch), tile 448 -> images up to ~21k px wide


class PageView(LazyArray):
    """One page of a lazy stack, itself a 2-D :class:`LazyArray` (shape, channels, slicing)."""

    def __init__(self, source: LazyArray, z: int):
        super().__init__(source, axes=range(1, source.ndim), has_channels=source.has_channels,
                         name=f"{source.name} page {z}")
        self.z = z

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return self._src[(self.z,) + key]


class BlockFeatures:
    """Block plan + per-block features of ``engine``'s config over ``source``.

    ``block_size``: write-window side in px; ``tile`` / ``overlap``: the deep features' tile grid;
    ``max_strip_bytes``: the most deep-feature bytes held between blocks (refused above it).
    ``threads``: threads of the classical filters inside one block (None: all CPUs; 1 when
    several blocks run at once, see :attr:`parallel_safe`).
    Deep features over xyz planes: held in memory up to ``max_held_bytes``
    (:data:`~hrdv2.engine.planes.MAX_PLANES_BYTES`), else in a folder under ``scratch`` (None:
    ``tempfile.gettempdir()``, i.e. ``TMPDIR``) that :meth:`close` removes.
    Call ``features(data, block)`` with ``data = source[block.read]``: it returns the block's
    write-window features ``(1, h, w, F)`` for a stack, ``(h, w, F)`` for an image.
    """

    def __init__(self, engine: FeatureEngine, source: LazyArray, block_size: int = DEFAULT_BLOCK_SIZE,
                 tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, max_strip_bytes: int = MAX_STRIP_BYTES,
                 threads: int | None = None, scratch: str | os.PathLike | None = None,
                 max_held_bytes: int | None = None):
        config = engine.config
        self.threads = threads
        if config.uses_deep and config.pca_components:
            raise ConfigError("a per-image PCA (pca_components) needs the whole image; block-wise deep features are "
                              "written uncompressed (a Segmenter's learnt PCA still applies).")
        spatial = source.spatial_shape
        if len(spatial) not in (2, 3):
            raise ShapeError(f"{source.name}: expected an image (Y, X) or a stack (Z, Y, X), got spatial shape {spatial}.")
        if source.channels not in (None, 3):
            raise ShapeError(f"{source.name}: {source.channels} channels; hrdv2 reads grey or RGB images.")
        self.engine, self.source = engine, source
        self.volume = bool(config.volume)
        if self.volume and (len(spatial) != 3 or source.channels not in (None, 1)):
            raise ShapeError(f"{source.name}: volume mode needs a grey (Z, Y, X) volume (a multi-page TIFF, zarr or "
                             f".npy), got shape {source.shape}.")
        # deep xy slices of a volume are pages with the volume's statistics: bounded, like a stack
        volume_pages = self.volume and config.uses_deep and config.planes == "xy"
        self.stacked = len(spatial) == 3 and (not self.volume or volume_pages)
        self.bricks = self.volume and not volume_pages  # 3-D bricks: classical 3-D filters, or xyz planes
        self.page_shape = tuple(spatial[-2:])
        self._norms: dict[int, Normalisation] = {}
        self.store: TileStore | None = None
        if self.bricks:
            from hrdv2.features.classical3d import classical3d_halo

            self.grid = None
            self._planes: HeldPlanes | DiskPlanes | None = None  # deep xyz features, built at the first brick
            if config.uses_deep:
                self.halo3 = (0, 0, 0)
                side, channels = int(block_size), self.n_features
                depth = max(1, min(side, DEEP_BRICK_BYTES // (side * side * channels * 4)))
                self.plan = plan_blocks(spatial, (depth, side, side), halo=0, alignment=1)
                self.planes_on_disk = not planes_fit_in_memory(spatial, channels, max_held_bytes)
                self.scratch = scratch
                if self.planes_on_disk:  # refuse up front what the scratch disk cannot take
                    check_scratch(scratch_folder(scratch), disk_planes_bytes(spatial, channels, config.planes),
                                  spatial, channels, source.name)
                return
            self.halo3 = classical3d_halo(config.sigmas, config.filters, config.spacing)
            self.plan = plan_blocks(spatial, int(block_size), halo=self.halo3, alignment=1)
            return
        if config.uses_deep:
            self.grid = TileGrid(self.page_shape, tile, overlap)
            halo, align = min(tile, max(self.page_shape)), 1
            if config.kind == "hybrid":  # the classical half needs its own halo and pyramid alignment
                halo = max(halo, classical_halo(config.sigmas, config.filters))
                align = classical_alignment(config.sigmas)
            self._hybrid_stats: dict[int, tuple[np.ndarray, ...]] = {}
            self._tile_args = (tile, overlap)
        else:
            self.grid = None
            halo, align = classical_halo(config.sigmas, config.filters), classical_alignment(config.sigmas)
        lead = (1,) if self.stacked else ()
        zero = (0,) if self.stacked else ()
        self.plan: BlockPlan = plan_blocks(spatial, lead + (int(block_size),) * 2, halo=zero + (halo, halo),
                                           alignment=lead + (align, align))
        if config.uses_deep:
            bh, bw = self.plan.block_shape[-2:]
            self.strip_bytes = self.held_bytes_bound(self.page_shape, (bh, bw), tile, overlap, self.n_features)
            if self.strip_bytes > max_strip_bytes:
                h, w = self.page_shape
                raise ResourceLimitError(
                    f"{source.name}: deep features of a {w} px wide image would hold {self.strip_bytes / 1e9:.2f} GB of "
                    f"tile strips between block rows (limit {max_strip_bytes / 1e9:.2f} GB; tile {tile}, overlap {overlap}, "
                    f"{self.n_features} channels); use a smaller --tile (overlap is tile/8), a backbone with fewer "
                    "channels, or cut the image into narrower pieces.")
            self.store = TileStore(self.page_shape, (bh, bw), max_strip_bytes)

    @staticmethod
    def held_bytes_bound(page: tuple[int, int], block: tuple[int, int], tile: int, overlap: int, channels: int) -> int:
        """Most bytes of tile parts held between blocks in raster order (float32 x ``channels``):
        the strip below a block row (``held_extent`` rows x the summed tile widths) + the column
        right of a block (the tile rows inside a block row x ``held_extent`` columns). With blocks
        of one tile step on tile starts: ``overlap * (W * tile / step + tile) * C * 4``, roughly.
        """
        (h, w), (bh, bw) = page, block
        rows, cols = held_extent(h, bh, tile, overlap), held_extent(w, bw, tile, overlap)
        widths, _ = tile_coverage(w, bw, tile, overlap)
        _, block_rows = tile_coverage(h, bh, tile, overlap)
        return (rows * widths + block_rows * cols) * channels * 4

    @property
    def tiles_computed(self) -> int:
        """Tile passes of the ViT so far (deep features; each tile once when blocks run in raster order)."""
        return self.store.computed if self.store is not None else 0

    @property
    def n_features(self) -> int:
        config = self.engine.config
        if config.uses_deep:
            return int(self.engine.backbone.feature_dim(config.facet, config.layer))
        return n_classical(config, self.source.channels or 1)

    @property
    def parallel_safe(self) -> bool:
        """Whether ``features`` may run for several blocks at once (after :meth:`prepare_parallel`):
        classical features only. Deep tiles are shared between neighbouring blocks in raster order
        (:class:`~hrdv2.engine.tiling.TileStore`), and the ViT already uses every CPU."""
        return not self.engine.config.uses_deep

    def prepare_parallel(self) -> None:
        """Compute every page's normalisation now, on the calling thread: blocks computed in worker
        threads then only read these statistics, and only the calling thread reads the source."""
        if not self.parallel_safe:
            raise ConfigError("deep features are computed one block at a time (tiles are shared between blocks).")
        for z in self.normalisation_keys():
            self.normalisation(z)

    def normalisation_keys(self) -> list[int]:
        """The keys of the statistics blocks use: -1 (the whole volume) in volume mode, else one
        per page (0 for a single image). ``{k: normalisation(k)}`` seeds a copy elsewhere."""
        return [-1] if self.volume else list(range(self.source.spatial_shape[0])) if self.stacked else [0]

    def use_workers(self, workers: int | None = None) -> int:
        """Blocks to compute at once (``map_blocks(..., workers=...)``) for ``workers`` (None: the
        default of :func:`block_parallelism`), with the filter threads per block set to match and
        the statistics prepared; 1 for deep features."""
        blocks, threads = block_parallelism(workers)
        if not self.parallel_safe or blocks == 1:
            return 1
        self.threads = threads
        self.prepare_parallel()
        return blocks

    def page(self, z: int) -> Any:
        return PageView(self.source, z) if self.stacked else self.source

    def normalisation(self, z: int) -> Normalisation:
        """Whole-page (volume mode: whole-volume) intensity statistics, computed once by a block-wise pass."""
        if self.volume:
            z = -1
        if z not in self._norms:
            source = self.source if self.volume else self.page(z)
            self._norms[z] = image_normalisation(source, self.engine.config.normalise)
        return self._norms[z]

    def _check_finite(self, x: np.ndarray) -> None:
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise ShapeError(f"{self.source.name}: holds NaN/inf values, which would make every feature NaN; "
                             "replace them (e.g. with the image minimum) first.")

    def features(self, data: np.ndarray, block: Block) -> np.ndarray:
        """The write-window features of ``block`` from its read-window pixels ``data``."""
        if self.bricks and self.engine.config.uses_deep:
            return self.volume_planes().read(block.write)
        if self.bricks:
            from hrdv2.features.classical3d import classical_features_3d

            self._check_finite(data)
            c = self.engine.config
            x = normalise_block(data, self.normalisation(-1))
            return classical_features_3d(x, c.sigmas, c.filters, c.spacing, crop=block.crop)
        z = block.write[0].start if self.stacked else 0
        page = data[0] if self.stacked else data
        self._check_finite(page)
        x = normalise_block(page, self.normalisation(z))
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        read, write = block.read[-2:], block.write[-2:]
        config = self.engine.config
        if config.uses_deep:
            assert self.store is not None
            store, pos = self.store, (z,) + tuple(block.grid[-2:])
            feats = blended_features(x, (read[0].start, read[1].start), write, self.grid,
                                     lambda rows, cols, pixels: store.get(
                                         z, rows, cols, pos, lambda: self.engine.deep_features(pixels)))
            store.done(pos)
            if config.kind == "hybrid":
                mean_c, std_c, mean_d, std_d = self.hybrid_statistics(z)
                cls = classical_features(x, config.sigmas, config.filters, n_threads=self.threads, crop=block.crop[-2:])
                feats = np.concatenate([standardise(cls, mean_c, std_c)[0], standardise(feats, mean_d, std_d)[0]], -1)
        else:
            crop = block.crop[-2:]
            feats = classical_features(x, config.sigmas, config.filters, n_threads=self.threads, crop=crop)
        return feats[None] if self.stacked else feats

    def hybrid_statistics(self, z: int) -> tuple[np.ndarray, ...]:
        """(mean, std) of the classical and of the deep features of page ``z``, as a whole-image
        hybrid run standardises them: one block-wise pass over the page (deep tiles computed here
        and again for the output: hybrid block-wise costs two deep passes), once per page."""
        if z not in self._hybrid_stats:
            from tqdm import tqdm

            from hrdv2.engine.core import Moments

            c, page = self.engine.config, self.page(z)
            tile, overlap = self._tile_args
            parts = []
            for kind, size in (("classical", DEFAULT_BLOCK_SIZE), ("deep", tile - overlap)):
                engine = FeatureEngine(c.replace(kind=kind), backbones=self.engine.backbones, dtype=self.engine.dtype)
                sub = BlockFeatures(engine, page, size, tile=tile, overlap=overlap)
                moments = Moments()
                for block in tqdm(sub.plan, desc=f"hybrid statistics ({kind})", unit="block", leave=False,
                                  disable=None):
                    moments.add(sub.features(page[block.read], block))
                parts.extend(moments.result())
            self._hybrid_stats[z] = tuple(parts)
        return self._hybrid_stats[z]

    def volume_planes(self) -> HeldPlanes | DiskPlanes:
        """The deep plane features of the whole volume (volume mode, xyz planes), computed once at
        the first call: :class:`~hrdv2.engine.planes.HeldPlanes` or, when they do not fit in memory,
        :class:`~hrdv2.engine.planes.DiskPlanes` (slices normalised one at a time, with the whole
        volume's statistics). Both are read by window (``read``)."""
        if self._planes is None:
            from tqdm import tqdm

            c = self.engine.config
            where = "on disk" if self.planes_on_disk else "in memory"
            with tqdm(total=n_slices(self.source.spatial_shape, c.planes), desc=f"deep features ({c.planes} planes, "
                      f"{where})", unit="slice", leave=False, disable=None) as bar:
                vol = self.source[...]
                vol = check_finite_volume(vol[..., 0] if vol.ndim == 4 else vol, self.source.name)
                if self.planes_on_disk:
                    store = DiskPlanes(vol.shape, self.n_features, c.planes, self.scratch, self.source.name)
                    try:
                        store.fill(_NormalisedVolume(vol, self.normalisation(-1)), self.engine.deep_features,
                                   c.spacing, progress=bar)
                    except BaseException:  # interrupted or failed: no half-filled files left behind
                        store.close()
                        raise
                    self._planes = store
                else:
                    self._planes = HeldPlanes(self.engine.volume_features(vol, progress=bar, name=self.source.name))
        return self._planes

    def close(self) -> None:
        """Release what the blocks share: deep plane features (their scratch files are deleted)."""
        if self.bricks and self._planes is not None:
            self._planes.close()
            self._planes = None

    def slice_features(self, z: int, block_size: int = 512) -> np.ndarray:
        """(Y, X, F) volume-mode features of slice ``z`` alone (what training on a labelled slice
        needs): 3-D filters in (1, B, B) bricks with the full 3-D halo; deep xy features from the
        slice's own blocks; xyz planes read from the volume's plane features (held or on disk)."""
        if not self.volume:
            raise ConfigError("slice_features is for volume mode; in page mode featurise the page itself.")
        if not self.bricks:  # deep xy: the page's own blocks, in raster order (each tile computed once)
            out = np.empty(self.page_shape + (self.n_features,), np.float32)
            for block in self.plan:
                if block.write[0].start == z:
                    out[block.write[1:]] = self.features(self.source[block.read], block)[0]
            return out
        if self.engine.config.uses_deep:
            nz, ny, nx = self.source.spatial_shape
            return self.volume_planes().read((slice(z, z + 1), slice(0, ny), slice(0, nx)))[0]
        nz, ny, nx = self.source.spatial_shape
        hz, hy, hx = self.halo3
        out = np.empty((ny, nx, self.n_features), np.float32)
        for y0 in range(0, ny, block_size):
            for x0 in range(0, nx, block_size):
                y1, x1 = min(ny, y0 + block_size), min(nx, x0 + block_size)
                write = (slice(z, z + 1), slice(y0, y1), slice(x0, x1))
                read = (slice(max(0, z - hz), min(nz, z + hz + 1)), slice(max(0, y0 - hy), min(ny, y1 + hy)),
                        slice(max(0, x0 - hx), min(nx, x1 + hx)))
                block = Block(-1, (z, y0, x0), write, read)
                out[y0:y1, x0:x1] = self.features(self.source[read], block)[0]
        return out


class _NormalisedVolume:
    """A (Z, Y, X) volume whose slices come out normalised (``normalise_block``: elementwise, so a
    slice equals the same slice of the whole normalised volume), without a float copy of it all."""

    def __init__(self, volume: np.ndarray, norm: Normalisation):
        self.volume, self.norm = volume, norm
        self.shape, self.ndim = volume.shape, volume.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return normalise_block(self.volume[key], self.norm)


def tiled_features(engine: FeatureEngine, image: np.ndarray, tile: int = DEFAULT_TILE,
                   overlap: int = DEFAULT_OVERLAP) -> np.ndarray:
    """Whole-image deep features computed tile by tile (what every block-wise run reproduces)."""
    from hrdv2.blocks import as_lazy

    bf = BlockFeatures(engine, as_lazy(image), block_size=max(image.shape[:2]), tile=tile, overlap=overlap)
    block = bf.plan[0]
    return bf.features(image[block.read], block)


VOLUME_BLOCK = 128  # brick side in volume mode: the 3-D halo (~65 voxels at sigma 16) makes smaller bricks wasteful


def block_sizes_for(kind: str, requested: int | None, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                    volume: bool = False, planes: str = "xy") -> int:
    """The default block side per feature kind. Deep features are ~100x wider than classical, so a
    deep block is one tile step (edges on tile starts): each tile is computed once whatever the
    block size (:class:`~hrdv2.engine.tiling.TileStore`), and one-step blocks hold the least
    between blocks (``overlap`` rows of the image width) with the smallest block accumulator."""
    if requested is not None:
        return int(requested)
    if volume and (kind == "classical" or planes != "xy"):  # 3-D bricks (deep xy volumes run page by page)
        return VOLUME_BLOCK
    return DEFAULT_BLOCK_SIZE if kind == "classical" else tile - overlap


__all__: Sequence[str] = ["BlockFeatures", "PageView", "tiled_features", "block_sizes_for", "block_parallelism"]
