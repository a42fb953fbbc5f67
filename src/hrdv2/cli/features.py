"""``hrdv2 features``: featurise images with HR-Dv2 and write features and pictures.

With no image given it uses scikit-image's bundled immunohistochemistry micrograph, so the
command works on a fresh install. Without pretrained weights (offline, nothing cached, no
--weights) it says how to supply them and falls back to classical features, which need none.
"""

from __future__ import annotations

import resource
import shutil
import time
from pathlib import Path

import click
import numpy as np

from hrdv2.errors import ConfigError, WeightsUnavailableError
from hrdv2.cli.boundary import FileRun, check_outputs
from hrdv2.cli.config_file import config_file_option
from hrdv2.io import expand_inputs, read_stack, require_memory, write_image, write_npy

SAMPLE_NAME = "skimage_immunohistochemistry"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{what} takes comma-separated integers like 1,2; got {text!r}.") from None
    return values


def iter_inputs(images: tuple[str, ...]) -> list[tuple[str, Path | None]]:
    """(name, path) of every input file; no IMAGES: the bundled sample (path None)."""
    if not images:
        return [(SAMPLE_NAME, None)]
    return [(p.stem, p) for p in expand_inputs(list(images))]


def load_pages(name: str, path: Path | None) -> list[tuple[str, np.ndarray]]:
    """(name, image) per page: every page of a stack is featurised (NAME_p000, NAME_p001, ...)."""
    if path is None:
        from skimage import data

        click.echo(f"no image given: using scikit-image's sample '{SAMPLE_NAME}' (512x512 RGB micrograph)")
        return [(SAMPLE_NAME, data.immunohistochemistry())]
    pages = read_stack(path)
    if len(pages) == 1:
        return [(name, pages[0])]
    return [(f"{name}_p{i:03d}", page) for i, page in enumerate(pages)]


def write_features(path: Path, array: np.ndarray, fmt: str) -> Path:
    """npy via hrdv2.io (atomic); zarr into a temporary folder that is then renamed into place."""
    if fmt == "npy":
        return write_npy(path.with_suffix(".npy"), array)
    import zarr

    target = path.with_suffix(".zarr")
    tmp = target.with_name(f".{target.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    z = zarr.open_array(str(tmp), mode="w", shape=array.shape, chunks=(min(64, array.shape[0]), 256, 256),
                        dtype=array.dtype)
    z[:] = array
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _classical_fallback(name: str, image: np.ndarray, out: Path, pca_png: bool) -> None:
    from hrdv2.engine import FeatureEngine
    from hrdv2.features.pca import pca_rgb
    from hrdv2.features.sets import FeatureConfig, estimate_feature_bytes

    config = FeatureConfig(kind="classical")
    require_memory(estimate_feature_bytes(config, image.shape), f"featurising {name}")
    t0 = time.perf_counter()
    feats = FeatureEngine(config).compute(image)  # (H, W, F)
    secs = time.perf_counter() - t0
    if pca_png:
        write_image(out / f"{name}_classical_pca.png", pca_rgb(np.moveaxis(feats, -1, 0)))
    click.echo(f"{name}: {image.shape[1]}x{image.shape[0]} | classical features ({feats.shape[-1]} channels, no weights "
               f"needed) | {secs:.2f} s | peak RSS {peak_rss_gb():.2f} GB -> {out}")


@click.command()
@config_file_option("features")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--backbone", default="dinov2_vits14", show_default=True, help="Backbone name (see `hrdv2 backbones`).")
@click.option("--weights", default=None, help="Local checkpoint file, or 'random' for the untrained architecture. "
              "Default: official pretrained weights (downloaded once, cached).")
