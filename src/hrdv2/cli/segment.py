"""`hrdv2 train | apply | evaluate`: scribble segmentation from the command line.

train    image + scribble pairs -> a .skops model (carries feature config and class names)
apply    model + files / folders / multi-page TIFF stacks -> label images, optional
         probability maps, and phase_fractions.csv (class area fractions per image / page)
evaluate predictions vs ground truth -> per-class IoU, mIoU, pixel accuracy
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hrdv2.cli.boundary import FileRun, check_outputs
from hrdv2.cli.config_file import config_file_option
from hrdv2.errors import ConfigError, HRDv2Error, ShapeError


class _Progress:
    """A ``progress(done, total)`` callback drawing a transient tqdm bar (featurising one image)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, leave=False, disable=None)
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.command()
@config_file_option("train")
@click.option("--image", "images", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Training image (repeat; paired in order with --scribble).")
@click.option("--scribble", "scribbles", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Scribble label map: 0 = unlabelled, 1..K = class (repeat).")
@click.option("--features", "kind", type=click.Choice(["classical", "deep", "hybrid", "auto"]), default="classical",
              show_default=True, help="Feature set; deep/hybrid need backbone weights (--weights); auto: classical "
                                      "filters, scales and classifier chosen by cross-validation on the scribbles.")
@click.option("--classifier", type=click.Choice(["logistic", "random_forest", "gradient_boosting"]),
              default="random_forest", show_default=True)
@click.option("--sigmas", default="1,2,4,8,16", show_default=True, help="Classical filter scales (px).")
@click.option("--filters", default="default", show_default=True,
              help="Classical filters: 'default', 'weka', 'all', or comma-separated names (see docs/segmentation.md).")
@click.option("--normalise", type=click.Choice(["auto", "percentile", "none"]), default="auto", show_default=True,
              help="Intensity rescaling before featurising (auto: percentile stretch for grey, none for colour).")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None, help="Backbone weights file (.pth), or 'random' (untrained, testing only).")
@click.option("--stride", type=int, default=None, help="ViT patch stride (default: patch size).")
@click.option("--flips/--no-flips", default=False, help="Also average over flips (deep features).")
@click.option("--shifts", "shift_text", default="1,2", show_default=True,
              help="Deep features: shift distances in px ('' for none).")
@click.option("--pattern", type=click.Choice(["moore", "neumann"]), default="moore", show_default=True,
              help="Deep features: shift neighbourhood.")
@click.option("--rotations/--no-rotations", default=False, show_default=True,
              help="Deep features: also average over 90° turns (x4).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Deep features: ViT compute dtype; accumulation is float32.")
@click.option("--batch-size", type=click.IntRange(1), default=4, show_default=True,
              help="Deep features: transformed copies per ViT call (bounds memory).")
@click.option("--geometry", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
              help="Deep features: patch geometry, hrdv2 or the published code's (docs/geometry.md).")
@click.option("--flip-set", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
              help="Deep features: hrdv2 flips {id, h, v, hv} or the published [id, h, id, v] (implies --flips).")
@click.option("--preset", type=click.Choice(["paper", "published", "fast"]), default=None,
              help="Named settings (options given explicitly win): paper = deep features of dinov2_vits14_reg, "
                   "stride 4, shifts 1,2 Moore, flips; published = paper in the published geometry; fast = deep, one "
                   "pass at stride P.")
@click.option("--dry-run", is_flag=True, help="Print the settings and estimated featurising time, then stop.")
@click.option("--pca", "pca_components", type=int, default=None, help="Compress deep features to K channels.")
@click.option("--crf/--no-crf", default=False, show_default=True, help="Dense-CRF clean-up of predictions.")
@click.option("--max-samples", type=int, default=20_000, show_default=True,
              help="Cap on training pixels (class-balanced sampling beyond it).")
@click.option("--class-names", default=None, help="Comma-separated names of classes 1..K.")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path), default=None,
              help="Feature cache folder (re-training after new strokes skips featurising).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N, mps or auto (deep features).")
@click.option("--volume/--no-volume", default=False, show_default=True,
              help="Treat each stack as a 3-D volume: classical filters in 3D (labels on a few slices are enough).")
