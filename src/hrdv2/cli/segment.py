"""`hrdv2 apply | evaluate`: scribble segmentation from the command line (`hrdv2 train` is in
cli/train.py).

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
from hrdv2.cli.progress import ProgressBar
from hrdv2.errors import HRDv2Error, ShapeError


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
        with ProgressBar(f"features {path.name}") as cb:
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