@click.option("--stride", type=int, default=None, help="Patch-embedding stride S, 1 <= S <= patch size (default: patch size).")
@click.option("--shifts", "shift_text", default="1,2", show_default=True, help="Shift distances in px ('' for none).")
@click.option("--pattern", type=click.Choice(["moore", "neumann"]), default="moore", show_default=True)
@click.option("--flips/--no-flips", default=False, show_default=True, help="Also average over flips (x4).")
@click.option("--rotations/--no-rotations", default=False, show_default=True, help="Also average over 90° turns (x4).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="ViT compute dtype; accumulation is float32.")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Transformed copies per ViT call (bounds memory).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="hrdv2-out", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["npy", "zarr", "ome-zarr", "none"]), default="npy",
              show_default=True,
              help="Feature file format, (C, H, W) float32; ome-zarr: block-wise, any image size, with a pyramid.")
@click.option("--block-size", type=click.IntRange(16), default=None,
              help="Featurise in blocks of this many px per side (implies --format ome-zarr; default: one tile step).")
@click.option("--tile", type=click.IntRange(28), default=448, show_default=True,
              help="Block-wise: ViT tile side in px (tiles overlap by 1/8 and are blended, so there are no seams).")
@click.option("--planes", type=click.Choice(["xy", "xyz"]), default="xy", show_default=True,
              help="xy: every page on its own; xyz: a stack as a (Z, Y, X) volume, features averaged over its xy, xz "
                   "and yz slices (needs --format ome-zarr; large volumes use scratch disk under TMPDIR: docs/blockwise.md).")
@click.option("--pca-png/--no-pca-png", default=True, show_default=True, help="Write a PCA picture of the features.")
@click.option("--attention-png/--no-attention-png", default=True, show_default=True,
              help="Write the CLS attention (mean over heads) as a heat map.")
@click.option("--attention", "attention_kind", type=click.Choice(["softmax", "o"]), default="softmax",
              show_default=True, help="CLS signal of the last block: softmax attention, or o (the published code's "
              "CLS attention output . each token's value).")
@click.option("--facet", type=click.Choice(["token", "key", "query", "value"]), default="token", show_default=True,
              help="Features: the block's output tokens, or its attention keys / queries / values (Amir et al.).")
@click.option("--layer", type=int, default=None,
              help="Block the facet comes from, 0-based (negative: from the end). Default: the last block.")
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="Without weights, fall back to classical features instead of failing.")
@click.option("--preset", type=click.Choice(["paper", "published", "fast"]), default=None,
              help="Named settings (options given explicitly win): paper = dinov2_vits14_reg, stride 4, shifts 1,2 "
                   "Moore, flips; published = paper in the published code's geometry; fast = one pass at stride P.")
@click.option("--geometry", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
              help="Patch geometry: hrdv2 (every feature on its own pixels) or the published code's "
                   "(docs/geometry.md).")
@click.option("--flip-set", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
              help="Flips: hrdv2 {id, h, v, hv} or the published [id, h, id, v] (implies --flips).")
@click.option("--dry-run", is_flag=True, help="Print the settings and the estimated time per image, then stop.")
@click.option("--pca-video/--no-pca-video", default=None,
              help="Time series: one PCA over all frames -> NAME_pca.mp4|gif, features -> NAME_features.zarr "
                   "(T, C, H, W). Default: on for videos (mp4/avi/mov/gif...); give it for frame folders and timelapse "
                   "TIFFs (see docs/video.md).")
@click.option("--video-format", type=click.Choice(["mp4", "gif"]), default="mp4", show_default=True)
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="PCA video frame rate (default: the input video's, else 10).")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Run on a local Dask cluster of N worker processes: one task per file, or per block with "
                   "--format ome-zarr (see docs/distributed.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster: its scheduler address (tcp://host:8786) or scheduler file.")