@click.option("--spacing", default="1,1,1", show_default=True,
              help="Volume mode: voxel size z,y,x (e.g. 4,1,1 for slices 4x thicker than pixels).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model file to write (.skops).")
def train(images, scribbles, kind, classifier, sigmas, filters, normalise, backbone, weights, stride, flips,
          pca_components, crf, max_samples, class_names, cache_dir, device, volume, spacing, out, shift_text="1,2",
          pattern="moore", rotations=False, dtype="float32", batch_size=4, geometry="hrdv2", flip_set="hrdv2",
          preset=None, dry_run=False) -> None:
    """Train a segmenter on image + scribble pairs (multi-page TIFF stacks with label stacks too:
    pages without labels are skipped)."""
    from hrdv2.features.sets import FeatureConfig, estimate_feature_bytes
    from hrdv2.io import require_memory
    from hrdv2.segmentation import Segmenter

    if len(images) != len(scribbles):
        raise click.UsageError(f"give one --scribble per --image ({len(images)} images, {len(scribbles)} scribbles).")
    check_outputs(files=(out,))
    from hrdv2.cli.features import parse_int_list
    from hrdv2.cli.presets import TRAIN_OPTION_KINDS, apply_preset, describe_features, refuse_inapplicable, \
        resolve_flip_set

    ctx = click.get_current_context(silent=True)
    opts = dict(preset=preset, kind=kind, backbone=backbone, weights=weights, stride=stride, shift_text=shift_text,
                pattern=pattern, flips=flips, rotations=rotations, dtype=dtype, batch_size=batch_size,
                geometry=geometry, flip_set=flip_set, pca_components=pca_components, device=device, sigmas=sigmas,
                filters=filters, volume=volume, spacing=spacing)
    preset = apply_preset(ctx, "train", opts)
    kind, backbone, stride, shift_text, pattern, rotations, geometry, flip_set = (opts[k] for k in (
        "kind", "backbone", "stride", "shift_text", "pattern", "rotations", "geometry", "flip_set"))
    if preset and kind in ("classical", "auto"):
        raise ConfigError(f"--preset {preset} sets deep features, but --features {kind} was chosen; drop one of them "
                          "(or use --features hybrid for both).")
    refuse_inapplicable(ctx, kind, opts, TRAIN_OPTION_KINDS)
    flips = resolve_flip_set(ctx, opts["flips"], flip_set) if kind not in ("classical", "auto") else flips
    config = FeatureConfig(kind="classical" if kind == "auto" else kind, sigmas=_floats(sigmas), filters=filters, normalise=normalise, backbone=backbone,
                           weights=weights, stride=stride, flips=flips, pca_components=pca_components, device=device,
                           volume=volume, spacing=spacing if volume else (1.0, 1.0, 1.0),
                           shifts=parse_int_list(shift_text, "shifts"), pattern=pattern, rotations=rotations,
                           batch_size=batch_size, geometry=geometry, flip_set=flip_set)
    names = [n.strip() for n in class_names.split(",")] if class_names else None
    seg = Segmenter("auto" if kind == "auto" else config, classifier=classifier, crf=crf, max_samples=max_samples,
                    class_names=names, cache_dir=cache_dir)
    if kind == "auto":
        seg.features = seg.features.replace(normalise=normalise)
    setup = ""
    if config.uses_deep:
        seg.engine.dtype = dtype  # a runtime choice, like the device: not part of the model's features
        setup = describe_features(preset, config, len(seg.engine.transforms()))
        click.echo(setup)
    if volume:
        _train_volume(seg, images, scribbles, out)
        return
    imgs, scrs, pair_names = read_training_pairs(images, scribbles)
    for im, name in zip(imgs, pair_names):
        require_memory(estimate_feature_bytes(seg.compute_config, im.shape), f"featurising {name}")
    if config.uses_deep:
        _print_estimate(seg, imgs, dry_run)
    if dry_run:
        click.echo(f"dry run: {len(imgs)} image(s)/page(s) read, nothing featurised or trained.")
        return
    feats = []
    for name, im in tqdm([] if kind == "auto" else list(zip(pair_names, imgs)), desc="featurising", unit="img",
                         disable=None):
        with _Progress(f"features {name}") as cb:
            feats.append(seg.featurise(im, progress=cb))
    seg.fit(imgs, scrs, feats or None, names=pair_names)  # auto featurises inside fit, once per candidate set
    seg.save(out)
    if getattr(seg, "auto_choice_", None) is not None:
        setup = seg.auto_choice_.summary()
    click.echo(f"trained {seg!r} on {seg.n_train_pixels_} pixels of {len(imgs)} image(s)/page(s); "
               f"classes {dict(zip(seg.classes_.tolist(), seg.class_names))}; wrote {out}"
               + (f" | {setup}" if setup else ""))


