"""The engine's block-wise side: features of one block of a large image or stack.

:class:`BlockFeatures` plans blocks over a lazy image ``(Y, X[, C])`` or stack ``(Z, Y, X[, C])``
(pages are featurised one by one, as whole-image runs do) and computes any block's features:

* classical: the block's read window (write window + a halo that covers every filter's support,
  origins aligned to the filters' pyramid) normalised with the *whole page's* statistics, then
  cropped: equal to whole-image features to float precision;
* deep: blended tiles on a global grid (:mod:`hrdv2.engine.tiling`): equal to a whole-image
  tiled run, without seams between blocks;
* volume mode (``config.volume``): classical filters in 3D over bricks of a (Z, Y, X) volume,
  with a 3-D halo, normalised with the whole volume's statistics: equal to whole-volume features;
* hybrid is refused: it standardises each block over the whole image (not block-wise yet).

Memory is one block (plus, for deep features, one tile) in flight, whatever the image size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from hrdv2.blocks import DEFAULT_BLOCK_SIZE, Block, BlockPlan, LazyArray, plan_blocks
from hrdv2.engine.core import FeatureEngine
from hrdv2.engine.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, TileGrid, blended_features
from hrdv2.errors import ConfigError, ShapeError
from hrdv2.features.blockwise import Normalisation, image_normalisation, normalise_block
from hrdv2.features.classical import classical_alignment, classical_features, classical_halo
from hrdv2.features.sets import n_classical


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

    ``block_size``: write-window side in px; ``tile`` / ``overlap``: the deep features' tile grid.
    Call ``features(data, block)`` with ``data = source[block.read]``: it returns the block's
    write-window features ``(1, h, w, F)`` for a stack, ``(h, w, F)`` for an image.
    """

    def __init__(self, engine: FeatureEngine, source: LazyArray, block_size: int = DEFAULT_BLOCK_SIZE,
                 tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP):
        config = engine.config
        if config.kind == "hybrid":
            raise ConfigError("hybrid features are standardised over the whole image, so they cannot be computed "
                              "block-wise yet; use classical or deep features for large images, or a whole-image run.")
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
        self.stacked = len(spatial) == 3 and not self.volume
        self.page_shape = tuple(spatial[-2:])
        self._norms: dict[int, Normalisation] = {}
        self._tiles: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._max_tiles = 0
        self.tiles_computed = 0
        if self.volume:
            from hrdv2.features.classical3d import classical3d_halo

            if len(spatial) != 3 or source.channels not in (None, 1):
                raise ShapeError(f"{source.name}: volume mode needs a grey (Z, Y, X) volume (a multi-page TIFF, zarr or "
                                 f".npy), got shape {source.shape}.")
            self.grid = None
            self.halo3 = classical3d_halo(config.sigmas, config.filters, config.spacing)
            self.plan = plan_blocks(spatial, int(block_size), halo=self.halo3, alignment=1)
            return
        if config.uses_deep:
            self.grid = TileGrid(self.page_shape, tile, overlap)
            halo, align = min(tile, max(self.page_shape)), 1
        else:
            self.grid = None
            halo, align = classical_halo(config.sigmas, config.filters), classical_alignment(config.sigmas)
        lead = (1,) if self.stacked else ()
        zero = (0,) if self.stacked else ()
        self.plan: BlockPlan = plan_blocks(spatial, lead + (int(block_size),) * 2, halo=zero + (halo, halo),
                                           alignment=lead + (align, align))
        # tiles shared by neighbouring blocks of a row are computed once: keep one column of tiles
        # (the last block's right-hand column; blocks run row by row), so memory stays bounded
        step = max(tile - overlap, 1)
        self._max_tiles = int(block_size) // step + 1 if config.uses_deep else 0

    @property
    def n_features(self) -> int:
        config = self.engine.config
        if config.uses_deep:
            return int(self.engine.backbone.feature_dim(config.facet, config.layer))
        return n_classical(config, self.source.channels or 1)

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
        if self.volume:
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
            feats = blended_features(x, (read[0].start, read[1].start), write, self.grid,
                                     lambda rows, cols, pixels: self._tile(z, rows, cols, pixels))
        else:
            crop = block.crop[-2:]
            feats = classical_features(x, config.sigmas, config.filters)[crop]
        return feats[None] if self.stacked else feats


    def slice_features(self, z: int, block_size: int = 512) -> np.ndarray:
        """(Y, X, F) volume-mode features of slice ``z`` alone (what training on a labelled slice
        needs), computed in (1, B, B) bricks with the full 3-D halo."""
        if not self.volume:
            raise ConfigError("slice_features is for volume mode; in page mode featurise the page itself.")
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

    def _tile(self, z: int, rows: slice, cols: slice, pixels: np.ndarray) -> np.ndarray:
        key = (z, rows.start, cols.start)
        if key in self._tiles:
            self._tiles.move_to_end(key)
            return self._tiles[key]
        feats = self.engine.deep_features(pixels)
        self.tiles_computed += 1
        self._tiles[key] = feats
        while len(self._tiles) > self._max_tiles:
            self._tiles.popitem(last=False)
        return feats


def tiled_features(engine: FeatureEngine, image: np.ndarray, tile: int = DEFAULT_TILE,
                   overlap: int = DEFAULT_OVERLAP) -> np.ndarray:
    """Whole-image deep features computed tile by tile (what every block-wise run reproduces)."""
    from hrdv2.blocks import as_lazy

    bf = BlockFeatures(engine, as_lazy(image), block_size=max(image.shape[:2]), tile=tile, overlap=overlap)
    block = bf.plan[0]
    return bf.features(image[block.read], block)


VOLUME_BLOCK = 128  # brick side in volume mode: the 3-D halo (~65 voxels at sigma 16) makes smaller bricks wasteful


def block_sizes_for(kind: str, requested: int | None, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                    volume: bool = False) -> int:
    """The default block side per feature kind. Deep features are ~100x wider than classical, so a
    deep block is one tile step (edges on tile starts): measured at 1024^2 with ViT-S, 17 shifts,
    tile 448, peak 2.45 GB and 21 tile passes for 9 tiles; two tile steps halve the recomputation
    (11 passes, 2.1x faster) but peak at 3.5 GB. Memory first: ``--block-size`` trades it back."""
    if requested is not None:
        return int(requested)
    if volume:
        return VOLUME_BLOCK
    return DEFAULT_BLOCK_SIZE if kind == "classical" else tile - overlap


__all__: Sequence[str] = ["BlockFeatures", "PageView", "tiled_features", "block_sizes_for"]