def features(images, backbone, weights, stride, shift_text, pattern, flips, rotations, dtype, batch_size, device,
             out_dir, fmt, block_size, tile, pca_png, attention_png, attention_kind, facet, layer, fallback, workers,
             scheduler, pca_video=None, video_format="mp4", fps=None, preset=None, geometry="hrdv2", flip_set="hrdv2",
             dry_run=False, planes="xy") -> None:
    """Featurise IMAGES (files, folders, multi-page stacks) with HR-Dv2; no IMAGES: a bundled sample micrograph.

    A file that cannot be read or featurised is reported and skipped; the others are still
    written and the command exits 1 at the end."""
    from hrdv2.engine import FeatureEngine
    from hrdv2.features.sets import FeatureConfig

    out = Path(out_dir)
    check_outputs(folders=(out,))
    from hrdv2.timeseries import featurise_source, split_series

    series, images = split_series(images, pca_video)  # videos, frame folders, timelapses: one PCA over time
    inputs = iter_inputs(images) if images or not series else []
    missing = [str(path) for _, path in inputs + series if path is not None and not path.exists()]
    if missing:  # a typo: say so before the (slow) backbone load
        from hrdv2.errors import ImageReadError

        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ImageReadError(f"{missing[0]}: no such file{more}. Check the path (relative paths start at {Path.cwd()}).")
    from hrdv2.cli.presets import apply_preset, resolve_flip_set

    ctx = click.get_current_context(silent=True)
    opts = {"preset": preset, "backbone": backbone, "stride": stride, "shift_text": shift_text, "pattern": pattern,
            "flips": flips, "rotations": rotations, "geometry": geometry, "flip_set": flip_set, "device": device}
    preset = apply_preset(ctx, "features", opts)
    backbone, stride, shift_text, pattern, rotations, geometry, flip_set = (opts[k] for k in (
        "backbone", "stride", "shift_text", "pattern", "rotations", "geometry", "flip_set"))
    flips = resolve_flip_set(ctx, opts["flips"], flip_set)
    config = FeatureConfig(kind="deep", backbone=backbone, weights=weights, stride=stride,
                           shifts=parse_int_list(shift_text, "shifts"), pattern=pattern, flips=flips,
                           rotations=rotations, device=device, batch_size=batch_size, facet=facet, layer=layer,
                           attention=attention_kind, geometry=geometry, flip_set=flip_set,
                           volume=planes == "xyz", planes=planes)
    if planes == "xyz" and fmt != "ome-zarr":
        raise ConfigError(f"--planes xyz featurises a stack as one volume, written to OME-Zarr: add --format ome-zarr "
                          f"(not {fmt}).")
    engine = FeatureEngine(config, dtype=dtype)
    run = FileRun(len(inputs) + len(series))
    blockwise = fmt == "ome-zarr" or block_size is not None
    if blockwise and images == ():
        raise ConfigError("block-wise features (--format ome-zarr / --block-size) need input files; give an image.")
    on_cluster = workers is not None or scheduler is not None
    if on_cluster and images == ():
        raise ConfigError("--workers / --scheduler need input files; give images or folders.")
    try:
        bb = engine.backbone
    except WeightsUnavailableError as exc:
        if not fallback or weights is not None:
            raise
        click.secho(f"warning: {exc}", fg="yellow", err=True)
        click.secho("falling back to classical features (no weights needed); no attention map without a ViT.",
                    fg="yellow", err=True)
        cluster_task = "classical_file"  # a task of hrdv2.distributed.commands (imported only with a cluster)
        engine = FeatureEngine(FeatureConfig(kind="classical"))
        cluster_args: tuple = (load_pages, _classical_fallback, out, pca_png)

        def per_page(name: str, image: np.ndarray) -> None:
            _classical_fallback(name, image, out, pca_png)
    else:
        cluster_task = "featurise_file"
        if attention_png and not bb.has_cls_token:
            click.secho(f"note: {bb.name} has no CLS token, so there is no attention map.", fg="yellow", err=True)
        fz = engine.featurizer(attention=attention_png and bb.has_cls_token, dtype=dtype, progress=True)
        if not bb.pretrained:
            click.secho(f"note: {bb.describe()}: features are NOT meaningful, only the mechanics are.", fg="yellow",
                        err=True)
        cluster_args = (load_pages, _featurise_one, out, fmt, pca_png, attention_png)
        from hrdv2.cli.presets import TimeEstimate, describe_features

        setup = describe_features(preset, config, len(fz.transforms))
        click.echo(setup)
        estimator = TimeEstimate(fz)

        def per_page(name: str, image: np.ndarray) -> None:
            from hrdv2.cli.presets import estimate_message, faster_hints

            h, w = image.shape[:2]
            msg = estimate_message(estimator.seconds(h, w), f"{name} ({w}x{h})", fz, faster_hints("features", fz),
                                   threshold=0.0 if dry_run else None)
            if msg:
                click.secho(msg, fg="yellow", err=not dry_run)
            if not dry_run:
                _featurise_one(fz, name, image, out, fmt, pca_png, attention_png, setup=f"preset {preset}" if preset
                               else "")

    if dry_run and (on_cluster or blockwise or series):
        click.echo("dry run: nothing featurised (time estimates are given for whole images only).")
        return
    if on_cluster:
        from hrdv2.distributed import commands

        _features_on_cluster(engine, inputs, out, blockwise, block_size, tile, getattr(commands, cluster_task),
                             cluster_args, pca_png, run, workers, scheduler)
    for name, path in [] if on_cluster else inputs:
        with run.step(path or name):
            if blockwise:
                _featurise_blockwise(engine, path, out, block_size, tile, pca_png)
                continue
            for page_name, image in load_pages(name, path):
                per_page(page_name, image)
    for name, source in series:
        with run.step(source):
            click.echo(featurise_source(engine, name, source, out, store=fmt != "none", video_format=video_format,
                                        fps=fps)[1])
    run.finish(len(inputs) + len(series))