def _print_estimate(seg, imgs: list[np.ndarray], force: bool) -> None:
    """Estimated deep-featurising time of all training images, printed when over the threshold
    (always with --dry-run), with how to make it faster."""
    from hrdv2.cli.presets import TimeEstimate, estimate_message, faster_hints

    fz = seg.engine.featurizer()
    estimator = TimeEstimate(fz)
    seconds = sum(estimator.seconds(*im.shape[:2]) for im in imgs)
    what = f"{len(imgs)} training image(s)/page(s)"
    msg = estimate_message(seconds, what, fz, faster_hints("train", fz), threshold=0.0 if force else None)
    if msg:
        click.secho(msg, fg="yellow", err=not force)


def _train_volume(seg, images: tuple[Path, ...], scribbles: tuple[Path, ...], out: Path) -> None:
    """Volume mode: 3-D features of the labelled slices only (each with its 3-D halo), then fit."""
    from hrdv2.blocks import as_lazy
    from hrdv2.engine.blockwise import BlockFeatures
    from hrdv2.io import read_label_stack, read_stack

    if seg.crf:
        raise HRDv2Error("the dense CRF works on 2-D images; volume mode runs without it (drop --crf).")
    imgs, scrs, feats, names = [], [], [], []
    for ip, sp in zip(images, scribbles):
        pages, labels = read_stack(ip), read_label_stack(sp)
        if len(pages) < 2 or pages[0].ndim != 2:
            raise ShapeError(f"{ip}: volume mode needs a grey multi-page stack (Z, Y, X); it has {len(pages)} "
                             f"page(s) of shape {pages[0].shape}. Train without --volume for single images.")
        if len(labels) != len(pages) or labels[0].shape != pages[0].shape:
            raise ShapeError(f"{sp}: {len(labels)} label page(s) of {labels[0].shape} for {len(pages)} image page(s) of "
                             f"{pages[0].shape}; give one label page per slice (blank pages for unlabelled ones).")
        bf = BlockFeatures(seg.engine, as_lazy(np.stack(pages)))
        labelled = [z for z, lab in enumerate(labels) if lab.any()]
        for z in tqdm(labelled, desc=f"3-D features of labelled slices of {ip.name}", unit="slice", disable=None):
            imgs.append(pages[z])
            scrs.append(labels[z])
            feats.append(bf.slice_features(z))
            names.append(f"{sp} slice {z}")
    if not imgs:
        raise HRDv2Error(f"no labelled pixels in {', '.join(map(str, scribbles))}: paint at least one stroke per class.")
    seg.fit(imgs, scrs, feats, names=names)
    seg.save(out)
    click.echo(f"trained {seg!r} (3-D filters, spacing {','.join(f'{v:g}' for v in seg.features.spacing)}) on "
               f"{seg.n_train_pixels_} voxels of {len(imgs)} slice(s); classes "
               f"{dict(zip(seg.classes_.tolist(), seg.class_names))}; wrote {out}")


