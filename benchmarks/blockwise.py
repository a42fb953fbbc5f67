"""Block-wise engine: memory and speed at any size, against the whole-image run in the same session.

Every row runs in a fresh process (peak RSS is the child's own ``ru_maxrss``); inputs are made
from real micrographs in ../shared/data (tiled TIFF mosaics of superalloy/isb_0, the ISBI 2012
stack for volumes). Rows:

* ``apply`` -- classical features + random forest (trained on isb_0's scribbles) over an N^2
  tiled TIFF into OME-Zarr, block-wise; reference: today's whole-image ``hrdv2 apply`` to PNG
  at the sizes where it fits (``--reference-max``). Labels of the two are compared pixel by pixel.
  Sizes up to 4096 are also timed as the next file of the same process (``hrdv2 apply MODEL a b``
  imports zarr and numba once, ~1 s on this machine, for all its inputs). Before the rows, a
  1024^2 apply compiles the numba kernels once (what the first run after an install pays; the
  machine code is then cached on disk) and that time is printed on its own.
* ``deep`` -- deep features (``--backbone/--weights``, default random weights: UNTRAINED) of an
  N^2 image to OME-Zarr, block-wise with blended tiles; peak RSS is the target.
* ``volume`` -- a V^3 uint8 volume (the ISBI stack tiled) segmented with 3-D classical filters by
  a model trained on two labelled slices.
* ``seams`` -- deep features tiled vs whole-image: per-pixel cosine (median, 1st percentile).
* ``planes`` -- a V^3 crop of the ISBI stack segmented with deep features over the xy, xz and yz
  planes (``--backbone/--weights``, identity transform only: 3V ViT slices), a logistic model
  trained on two slices, brick by brick: the features held in memory (the default up to 4 GB)
  against kept on scratch disk (forced), labels compared; above 4 GB only the disk path runs.

Usage: python benchmarks/blockwise.py [--sizes 2048,8192] [--deep-size 4096] [--volume-size 256]
(the deep target: --sizes "" --deep-size 4096 --volume-size 0; tens of minutes to hours on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HERE = Path(__file__).resolve()


def _cpu_s() -> float:
    """CPU seconds of this process (all threads): less sensitive than wall time to a busy machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ------------------------------------------------------------------------------------------ children


NEXT_FILE_MAX = 4096  # sizes also timed as the second file of one process (imports already paid)


def child_apply(work: Path, size: int, mode: str, block: int) -> dict:
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import label_writer, segment_blockwise

    seg = Segmenter.load(work / "model.skops")
    src = work / f"mosaic_{size}.tif"
    t0, cpu0 = time.perf_counter(), _cpu_s()
    if mode == "blockwise":
        out = segment_blockwise(seg, src, label_writer("ome-zarr", work / f"labels_{size}.ome.zarr", f"bench{size}"),
                                block_size=block, resume=False)
    else:
        from hrdv2.io import read_image, write_image

        image = read_image(src, max_bytes=1 << 40)
        write_image(work / f"labels_{size}.png", seg.predict(image))
        out = work / f"labels_{size}.png"
    secs = time.perf_counter() - t0
    res = {"seconds": secs, "mpx_s": size * size / secs / 1e6, "peak_gb": _peak_gb(), "out": str(out),
           "load": os.getloadavg()[0], "cpu_s_mpx": (_cpu_s() - cpu0) / (size * size / 1e6)}
    if mode == "blockwise" and size <= NEXT_FILE_MAX:  # a batch: the next file pays no imports (zarr, numba)
        t0 = time.perf_counter()
        segment_blockwise(seg, src, label_writer("ome-zarr", work / f"labels_{size}_next.ome.zarr", f"bench{size}"),
                          block_size=block, resume=False)
        res["next_seconds"] = time.perf_counter() - t0
        res["next_mpx_s"] = size * size / res["next_seconds"] / 1e6
    if mode == "blockwise":
        res.update(predict_ratio(seg, src))
    return res