def _features_on_cluster(engine, inputs, out: Path, blockwise: bool, block_size: int | None, tile: int, file_func,
                         file_args: tuple, pca_png: bool, run: FileRun, workers: int | None,
                         scheduler: str | None) -> None:
    """``features`` on a Dask cluster: one task per file (``file_func`` runs this module's per-page
    steps on a worker) or, block-wise, one per block; lines and failures reported as they come."""
    from hrdv2.distributed import features_on_cluster, open_client

    def after(path: Path, target: Path, plan, n_features: int) -> str:
        stem = path.name.split(".")[0]
        if pca_png:
            _pyramid_pca_png(target, out / f"{stem}_pca.png")
        dims = "x".join(str(n) for n in reversed(plan.shape))
        return (f"{stem}: {dims} | {engine.describe()} | block-wise on the cluster, {len(plan)} blocks of "
                f"{plan.block_shape[-1]} px | {n_features} channels -> {target}\n")

    with open_client(workers, scheduler, echo=click.echo) as client:
        for outcome in features_on_cluster(client, engine, [p for _, p in inputs], out, blockwise=blockwise,
                                           block_size=block_size, tile=tile, file_func=file_func, file_args=file_args,
                                           after_blockwise=after, echo=click.echo):
            with run.step(outcome.name):
                outcome.result()
                click.echo(outcome.output, nl=False)