def read_training_pairs(images: tuple[Path, ...], scribbles: tuple[Path, ...]
                        ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Image pages and their label pages. A stack needs a label stack with as many pages; stack pages
    without any label are skipped (a single image with an empty scribble is an error, in ``fit``)."""
    from hrdv2.io import read_label_stack, read_stack

    imgs, scrs, names = [], [], []
    for ip, sp in zip(images, scribbles):
        pages = read_stack(ip)
        labels = read_label_stack(sp)
        if len(labels) != len(pages):
            raise ShapeError(f"{sp}: {len(labels)} label page(s) but its image {ip} has {len(pages)} page(s); "
                             "give one label page per image page (blank pages for unlabelled ones).")
        for i, (page, lab) in enumerate(zip(pages, labels)):
            name = f"{sp} page {i}" if len(pages) > 1 else str(sp)
            if lab.shape != page.shape[:2]:
                raise ShapeError(f"{name}: label map is {lab.shape[1]}x{lab.shape[0]} (WxH) but its image is "
                                 f"{page.shape[1]}x{page.shape[0]}; they must be the same size.")
            if len(pages) > 1 and not lab.any():
                continue
            imgs.append(page)
            scrs.append(lab)
            names.append(name)
    if not imgs:
        raise HRDv2Error(f"no labelled pixels in {', '.join(map(str, scribbles))}: paint at least one stroke per class.")
    return imgs, scrs, names


def _out_name(path: Path, multi: bool, ext: str) -> str:
    return f"{path.stem}_labels{'.tif' if multi else ext}"


def _predict_bytes(seg, shape: tuple[int, ...]) -> int:
    """Features plus float32 probabilities (and the CRF's copy) of one page."""
    from hrdv2.features.sets import estimate_feature_bytes

    return estimate_feature_bytes(seg.compute_config, shape) + 8 * int(shape[0]) * int(shape[1]) * len(seg.classes_)


@click.command(name="apply")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--format", "fmt", type=click.Choice(["png", "tif", "ome-zarr", "bigtiff"]), default="png",
              show_default=True,
              help="png/tif: whole label images (stacks: multi-page TIFF); ome-zarr/bigtiff: block-wise, any size, "
                   "with a multiscale pyramid (NAME_labels.ome.zarr / NAME_labels.ome.tif).")
@click.option("--block-size", type=click.IntRange(16), default=None,
              help="Process in blocks of this many px per side (bounded memory; default with ome-zarr/bigtiff: 1024 "
                   "for classical features, one tile step for deep).")
@click.option("--tile", type=click.IntRange(28), default=448, show_default=True,
              help="Deep features block-wise: ViT tile side in px (tiles overlap by 1/8 and are blended).")
@click.option("--proba/--no-proba", default=False, help="Also write float32 probability maps (STEM_proba.tif).")
@click.option("--crf/--no-crf", default=None, help="Override the model's CRF setting.")
@click.option("--device", default=None, help="Where deep features run: cpu, cuda, cuda:N, mps or auto "
              "[default: the model's].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Run on a local Dask cluster of N worker processes: one task per file, or per block with "
                   "--format ome-zarr/bigtiff (see docs/distributed.md).")
@click.option("--scheduler", default=None, metavar="ADDRESS|FILE",
              help="Run on an existing Dask cluster: its scheduler address (tcp://host:8786) or scheduler file.")
def apply(model, inputs, out_dir, fmt, block_size, tile, proba, crf, device, workers, scheduler) -> None:
    """Segment files, folders and multi-page TIFF stacks with a trained MODEL.

    A file that cannot be read or segmented is reported and skipped; the others are still
    written, with their phase fractions, and the command exits 1 at the end. Block-wise runs
    (--format ome-zarr/bigtiff, or --block-size) read tiled TIFF, zarr and .npy inputs region by
    region, and an interrupted run resumes where it stopped. With --workers or --scheduler the
    files (or blocks) are tasks on a Dask cluster, with the same results."""
    from hrdv2.io import expand_inputs, write_text_atomic
    from hrdv2.segmentation import Segmenter

    check_outputs(folders=(out_dir,))
    seg = Segmenter.load(model)
    if crf is not None:
        seg.crf = crf
    if device is not None:  # a runtime choice: the features (and the model's config key) stay the same
        from hrdv2.device import resolve_device

        seg.features = seg.features.replace(device=str(resolve_device(device)))
    blockwise = fmt in ("ome-zarr", "bigtiff") or block_size is not None or seg.features.volume
    if blockwise and seg.crf:
        raise HRDv2Error("the dense CRF needs whole images: block-wise apply (--format ome-zarr/bigtiff or "
                         "--block-size) runs without it; add --no-crf, or use --format png/tif without --block-size.")
    if blockwise and proba and fmt in ("png", "tif"):
        raise HRDv2Error("--proba with --block-size needs --format ome-zarr or bigtiff (probabilities of large "
                         "images are written block by block).")
    files = expand_inputs(list(inputs), block_formats=True) if blockwise else expand_inputs(list(inputs))
    if not files:
        raise HRDv2Error(f"no images found in {', '.join(map(str, inputs))}.")
    rows: list[list] = []
    run = FileRun(len(files))
    model_key = _file_key(Path(model))
    on_cluster = workers is not None or scheduler is not None
    if on_cluster:
        from hrdv2.distributed import apply_on_cluster, open_client

        results = {}
        with open_client(workers, scheduler, echo=click.echo) as client:
            for outcome in apply_on_cluster(
                    client, seg, files, out_dir, model=Path(model), fmt=fmt, block_size=block_size, tile=tile,
                    proba=proba, whole=_apply_whole, blockwise=_apply_blockwise, fractions=_label_fractions,
                    writer_key=lambda p: f"{model_key}|{_file_key(p)}|{block_size}|{tile}", model_key=model_key,
                    echo=click.echo):
                with run.step(outcome.name):
                    results[outcome.name] = outcome.result()
        rows.extend([str(p), i] + list(f) for p in files if p in results for i, f in enumerate(results[p]))
    for path in tqdm([] if on_cluster else files, desc="applying", unit="file", disable=None):
        with run.step(path):
            if blockwise:
                fractions = _apply_blockwise(seg, path, out_dir, fmt, block_size, tile, proba, model_key)
            else:
                fractions = _apply_whole(seg, path, out_dir, fmt, proba)
            rows.extend([str(path), i] + list(f) for i, f in enumerate(fractions))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "page"] + [seg.class_names[c - 1] if c - 1 < len(seg.class_names) else f"class {c}"
                                   for c in seg.classes_])
    for r in rows:
        w.writerow(r[:2] + [f"{v:.6f}" for v in r[2:]])
    if rows:
        write_text_atomic(out_dir / "phase_fractions.csv", buf.getvalue())
    click.echo(f"segmented {run.done} of {len(files)} file(s) into {out_dir}")
    run.finish(len(files))