def predict_ratio(seg, src: Path, side: int = 1024) -> dict:
    """Per-Mpx cost of one block's stages, and sklearn's predict_proba against the compiled forest
    (hrdv2.segmentation.forest) on the same rows in this process (labels must be identical)."""
    from hrdv2.blocks import open_array

    crop = np.asarray(open_array(src)[:side, :side])
    mpx = side * side / 1e6
    t0 = time.perf_counter()
    rows = seg.featurise(crop)
    rows = rows.reshape(-1, rows.shape[-1])
    t1 = time.perf_counter()
    fast = seg.predict_proba_features(rows)
    t2 = time.perf_counter()
    labels = np.argmax(fast, axis=-1)
    t3 = time.perf_counter()
    seg._fast_forest = (seg.model_, None)  # the same Segmenter, with sklearn's own predict_proba
    ref = seg.predict_proba_features(rows)
    t4 = time.perf_counter()
    del seg._fast_forest
    return {"features_s": (t1 - t0) / mpx, "fast_s": (t2 - t1) / mpx, "argmax_s": (t3 - t2) / mpx,
            "sklearn_s": (t4 - t3) / mpx, "same_labels": bool(np.array_equal(labels, ref.argmax(-1))),
            "max_diff": float(np.abs(fast - ref).max())}


