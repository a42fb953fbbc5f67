"""Deep features block by block with every tile computed once (hrdv2.engine.tiling.TileStore):
block values equal a whole-image tiled run, the ViT runs once per tile in raster order, resumed
and out-of-order runs stay exact, held memory stays under its stated bound, and a strip buffer
over the limit is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from hrdv2.blocks import ArrayWriter, OmeZarrWriter, as_lazy, map_blocks, plan_blocks
from hrdv2.engine import FeatureEngine
from hrdv2.engine.blockwise import BlockFeatures, tiled_features
from hrdv2.engine.tiling import TileGrid, TileStore, blended_features, held_extent, tile_starts
from hrdv2.errors import ResourceLimitError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TILE, OVERLAP = 56, 14  # step 42: four patches of the ViT per tile side


def _fake_tile(rows: slice, cols: slice, pixels: np.ndarray) -> np.ndarray:
    """Cheap stand-in for a ViT pass: depends on the tile (so blending matters) and on the pixels."""
    c = np.arange(3, dtype=np.float32)
    return (pixels[..., None] * (1 + c) + np.float32(rows.start * 0.01 + cols.start * 0.003)).astype(np.float32)


def _blend_blocks(image: np.ndarray, block: int, order: list[int] | None = None, limit: int = 1 << 40):
    """Blend every block of ``image`` through one TileStore, visiting blocks in ``order``."""
    grid = TileGrid(image.shape, TILE, OVERLAP)
    plan = plan_blocks(image.shape, block, halo=TILE)
    store = TileStore(image.shape, plan.block_shape, limit)
    out = np.zeros(image.shape + (3,), np.float32)
    for i in order if order is not None else range(len(plan)):
        b = plan[i]
        pos = (0,) + b.grid
        out[b.write] = blended_features(image[b.read], (b.read[0].start, b.read[1].start), b.write, grid,
                                        lambda r, c, px: store.get(0, r, c, pos, lambda: _fake_tile(r, c, px)))
        store.done(pos)
        assert store.held_bytes <= limit
    return out, store, plan


@pytest.mark.parametrize("shape, block", [((90, 118), 42), ((90, 118), 32), ((131, 97), 100), ((200, 61), 16)])
def test_tile_store_computes_each_tile_once_and_equals_whole_blend(shape, block):
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    whole = blended_features(image, (0, 0), (slice(0, shape[0]), slice(0, shape[1])), TileGrid(shape, TILE, OVERLAP),
                             _fake_tile)
    out, store, plan = _blend_blocks(image, block)
    n_tiles = len(tile_starts(shape[0], TILE, OVERLAP)) * len(tile_starts(shape[1], TILE, OVERLAP))
    assert store.computed == n_tiles  # raster order: every tile exactly once
    np.testing.assert_array_equal(out, whole)  # same sums in the same order: bit for bit
    assert store.held_bytes == 0  # nothing left over after the last block
    bound = BlockFeatures.held_bytes_bound(shape, plan.block_shape, TILE, OVERLAP, 3)
    assert 0 < store.peak_held_bytes <= bound


@pytest.mark.parametrize("limit", [20_000, 1 << 40])  # tiny: pieces evicted, tiles recomputed; huge: none evicted
def test_out_of_order_blocks_stay_exact_within_the_limit(limit):
    image = np.random.default_rng(2).random((130, 150), dtype=np.float32)
    ref, _, plan = _blend_blocks(image, 42)
    order = [int(i) for i in np.random.default_rng(3).permutation(len(plan))]
    out, store, _ = _blend_blocks(image, 42, order=order, limit=limit)  # held_bytes <= limit checked per block
    np.testing.assert_array_equal(out, ref)
    n_tiles = len(tile_starts(130, TILE, OVERLAP)) * len(tile_starts(150, TILE, OVERLAP))
    assert store.computed > n_tiles  # tiles recomputed where pieces were not held, none wrong
    assert store.held_bytes == sum(p.nbytes for pieces in store._held.values() for p in pieces.values())


def test_held_extent_is_the_overlap_for_blocks_of_one_tile_step():
    assert held_extent(4096, 392, 448, 56) == 56  # the target image: strips of 56 rows
    assert tile_starts(4096, 448, 56)[-1] == 3920  # last tile cut at the image end (176 px), not flush
    assert held_extent(4000, 392, 448, 56) == 56 + 80  # a flush last tile: two tiles reach past the last edge
    assert held_extent(300, 300, 448, 56) == 0  # one block: nothing held


@pytest.fixture(scope="module")
def deep(tiny_backbone):
    """A counting engine on the random-weight ViT-S (UNTRAINED) and a 90x118 test image (not a
    multiple of the tile step 42)."""
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=())
    calls = []
    inner = engine.deep_features

    def counting(pixels, progress=None):
        calls.append(pixels.shape)
        return inner(pixels, progress)

    engine.deep_features = counting  # the featurizer wrapped: one call per ViT tile pass
    image = (np.random.default_rng(0).random((90, 118)) * 255).astype(np.uint8)
    tiled = tiled_features(engine, image, tile=TILE, overlap=OVERLAP)
    return engine, calls, image, tiled


def test_blockwise_deep_runs_each_tile_once_and_equals_tiled_run(deep):
    engine, calls, image, tiled = deep
    n_tiles = len(tile_starts(90, TILE, OVERLAP)) * len(tile_starts(118, TILE, OVERLAP))
    for block in (42, 32):
        calls.clear()
        bf = BlockFeatures(engine, as_lazy(image), block_size=block, tile=TILE, overlap=OVERLAP)
        out = map_blocks(as_lazy(image), bf.plan, bf.features, ArrayWriter(np.float32, bf.n_features))
        assert len(calls) == bf.tiles_computed == n_tiles == 6, block
        assert len(bf.plan) > n_tiles  # more blocks than tiles, yet no tile twice
        np.testing.assert_allclose(out, tiled, atol=1e-5, rtol=0)
        assert bf.store is not None and bf.store.held_bytes == 0


def test_resumed_run_equals_tiled_run(deep, tmp_path):
    engine, calls, image, tiled = deep
    target = tmp_path / "feats.ome.zarr"
    bf = BlockFeatures(engine, as_lazy(image), block_size=42, tile=TILE, overlap=OVERLAP)

    def dies_after_four(data, block):
        if block.index == 4:
            raise KeyboardInterrupt
        return bf.features(data, block)

    with pytest.raises(KeyboardInterrupt):
        map_blocks(as_lazy(image), bf.plan, dies_after_four, OmeZarrWriter(target, np.float32, bf.n_features, key="k"))
    assert not target.exists()
    calls.clear()
    bf2 = BlockFeatures(engine, as_lazy(image), block_size=42, tile=TILE, overlap=OVERLAP)  # a fresh process
    out = map_blocks(as_lazy(image), bf2.plan, bf2.features, OmeZarrWriter(target, np.float32, bf2.n_features, key="k"))
    import zarr

    got = np.moveaxis(np.asarray(zarr.open_group(str(out), mode="r")["0"]), 0, -1)
    np.testing.assert_allclose(got, tiled, atol=1e-5, rtol=0)
    # blocks 0-3 (the first row and block (1, 0)) are skipped; all 6 tiles touch the blocks left, so
    # the resumed run recomputes the strips they need from scratch, each tile once
    assert len(calls) == 6


def test_strip_buffer_over_the_limit_is_refused_in_one_line(tiny_backbone):
    engine = FeatureEngine.for_backbone(tiny_backbone, shifts=())
    # the bound of the docs for blocks of one tile step: overlap x (summed tile widths + tile) x C x 4 bytes
    widths = sum(min(20000, s + TILE) - s for s in tile_starts(20000, TILE, OVERLAP))
    assert BlockFeatures.held_bytes_bound((500, 20000), (42, 42), TILE, OVERLAP, 384) == 14 * (widths + TILE) * 384 * 4
    with pytest.raises(ResourceLimitError) as err:
        BlockFeatures(engine, as_lazy(np.zeros((500, 20000), np.uint8)), block_size=42, tile=TILE, overlap=OVERLAP,
                      max_strip_bytes=100_000_000)
    msg = str(err.value)
    assert "\n" not in msg and "20000 px wide" in msg and "--tile" in msg and "limit 0.10 GB" in msg
    ok = BlockFeatures(engine, as_lazy(np.zeros((500, 2000), np.uint8)), block_size=42, tile=TILE, overlap=OVERLAP,
                       max_strip_bytes=100_000_000)  # 10x narrower: accepted
    assert ok.strip_bytes < 100_000_000
