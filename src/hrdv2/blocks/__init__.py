"""Block-wise processing of images and volumes too large for memory; knows nothing of features or models.

Four pieces, each usable alone::

    from hrdv2.blocks import open_array, plan_blocks, map_blocks, OmeZarrWriter

    image = open_array("mosaic.tif")                  # LazyArray: .shape, .dtype, image[slices] -> ndarray
    plan = plan_blocks(image.spatial_shape, 1024, halo=96, alignment=16)
    for block in plan:                                # Block: .index, .write, .read, .crop (tuples of slices)
        ...
    writer = OmeZarrWriter("labels.ome.zarr", np.uint8, kind="labels", key=model_key)
    map_blocks(image, plan, lambda data, block: segment(data), writer, progress=tqdm())

* :mod:`~hrdv2.blocks.plan`: :func:`plan_blocks` cuts a spatial shape into blocks; each block's
  *read window* is its *write window* grown by ``halo`` (clipped at the image border, where the
  filter's own boundary rule then acts as on the whole image) with ends aligned to ``alignment``
  (pyramid filters see the same block means); ``crop`` cuts the write window out of a result
  computed on the read window. Block sides below :data:`MIN_BLOCK_SIZE` on axes with a halo
  raise a one-line ``ConfigError``.
* :mod:`~hrdv2.blocks.readers`: :func:`open_array` for tiled / striped (Big)TIFF, zarr, OME-Zarr,
  ``.npy`` (read by region) and PNG / JPEG (decoded whole); axes ``([Z,] Y, X[, C])``.
  :func:`as_lazy` wraps an in-memory array the same way.
* :mod:`~hrdv2.blocks.writers`: :class:`OmeZarrWriter` (NGFF 0.4 / 0.5 with a 2x pyramid: mode
  for labels, mean for intensities), :class:`BigTiffWriter` (tiles + SubIFD pyramid),
  :class:`ArrayWriter` (memory). Disk writers stage in ``TARGET.partial/`` with a marker per
  finished block and move the result to the target only when complete; a re-run resumes.
  :func:`check_format_holds` refuses data an output format cannot hold, before a run.
  :mod:`~hrdv2.blocks.pyramid` holds the 2x downsampling (:func:`downsample2`).
* :mod:`~hrdv2.blocks.run`: :func:`map_blocks` runs ``func(read_window_data, block)`` over the
  blocks not yet done and writes each result (channel-last; cropped if it covers the read
  window); memory is one block in flight; ``progress`` is a tqdm bar or ``(done, total)`` callable.

Block-wise classical features built on this live in :mod:`hrdv2.features.blockwise`.
"""

from hrdv2.blocks.plan import DEFAULT_BLOCK_SIZE, MIN_BLOCK_SIZE, Block, BlockPlan, plan_blocks
from hrdv2.blocks.readers import LazyArray, as_lazy, open_array
from hrdv2.blocks.run import map_blocks
from hrdv2.blocks.pyramid import downsample2, pyramid_shapes
from hrdv2.blocks.writers import ArrayWriter, BigTiffWriter, BlockWriter, OmeZarrWriter, check_format_holds, label_dtype

__all__ = [
    "DEFAULT_BLOCK_SIZE", "MIN_BLOCK_SIZE", "Block", "BlockPlan", "plan_blocks", "LazyArray", "as_lazy",
    "open_array", "map_blocks", "ArrayWriter", "BigTiffWriter", "BlockWriter", "OmeZarrWriter",
    "check_format_holds", "downsample2", "label_dtype", "pyramid_shapes",
]
