"""`hrdv2 train`: image + scribble pairs (files or multi-page stacks, or 3-D volumes) -> a
.skops model that carries its feature config and class names."""

from __future__ import annotations

from pathlib import Path

import sys

import click
import numpy as np

from hrdv2.cli.boundary import check_outputs
from hrdv2.cli.config_file import config_file_option
from hrdv2.cli.progress import ProgressBar
from hrdv2.errors import ConfigError, HRDv2Error, ShapeError


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
@click.option("--normalise", type=click.Choice(["auto", "robust", "percentile", "none", "lab"]), default="auto",
              show_default=True,
              help="Intensity rescaling before featurising (auto: robust percentile stretch for grey, none for "
                   "colour, CIE Lab for colour with --features auto; percentile: the plain 0.5-99.5 percentile "
                   "stretch; lab: colour as CIE Lab, classical features only).")
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
@click.option("--planes", type=click.Choice(["xy", "xyz"]), default="xy", show_default=True,
              help="Volume mode, deep features: xy slices only, or the mean over xy, xz and yz slices (3x the ViT work; "
                   "large volumes use scratch disk under TMPDIR).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model file to write (.skops).")
def train(images, scribbles, kind, classifier, sigmas, filters, normalise, backbone, weights, stride, flips,
          pca_components, crf, max_samples, class_names, cache_dir, device, volume, spacing, out, shift_text="1,2",
          pattern="moore", rotations=False, dtype="float32", batch_size=4, geometry="hrdv2", flip_set="hrdv2",
          preset=None, dry_run=False, planes="xy") -> None:
    """Train a segmenter on image + scribble pairs (multi-page TIFF stacks with label stacks too:
    pages without labels are skipped)."""
    from hrdv2.features.sets import FeatureConfig, check_lab_channels, estimate_feature_bytes
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
                filters=filters, volume=volume, spacing=spacing, planes=planes)
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
                           batch_size=batch_size, geometry=geometry, flip_set=flip_set, planes=planes)
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
    if volume and kind == "auto":
        raise ConfigError("--volume takes --features classical (3-D filters) or deep (--planes), not auto.")
    if volume:
        _train_volume(seg, images, scribbles, out)
        return
    if normalise == "lab":
        from hrdv2.blocks.readers import open_array

        for path in images:
            with open_array(path) as lazy:  # the header only: the pixels are read once, below
                check_lab_channels(lazy.channels if lazy.has_channels else 1, str(path))
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
        with ProgressBar(f"features {name}") as cb:
            feats.append(seg.featurise(im, progress=cb))
    seg.fit(imgs, scrs, feats or None, names=pair_names)  # auto featurises inside fit, once per candidate set
    seg.save(out)
    if getattr(seg, "auto_choice_", None) is not None:
        setup = seg.auto_choice_.summary()
    click.echo(f"trained {seg!r} on {seg.n_train_pixels_} pixels of {len(imgs)} image(s)/page(s); "
               f"classes {dict(zip(seg.classes_.tolist(), seg.class_names))}; wrote {out}"
               + (f" | {setup}" if setup else ""))


def tqdm(iterable, **kwargs):
    """A tqdm bar over ``iterable`` on a terminal; the bare iterable elsewhere, where tqdm's
    ``disable=None`` would hide the bar anyway (not importing tqdm saves start-up)."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm as bar

    return bar(iterable, **kwargs)


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
        bf.close()
    if not imgs:
        raise HRDv2Error(f"no labelled pixels in {', '.join(map(str, scribbles))}: paint at least one stroke per class.")
    seg.fit(imgs, scrs, feats, names=names)
    seg.save(out)
    what = "3-D filters" if seg.features.kind == "classical" else f"deep features, planes {seg.features.planes}"
    click.echo(f"trained {seg!r} ({what}, spacing {','.join(f'{v:g}' for v in seg.features.spacing)}) on "
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