def _fractions(seg, counts: np.ndarray) -> list[float]:
    total = max(int(counts.sum()), 1)
    return [counts[c] / total for c in seg.classes_]


def _apply_whole(seg, path: Path, out_dir: Path, fmt: str, proba: bool) -> list[list[float]]:
    """Segment every page of ``path`` in memory; returns the phase fractions per page."""
    from hrdv2.io import read_stack, require_memory, write_image

    pages = read_stack(path)
    require_memory(_predict_bytes(seg, pages[0].shape), f"segmenting {path} whole (use --format ome-zarr or "
                   "--block-size to segment it block by block)")
    labels, probs = [], []
    for page in tqdm(pages, desc=path.name, unit="page", leave=False, disable=len(pages) < 2):
        with _Progress(f"features {path.name}") as cb:
            p = seg.predict_proba(page, progress=cb)
        labels.append(seg.classes_.astype(np.uint8)[np.argmax(p, axis=-1)])
        if proba:
            probs.append(p)
    multi = len(pages) > 1
    write_image(out_dir / _out_name(path, multi, "." + fmt), np.stack(labels) if multi else labels[0], pages=multi)
    if proba:
        write_image(out_dir / f"{path.stem}_proba.tif", np.stack(probs) if multi else probs[0], pages=multi)
    size = int(seg.classes_.max()) + 1
    return [_fractions(seg, np.bincount(lab.ravel(), minlength=size)) for lab in labels]


