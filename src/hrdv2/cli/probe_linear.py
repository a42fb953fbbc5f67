"""``hrdv2 probe linear``: linear probes of upsampled features (paper Table S1, FeatUp's recipe).

Trains one linear head per upsampler on --train (or applies a given pretrained head with
--head) and reports mIoU and pixel accuracy on --val.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from hrdv2.cli.config_file import config_file_option
from hrdv2.errors import ConfigError


def _pool_key(dataset: Any, feature_key: str, per_image: int, seed: int, max_side: int | None) -> str:
    """Names a cached training-pixel sample: the files (path, size, mtime), features and sampling."""
    files = []
    for s in dataset:
        for p in (s.image_path, s.label_path):
            st = Path(p).stat()
            files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps([files, feature_key, per_image, seed, max_side], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _training_pool(dataset, dense, per_image: int, seed: int, prepare, cache_dir: Path | None):
    """Sampled training pixels of one upsampler, from ``cache_dir`` when this exact sample was made before."""
    from hrdv2.io import atomic_path
    from hrdv2.probe.linear import sample_pixels

    path = None
    if cache_dir is not None:
        key = _pool_key(dataset, dense.cache_key.key(), per_image, seed, getattr(prepare, "max_side", None))
        path = cache_dir / f"pool-{dense.name}-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    click.echo(f"{dense.name}: training pixels from the cache ({path.name})", err=True)
                    return z["x"], z["y"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable entry: sample again and overwrite it
    x, y = sample_pixels(dataset, dense, per_image, seed, prepare)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, y=y)
    return x, y


class _Prepare:
    """Downsizes image and labels to --max-side (kept as an object so the cache key can read max_side)."""

    def __init__(self, max_side: int | None):
        self.max_side = max_side

    def __call__(self, image: np.ndarray, labels: np.ndarray):
        from hrdv2.probe.linear import downsize

        return downsize(image, labels, self.max_side)


@click.command("linear")
@config_file_option("probe linear")
@click.option("--train", "train_root", type=click.Path(path_type=Path), default=None,
              help="Training set (not needed with --head).")
@click.option("--val", "val_root", type=click.Path(path_type=Path), required=True, help="Validation set.")
@click.option("--dataset", "layout", type=click.Choice(["folder", "voc", "cocostuff"]), default="folder",
              show_default=True, help="folder: NAME.png + NAME_gt.png; voc: VOC2012 (SegmentationClass); cocostuff: "
                                      "images/ + annotations/ (27 coarse classes unless --fine).")
@click.option("--train-split", default="train", show_default=True, help="voc / cocostuff split of --train.")
@click.option("--val-split", default="val", show_default=True, help="voc / cocostuff split of --val.")
@click.option("--fine", is_flag=True, help="cocostuff: the 182 fine ids instead of the 27 coarse classes.")
@click.option("--upsampler", "upsamplers", default="hrdv2", show_default=True,
              help="Comma-separated upsamplers, one probe each: hrdv2, hrdv2-shift-flip, nearest, bilinear, stride, "
                   "jbu, classical.")
@click.option("--head", "head_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Apply this pretrained linear head (e.g. DINOv2's dinov2_vits14_voc2012_linear_head.pth) "
                   "instead of training one.")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="ViT patch stride for hrdv2* and nearest/bilinear/stride (the paper's Table S1: 4).")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None, help="Checkpoint path, or 'random' (UNTRAINED); default: official weights.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True, help="Adam steps.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.005, show_default=True)
@click.option("--batch-pixels", type=click.IntRange(1), default=4096, show_default=True)
@click.option("--pixels-per-image", type=click.IntRange(1), default=4096, show_default=True,
              help="Labelled pixels sampled from each training image.")
@click.option("--max-side", type=click.IntRange(16), default=None, help="Downsize images to this longer side.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N images of each set.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Cache of sampled training pixels (default: OUT/cache); val feature maps are cached too when given.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("hrdv2-probe-linear"), show_default=True)
def linear(train_root, val_root, layout, train_split, val_split, fine, upsamplers, head_path, stride, backbone,
           weights, device, steps, lr, batch_pixels, pixels_per_image, max_side, limit, seed, cache_dir, out_dir) -> None:
    """Linear probe: features -> classes, one head per upsampler; mIoU and accuracy on --val.

    Writes into --out: linear_probe.json (set-up and scores), linear_probe.csv (one row per
    upsampler), head_UPSAMPLER.pth (trained heads, DINOv2's key layout) and
    predictions_UPSAMPLER.png (image | truth | prediction for the first validation images).
    """
    from hrdv2.cli.boundary import check_outputs
    from hrdv2.cli.probe import _print_table
    from hrdv2.datasets.segmentation import SegmentationDataset, load_segmentation
    from hrdv2.io import write_image, write_text_atomic
    from hrdv2.matching.features import NO_BACKBONE, DenseFeatures, resolve_upsampler_name, stride_kwargs
    from hrdv2.probe.linear import (
        LinearProbeConfig, evaluate, load_head, n_classes_of, prediction_picture, save_head, train_head,
    )

    names = [resolve_upsampler_name(n.strip()) for n in upsamplers.split(",") if n.strip()]
    if not names:
        raise ConfigError("--upsampler names no upsampler; e.g. --upsampler hrdv2,bilinear.")
    kwargs = {n: stride_kwargs(n, stride) for n in names}
    if head_path is None and train_root is None:
        raise ConfigError("give --train DIR to train a probe, or --head FILE to apply a pretrained linear head.")
    config = LinearProbeConfig(lr=lr, steps=steps, batch_pixels=batch_pixels, pixels_per_image=pixels_per_image,
                               seed=seed, device=device)
    check_outputs(folders=(out_dir,))
    extra = {"coarse": not fine} if layout == "cocostuff" else {}

    def load(root: Path, split: str) -> SegmentationDataset:
        d = load_segmentation(layout, root, split, **extra)
        if limit is not None:
            d.samples = d.samples[:limit]
        return d

    val = load(val_root, val_split)
    train = load(train_root, train_split) if head_path is None else None
    given_head, head_meta = load_head(head_path) if head_path is not None else (None, {})
    n_classes = given_head.n_classes if given_head is not None else n_classes_of(*(d for d in (train, val) if d))
    prepare = _Prepare(max_side)
    bb = None
    if any(n not in NO_BACKBONE for n in names):
        from hrdv2.backbones import load_backbone

        bb = load_backbone(backbone, weights=weights, device=device)
    cache = cache_dir if cache_dir is not None else out_dir / "cache"
    click.echo(f"backbone: {bb.describe() if bb is not None else 'none (classical features)'}; val: {val.name} "
               f"({len(val)} images), {n_classes} classes" + (f"; train: {train.name} ({len(train)} images)" if train else
                                                              f"; head: {head_path}"), err=True)
    rows, results = [["upsampler", "mIoU", "accuracy", "images"]], []
    for name in names:
        dense = DenseFeatures(name, bb, cache_dir=cache_dir, **kwargs[name])  # full maps cached only with --cache-dir
        if given_head is None:
            x, y = _training_pool(train, dense, pixels_per_image, seed, prepare, cache)
            head = train_head(x, y, n_classes, config)
            head_file = save_head(head, out_dir / f"head_{name}.pth", {
                "upsampler": name, "features": dense.describe(), "n_classes": n_classes, "train": str(train_root)})
        else:
            head, head_file = given_head, head_path
        scores, kept = evaluate(head, val, dense, prepare, keep=4)
        pic = write_image(out_dir / f"predictions_{name}.png", prediction_picture(kept))
        rows.append([name, f"{scores.miou:.4f}", f"{scores.accuracy:.4f}", str(scores.n_images)])
        results.append({"upsampler": name, "features": dense.describe(), "untrained": dense.untrained,
                        "miou": scores.miou, "accuracy": scores.accuracy, "iou_per_class": scores.iou,
                        "head": str(head_file), "picture": str(pic)})
    setup = {"backbone": bb.describe() if bb is not None else None, "val": val.name, "n_classes": n_classes,
             "train": train.name if train else None, "head": str(head_path) if head_path else None,
             "recipe": {"lr": lr, "steps": steps, "batch_pixels": batch_pixels, "pixels_per_image": pixels_per_image,
                        "optimizer": "Adam", "loss": "cross-entropy", "max_side": max_side, "seed": seed}}
    write_text_atomic(out_dir / "linear_probe.json", json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    write_text_atomic(out_dir / "linear_probe.csv", "\n".join(",".join(r) for r in rows) + "\n")
    title = f"linear probe, {setup['backbone'] or 'classical features'}, {val.name}"
    _print_table(rows, title)
    if bb is not None and not bb.pretrained:
        click.secho(f"note: {bb.describe()}: these scores say nothing about the quality of the features or upsamplers.",
                    fg="yellow", err=True)
    click.echo(f"wrote linear_probe.json, linear_probe.csv, heads and predictions_*.png to {out_dir}")