def child_deep(work: Path, size: int, backbone: str, weights: str, shifts: str, block: int | None, tile: int) -> dict:
    from hrdv2.blocks import OmeZarrWriter, map_blocks, open_array
    from hrdv2.engine import FeatureEngine
    from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for
    from hrdv2.features.sets import FeatureConfig

    shift_list = tuple(int(v) for v in shifts.split(",") if v)
    engine = FeatureEngine(FeatureConfig(kind="deep", backbone=backbone, weights=weights, shifts=shift_list))
    lazy = open_array(work / f"mosaic_{size}.tif")
    bf = BlockFeatures(engine, lazy, block_sizes_for("deep", block, tile, tile // 8), tile=tile, overlap=tile // 8)
    t0 = time.perf_counter()
    map_blocks(lazy, bf.plan, bf.features, OmeZarrWriter(work / f"deep_{size}.ome.zarr", np.float32, bf.n_features,
                                                         key="bench"), resume=False)
    secs = time.perf_counter() - t0
    from hrdv2.engine.tiling import tile_starts

    n_tiles = len(tile_starts(size, tile, tile // 8)) ** 2  # each computed once in raster order (TileStore)
    return {"seconds": secs, "peak_gb": _peak_gb(), "blocks": len(bf.plan), "tiles_computed": bf.tiles_computed,
            "tiles": n_tiles, "strip_gb": bf.strip_bytes / 1e9,
            "backbone": engine.describe(), "channels": bf.n_features}


def child_volume(work: Path, size: int, block: int) -> dict:
    from hrdv2.blocks import open_array
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import label_writer, segment_blockwise

    seg = Segmenter.load(work / "volume.skops")
    t0 = time.perf_counter()
    segment_blockwise(seg, open_array(work / f"volume_{size}.npy"),
                      label_writer("ome-zarr", work / f"volume_{size}.ome.zarr", "bench"), block_size=block, resume=False)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "mvox_s": size**3 / secs / 1e6, "peak_gb": _peak_gb()}


def child_planes(work: Path, size: int, mode: str, backbone: str, weights: str) -> dict:
    from hrdv2.blocks import as_lazy, map_blocks
    from hrdv2.engine.blockwise import BlockFeatures
    from hrdv2.engine.planes import planes_bytes
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.io import read_image, read_labels
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.blockwise import label_writer

    d = DATA / "isbi2012"
    zz = np.arange(size) % 10  # the stack's 10 slices, repeated
    vol = np.stack([read_image(d / f"isbi_{i:02d}.png")[:size, :size] for i in zz])
    gt = {z: read_labels(d / f"isbi_{z:02d}_gt.png")[:size, :size] for z in (2, 7)}
    config = FeatureConfig(kind="deep", backbone=backbone, weights=weights, shifts=(), volume=True, planes="xyz")
    seg = Segmenter(config, classifier="logistic")
    t0 = time.perf_counter()
    bf = BlockFeatures(seg.engine, as_lazy(vol), 128, scratch=work, max_held_bytes=0 if mode == "disk" else None)
    if bf.planes_on_disk != (mode == "disk"):
        return {"error": f"not held: {planes_bytes(vol.shape, bf.n_features) / 1e9:.1f} GB is over the in-memory limit"
                         if bf.planes_on_disk else "on disk requested, but held"}
    rng = np.random.default_rng(0)
    scribbles = [np.where(rng.random(g.shape) < 0.02, g, 0) for g in gt.values()]
    seg.fit([vol[z] for z in gt], scribbles, [bf.slice_features(z) for z in gt])
    built = time.perf_counter() - t0

    def func(data: np.ndarray, block) -> np.ndarray:
        f = bf.features(data, block)
        p = seg.predict_proba_features(f.reshape(-1, f.shape[-1]))
        return seg.classes_[p.argmax(1)].astype(np.uint8).reshape(f.shape[:-1])

    out = work / f"planes_{size}_{mode}.ome.zarr"
    map_blocks(as_lazy(vol), bf.plan, func, label_writer("ome-zarr", out, "bench"), resume=False)
    bf.close()
    secs = time.perf_counter() - t0
    return {"seconds": secs, "features_s": built, "peak_gb": _peak_gb(), "out": str(out),
            "features_gb": planes_bytes(vol.shape, bf.n_features) / 1e9,
            "bricks": len(bf.plan), "brick": list(bf.plan.block_shape), "backbone": seg.engine.describe()}


def child_seams(backbone: str, weights: str, size: int, tile: int) -> dict:
    from hrdv2.engine import FeatureEngine
    from hrdv2.engine.blockwise import tiled_features
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.io import read_image

    image = read_image(DATA / "superalloy" / "isb_0.png")[:size, :size]
    engine = FeatureEngine(FeatureConfig(kind="deep", backbone=backbone, weights=weights, shifts=()))
    whole = engine.compute(image)
    tiled = tiled_features(engine, image, tile=tile, overlap=tile // 8)
    a, b = whole.reshape(-1, whole.shape[-1]), tiled.reshape(-1, whole.shape[-1])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"median": float(np.median(cos)), "p1": float(np.percentile(cos, 1)), "backbone": engine.describe()}


# ------------------------------------------------------------------------------------------ parent


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, str(HERE), "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_inputs(work: Path, sizes: list[int], volume_size: int) -> None:
    import tifffile

    from hrdv2.io import read_image, read_labels
    from hrdv2.segmentation import Segmenter

    alloy = read_image(DATA / "superalloy" / "isb_0.png")
    seg = Segmenter("classical").fit([alloy], [read_labels(DATA / "superalloy" / "isb_0_scribble.png")])
    seg.save(work / "model.skops")
    for n in sizes:
        reps = -(-n // alloy.shape[0])
        with tifffile.TiffWriter(work / f"mosaic_{n}.tif", bigtiff=True) as tif:  # written band by band
            def tiles():
                for ty in range(0, n, 256):
                    for tx in range(0, n, 256):
                        yy = (np.arange(ty, ty + 256) % alloy.shape[0])[:, None]
                        xx = (np.arange(tx, tx + 256) % alloy.shape[1])[None, :]
                        yield alloy[yy, xx]
            tif.write(tiles(), shape=(n, n), dtype=np.uint8, tile=(256, 256))
        del reps
    d = DATA / "isbi2012"
    stack = np.stack([read_image(d / f"isbi_{i:02d}.png") for i in range(10)])
    gt = np.stack([read_labels(d / f"isbi_{i:02d}_gt.png") for i in range(10)])
    v = volume_size
    zz = np.arange(v) % 10
    vol = np.lib.format.open_memmap(work / f"volume_{v}.npy", mode="w+", dtype=np.uint8, shape=(v, v, v))
    for z in range(v):
        vol[z] = np.tile(stack[zz[z]], (-(-v // 512), -(-v // 512)))[:v, :v]
    vol.flush()
    lab = np.zeros((10, 512, 512), np.uint8)
    rng = np.random.default_rng(0)
    for z in (2, 7):
        keep = rng.random((512, 512)) < 0.02
        lab[z][keep] = gt[z][keep]
    tifffile.imwrite(work / "vol10.tif", stack, photometric="minisblack")
    tifffile.imwrite(work / "vol10_lab.tif", lab, photometric="minisblack")
    subprocess.run([sys.executable, "-m", "hrdv2.cli.main", "train", "--image", str(work / "vol10.tif"), "--scribble",
                    str(work / "vol10_lab.tif"), "--volume", "--spacing", "12.5,1,1", "--out", str(work / "volume.skops")],
                   check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2048,8192", help="apply sizes (px per side), e.g. 2048,8192,16384,32768")
    ap.add_argument("--reference-max", type=int, default=8192, help="largest size the whole-image reference runs at")
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--deep-size", type=int, default=1024, help="deep-features image side (0: skip)")
    ap.add_argument("--deep-shifts", default="1,2", help="HR-Dv2 shifts for the deep row ('' = identity only)")
    ap.add_argument("--tile", type=int, default=448)
    ap.add_argument("--volume-size", type=int, default=128,
                    help="volume side (0: skip); the 3-D target is 512: --sizes '' --deep-size 0 --seams-size 0 "
                         "--volume-size 512 (peak RSS <= 2 GB; ~8 min idle on 2 cores)")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="random", help="local checkpoint, or 'random' (UNTRAINED: speed/memory only)")
    ap.add_argument("--seams-size", type=int, default=448, help="image side for the tiled-vs-whole cosine (0: skip)")
    ap.add_argument("--planes-sizes", default="64",
                    help="volume sides for the deep xyz-planes rows ('' to skip), e.g. 128,192 (192: 22 GB of scratch)")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        fns = {"apply": lambda w, s, m, b: child_apply(Path(w), int(s), m, int(b)),
               "deep": lambda w, s, bb, wt, sh, b, t: child_deep(Path(w), int(s), bb, wt, sh, int(b) or None, int(t)),
               "volume": lambda w, s, b: child_volume(Path(w), int(s), int(b)),
               "seams": lambda bb, wt, s, t: child_seams(bb, wt, int(s), int(t)),
               "planes": lambda w, s, m, bb, wt: child_planes(Path(w), int(s), m, bb, wt)}
        print(json.dumps(fns[kind](*rest)))
        return 0

    sizes = [int(s) for s in a.sizes.split(",") if s]
    print(f"# hrdv2 block-wise benchmark ({platform.node()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M')}); every row a fresh process")
    with tempfile.TemporaryDirectory(prefix="hrdv2-bw-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        make_inputs(work, sorted(set(sizes + [1024] + ([a.deep_size] if a.deep_size else []))), a.volume_size or 16)
        print(f"inputs made in {time.perf_counter() - t0:.0f} s")
        # numba compiles hrdv2's kernels on their first use after an install and caches the machine
        # code on disk (``cache=True``); that once-per-install cost is timed here, not in the rows
        first = run_child("apply", str(work), "1024", "blockwise", str(a.block_size))
        print("first run after install (kernels compiled and cached on disk), 1024^2: "
              + (f"{first['seconds']:.2f} s" if "seconds" in first else first.get("error", "?")) + "\n")
        print("| classical apply | block-wise s | Mpx/s | next file in the same process: s, Mpx/s | peak RSS "
              "| whole-image s | Mpx/s | peak RSS | speed ratio "
              "| memory ratio | labels equal | forest predict s/Mpx: sklearn -> compiled (same labels) | features s/Mpx "
              "| block-wise CPU s/Mpx | load avg |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in sizes:
            bw = run_child("apply", str(work), str(n), "blockwise", str(a.block_size))
            ref = run_child("apply", str(work), str(n), "whole", "0") if n <= a.reference_max else {}
            equal = "-"
            if "out" in bw and "out" in ref:
                import zarr

                from hrdv2.io import read_labels

                z = zarr.open_group(bw["out"], mode="r")["0"]
                whole = read_labels(ref["out"], max_bytes=1 << 40)
                equal = "yes" if all(np.array_equal(np.asarray(z[y:y + 2048]), whole[y:y + 2048])
                                     for y in range(0, n, 2048)) else "NO"
            fmt = lambda r, k: f"{r[k]:.2f}" if k in r else r.get("error", "not run")[:60]  # noqa: E731
            ratio_t = f"{ref['seconds'] / bw['seconds']:.2f}x" if "seconds" in ref and "seconds" in bw else "-"
            ratio_m = f"{ref['peak_gb'] / bw['peak_gb']:.2f}x less" if "peak_gb" in ref and "peak_gb" in bw else "-"
            forest = (f"{bw['sklearn_s']:.2f} -> {bw['fast_s']:.2f} ({bw['sklearn_s'] / bw['fast_s']:.1f}x, "
                      f"{'yes' if bw['same_labels'] else 'NO'})" if "fast_s" in bw else "-")
            load = "/".join(f"{r['load']:.1f}" for r in (bw, ref) if "load" in r)
            nxt = f"{bw['next_seconds']:.2f}, {bw['next_mpx_s']:.2f}" if "next_seconds" in bw else "-"
            print(f"| {n}^2 | {fmt(bw, 'seconds')} | {fmt(bw, 'mpx_s')} | {nxt} | {fmt(bw, 'peak_gb')} GB | {fmt(ref, 'seconds')} "
                  f"| {fmt(ref, 'mpx_s')} | {fmt(ref, 'peak_gb')} GB | {ratio_t} | {ratio_m} | {equal} | {forest} "
                  f"| {fmt(bw, 'features_s')} | {fmt(bw, 'cpu_s_mpx')} | {load} |", flush=True)
        if a.deep_size:
            r = run_child("deep", str(work), str(a.deep_size), a.backbone, a.weights, a.deep_shifts, "0", str(a.tile))
            print(f"\ndeep features {a.deep_size}^2 -> OME-Zarr (shifts {a.deep_shifts or 'none'}, tile {a.tile}): "
                  + (f"{r['seconds']:.1f} s, peak RSS {r['peak_gb']:.2f} GB, {r['blocks']} blocks, {r['tiles_computed']} "
                     f"tile passes for {r['tiles']} tiles (strips held <= {r['strip_gb']:.2f} GB), {r['channels']} channels, "
                     f"{r['backbone']}" if "seconds" in r else r["error"]), flush=True)
        if a.volume_size:
            r = run_child("volume", str(work), str(a.volume_size), "128")
            print(f"volume {a.volume_size}^3 uint8, 3-D filters, model from two labelled slices: "
                  + (f"{r['seconds']:.1f} s ({r['mvox_s']:.2f} Mvox/s), peak RSS {r['peak_gb']:.2f} GB"
                     if "seconds" in r else r["error"]), flush=True)
        if a.seams_size:
            r = run_child("seams", a.backbone, a.weights, str(a.seams_size), str(min(a.tile, a.seams_size // 2)))
            print(f"seams: deep features tiled (tile {min(a.tile, a.seams_size // 2)}) vs whole image at {a.seams_size}^2: "
                  + (f"cosine median {r['median']:.4f}, 1st percentile {r['p1']:.4f} ({r['backbone']})"
                     if "median" in r else r["error"]), flush=True)
        planes_sizes = [int(v) for v in a.planes_sizes.split(",") if v]
        if planes_sizes:
            print("\n| deep xyz planes | features | total s (features s) | peak RSS | bricks | held in memory: total s, "
                  "peak RSS | labels equal |")
            print("|---|---|---|---|---|---|---|")
        for v in planes_sizes:
            disk = run_child("planes", str(work), str(v), "disk", a.backbone, a.weights)
            held = run_child("planes", str(work), str(v), "held", a.backbone, a.weights)
            equal = "-"
            if "out" in disk and "out" in held:
                import zarr

                equal = "yes" if np.array_equal(np.asarray(zarr.open_group(disk["out"], mode="r")["0"]),
                                                np.asarray(zarr.open_group(held["out"], mode="r")["0"])) else "NO"
            on_disk = (f"{disk['features_gb']:.1f} GB x 2 on disk | {disk['seconds']:.1f} ({disk['features_s']:.1f}) "
                       f"| {disk['peak_gb']:.2f} GB | {disk['bricks']} of {'x'.join(map(str, disk['brick']))}"
                       if "seconds" in disk else f"- | {disk['error'][:80]} | - | -")
            in_mem = (f"{held['seconds']:.1f}, {held['peak_gb']:.2f} GB" if "seconds" in held
                      else held["error"][:80])
            print(f"| {v}^3 ({disk.get('backbone', a.backbone)}) | {on_disk} | {in_mem} | {equal} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