def _apply_blockwise(seg, path: Path, out_dir: Path, fmt: str, block_size: int | None, tile: int, proba: bool,
                     model_key: str) -> list[list[float]]:
    """Segment ``path`` block by block into an OME-Zarr / BigTIFF (or, with --block-size and png/tif,
    into memory, then one file); returns the phase fractions per page."""
    from hrdv2.blocks import open_array
    from hrdv2.io import write_image
    from hrdv2.segmentation.blockwise import label_writer, segment_blockwise

    lazy = open_array(path)
    key = f"{model_key}|{_file_key(path)}|{block_size}|{tile}"
    stem = path.name.split(".")[0]
    suffix = {"ome-zarr": ".ome.zarr", "bigtiff": ".ome.tif"}.get(fmt)
    with tqdm(desc=path.name, unit="block", leave=False, disable=None) as bar:
        if suffix is not None:
            probs = label_writer(fmt, out_dir / f"{stem}_proba{suffix}", key, len(seg.classes_), proba=True) \
                if proba else None  # written in the same pass: features are computed once
            target = segment_blockwise(seg, lazy, label_writer(fmt, out_dir / f"{stem}_labels{suffix}", key),
                                       block_size=block_size, tile=tile, overlap=tile // 8, progress=bar,
                                       proba_writer=probs)
            labels = open_array(target)
        else:
            labels = segment_blockwise(seg, lazy, block_size=block_size, tile=tile, overlap=tile // 8, progress=bar)
            multi = labels.ndim == 3
            write_image(out_dir / _out_name(path, multi, "." + fmt), labels, pages=multi)
    return _label_fractions(seg, labels)


def _label_fractions(seg, labels) -> list[list[float]]:
    """Phase fractions per page of a label image or stack, read page by page, band by band."""
    size = int(seg.classes_.max()) + 1
    shape = labels.shape
    pages = shape[0] if len(shape) == 3 else 1
    out = []
    for z in range(pages):
        counts = np.zeros(size, np.int64)
        for y in range(0, shape[-2], 4096):
            band = labels[z, y:y + 4096] if len(shape) == 3 else labels[y:y + 4096]
            counts += np.bincount(np.asarray(band).ravel(), minlength=size)[:size]
        out.append(_fractions(seg, counts))
    return out


def _file_key(path: Path) -> str:
    """Identity of an input for resuming: name, size and modification time."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


@click.command()
@click.argument("preds", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gt", "gts", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Ground-truth label map(s), paired in order with PREDS (0 = ignore).")
@click.option("--class-names", default=None, help="Comma-separated names of classes 1..K, for the table.")
def evaluate(preds, gts, class_names) -> None:
    """Per-class IoU, mIoU and pixel accuracy of predicted label maps against ground truth.

    Label maps must hold integer class ids (0 = ignore in the ground truth, unlabelled in a
    prediction); non-integer, negative or NaN values are refused, never truncated."""
    from hrdv2.io import read_label_stack
    from hrdv2.metrics.segmentation import compact_confusion, iou_per_class, mean_iou, pixel_accuracy

    gts = list(gts)
    if len(gts) == 1 and len(preds) > 1 and Path(gts[0]).is_dir():
        gts = [Path(gts[0]) / Path(p).name.replace("_labels", "_gt") for p in preds]
    if len(preds) != len(gts):
        raise click.UsageError(f"give one --gt per prediction ({len(preds)} predictions, {len(gts)} --gt).")
    pairs = []
    for pp, gp in zip(preds, gts):
        pr, gt = read_label_stack(pp), read_label_stack(gp)
        if len(pr) != len(gt) or pr[0].shape != gt[0].shape:
            raise ShapeError(f"{pp} ({len(pr)} page(s) of {pr[0].shape}) does not match {gp} "
                             f"({len(gt)} page(s) of {gt[0].shape}).")
        if not any(g.any() for g in gt):
            raise HRDv2Error(f"{gp}: the ground truth has no labelled pixel (all 0 = ignore); nothing to score. "
                             "Check that it is the right file and that classes are numbered from 1.")
        pairs.extend(zip(pr, gt))
    ids, cm = compact_confusion(tqdm(pairs, desc="scoring", disable=len(pairs) < 8))
    names = [n.strip() for n in class_names.split(",")] if class_names else []
    ious = iou_per_class(cm)
    click.echo(f"{'class':<24}{'IoU':>8}{'pixels':>12}")
    for j, c in enumerate(ids[1:], start=1):
        name = names[c - 1] if c - 1 < len(names) else f"class {c}"
        iou = ious[j - 1]
        click.echo(f"{c:>2} {name:<21}{'-' if np.isnan(iou) else f'{iou:.4f}':>8}{int(cm[j].sum()):>12}")
    click.echo(f"mIoU            {mean_iou(cm):.4f}")
    click.echo(f"pixel accuracy  {pixel_accuracy(cm):.4f}")