def _featurise_blockwise(engine, path: Path, out: Path, block_size: int | None, tile: int, pca_png: bool) -> None:
    """Features of ``path`` block by block into NAME_features.ome.zarr ((C, [Z,] Y, X) float32, with a
    pyramid); the PCA picture is made from a pyramid level of at most ~1024 px."""
    from tqdm import tqdm

    from hrdv2.blocks import OmeZarrWriter, open_array
    from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for
    from hrdv2.blocks import map_blocks

    t0 = time.perf_counter()
    lazy = open_array(path)
    bf = BlockFeatures(engine, lazy, block_sizes_for(engine.config.kind, block_size, tile, tile // 8), tile=tile,
                       overlap=tile // 8)
    stem = path.name.split(".")[0]
    st = path.stat()
    key = f"{engine.config.key()}|{path.resolve()}:{st.st_size}:{st.st_mtime_ns}|{bf.plan.block_shape}|{tile}"
    writer = OmeZarrWriter(out / f"{stem}_features.ome.zarr", np.float32, bf.n_features, key=key)
    with tqdm(desc=path.name, unit="block", leave=False, disable=None) as bar:
        try:
            target = map_blocks(lazy, bf.plan, bf.features, writer, progress=bar, workers=bf.use_workers())
        finally:
            bf.close()
    if pca_png:
        _pyramid_pca_png(target, out / f"{stem}_pca.png")
    dims = "x".join(str(n) for n in reversed(lazy.spatial_shape))
    click.echo(f"{stem}: {dims} | {engine.describe()} | block-wise, {len(bf.plan)} blocks of {bf.plan.block_shape[-1]} px "
               f"| {bf.n_features} channels | {time.perf_counter() - t0:.2f} s | peak RSS {peak_rss_gb():.2f} GB -> {target}")


def _pyramid_pca_png(store: Path, target: Path, max_side: int = 1024) -> None:
    """A PCA picture of an OME-Zarr feature store from its first pyramid level that fits ``max_side``."""
    import zarr

    from hrdv2.features.pca import pca_rgb

    group = zarr.open_group(str(store), mode="r")
    levels = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
    arr = next((group[k] for k in levels if max(group[k].shape[-2:]) <= max_side), group[levels[-1]])
    data = np.asarray(arr)
    if data.ndim == 4:  # (C, Z, Y, X): the first page
        data = data[:, 0]
    write_image(target, pca_rgb(data))


def _featurise_one(fz, name: str, image: np.ndarray, out: Path, fmt: str, pca_png: bool, attention_png: bool,
                   setup: str = "") -> None:
    from hrdv2.features.pca import heatmap_rgb, pca_rgb

    h, w = image.shape[:2]
    require_memory(8 * h * w * fz.backbone.embed_dim, f"featurising {name} ({w}x{h})")
    res = fz(image)
    feats = res.features.numpy()
    if fmt != "none":
        write_features(out / f"{name}_features", feats, fmt)
    if pca_png:
        write_image(out / f"{name}_pca.png", pca_rgb(feats))
    if attention_png and res.attention is not None:
        write_image(out / f"{name}_attention.png", heatmap_rgb(res.mean_attention()))
    i = res.info
    click.echo(
        f"{name}: {w}x{h} | {setup + ' | ' if setup else ''}{i['backbone']}{_signals_note(fz)} | stride {i['stride']}"
        f"{' (published geometry)' if i.get('geometry', 'hrdv2') != 'hrdv2' else ''} grid "
        f"{i['grid'][1]}x{i['grid'][0]} | {i['transforms']} transforms | {i['dtype']} | {i['seconds']:.2f} s "
        f"(ViT {i['vit_seconds']:.2f} s) | peak RSS {peak_rss_gb():.2f} GB | features {tuple(feats.shape)} -> {out}"
    )


def _signals_note(fz) -> str:
    """' | key of block 3, o attention' when the featurizer does not use the defaults."""
    parts = []
    if fz.facet != "token" or fz.layer != fz.backbone.depth - 1:
        parts.append(f"{fz.facet} of block {fz.layer}")
    if fz.attention_kind not in (None, "softmax"):
        parts.append(f"{fz.attention_kind} attention")
    return " | " + ", ".join(parts) if parts else ""


@click.command()
def backbones() -> None:
    """List the named backbones and whether their official weights are already cached."""
    import torch

    from hrdv2.backbones import REGISTRY

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name, spec in sorted(REGISTRY.items()):
        if spec.manual:  # licensed weights: never downloaded, always a local file
            click.echo(f"{name:20s} {spec.timm_name:32s} local file only (--weights PATH): {spec.manual}")
            continue
        cached = spec.filename is not None and (cache / spec.filename).exists()
        click.echo(f"{name:20s} {spec.timm_name:32s} {'cached' if cached else 'not cached'}  {spec.url}")
    click.echo("Any timm ViT, EVA (eva02_*, vit_*_dinov3, vit_*_rope_*) or SAM encoder (samvit_*): timm:<name>, "
               "e.g. timm:vit_base_patch16_224.augreg_in21k")
