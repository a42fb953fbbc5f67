"""``hrdv2 unsupervised`` (masks and boxes for images, no labels) and
``hrdv2 bench unsupervised`` (CorLoc / mIoU on the standard benchmarks beside the paper's).

``--preset paper`` is the paper's setting (its experiments' ``vanilla_dv2``: DINOv2-S/14 with
registers, stride 4, shifts 1,2 Moore, flips, "o" attention, CRF; 68 ViT passes per image,
minutes to hours per image on a CPU). ``--preset fast`` is one stride-14 pass on an image
downscaled to <= 224 px. The default, ``auto``, is ``paper`` on a GPU and ``fast`` on a CPU
(hrdv2.cli.presets). Options given explicitly (or in --config) override the preset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from hrdv2.cli.config_file import config_file_option
from hrdv2.errors import HRDv2Error

# The HR-Dv2 paper's figures (Table 4 / 5): CorLoc single-object (superbox) and multi-object
# (all boxes), and foreground mIoU.
PAPER = {
    "voc07": {"corloc_single": 0.554, "corloc_multi": 0.718},
    "voc12": {"corloc_single": 0.572, "corloc_multi": 0.725},
    "cub": {"miou": 0.785},
    "duts": {"miou": 0.654},
}
STAGES = ("features", "pca", "kmeans", "foreground", "merging", "crf", "boxes")


def _pipeline_options(f):
    opts = [
        click.option("--preset", type=click.Choice(["auto", "paper", "published", "fast"]), default="auto",
                     show_default=True,
                     help="paper: the paper's experiments (stride 4, shifts 1,2 + flips, o attention, CRF; slow on a "
                          "CPU); published: paper in the published code's geometry; fast: stride 14, no shifts or "
                          "flips, <= 224 px; auto: paper on a GPU, fast on a CPU."),
        click.option("--geometry", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
                     help="Patch geometry: hrdv2 (exact) or the published code's (docs/geometry.md)."),
        click.option("--flip-set", type=click.Choice(["hrdv2", "published"]), default="hrdv2", show_default=True,
                     help="With flips: hrdv2's {id, h, v, hv} or the published [id, h, id, v]."),
        click.option("--dry-run", is_flag=True, help="Print the settings and the time estimate, then stop."),
        click.option("--backbone", default="dinov2_vits14", show_default=True, help="Backbone name (see `hrdv2 backbones`)."),
        click.option("--weights", default=None,
                     help="Local checkpoint, or 'random' (untrained: results are meaningless). Default: pretrained."),
        click.option("--device", default="cpu", show_default=True),
        click.option("--batch-size", type=int, default=4, show_default=True, help="Transformed copies per ViT call."),
        click.option("--stride", type=int, default=None, help="Override the preset's stride."),
        click.option("--shifts", "shift_text", default=None, help="Override the preset's shifts, e.g. '1,2' or '' (none)."),
        click.option("--flips/--no-flips", default=None, help="Override the preset's flips."),
        click.option("--max-side", type=int, default=None,
                     help="Downscale so the longer side is at most this many px for feature extraction (0: never). "
                          "Outputs stay at the image's size."),
        click.option("--k", "k", type=click.IntRange(1), default=80, show_default=True, help="k-means clusters."),
        click.option("--pca", "pca", type=click.IntRange(0), default=128, show_default=True,
                     help="PCA components before k-means (0: no PCA)."),
        click.option("--merge-factor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="Merge clusters closer than factor x semantic distance (paper: 0.9-1.2)."),
        click.option("--head", type=int, default=None, help="Use one attention head instead of the mean over heads."),
        click.option("--attention", "attention_kind", type=click.Choice(["softmax", "o"]), default="softmax",
                     show_default=True, help="CLS signal for foreground: softmax attention, or o (the published "
                     "code's CLS attention output . each value)."),
        click.option("--facet", type=click.Choice(["token", "key", "query", "value"]), default="token",
                     show_default=True, help="Features to cluster: block tokens, or the block's keys/queries/values."),
        click.option("--layer", type=int, default=None, help="Block for --facet (0-based, negative from the end; "
                     "default: the last)."),
        click.option("--crf/--no-crf", default=False, show_default=True, help="Dense-CRF refinement (image-guided)."),
        click.option("--min-area", type=click.IntRange(0), default=200, show_default=True,
                     help="Components smaller than this (px) get no box."),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def resolve_setup(kw: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
    """(featurizer, extraction settings, UnsupervisedSettings) from the shared CLI options."""
    from hrdv2.cli.features import parse_int_list
    from hrdv2.cli.presets import apply_preset
    from hrdv2.presets import extraction_settings
    from hrdv2.unsupervised import UnsupervisedSettings, build_featurizer

    apply_preset(click.get_current_context(silent=True), "unsupervised", kw)
    ext = extraction_settings(kw["preset"])  # the preset's values; options given explicitly override them
    if kw["stride"] is not None:
        ext["stride"] = kw["stride"]
    if kw["shift_text"] is not None:
        ext["shifts"] = parse_int_list(kw["shift_text"], "shifts")
    if kw["flips"] is not None:
        ext["flips"] = kw["flips"]
    if kw["max_side"] is not None:
        ext["max_side"] = kw["max_side"] or None
    settings = UnsupervisedSettings(
        k=kw["k"], pca_components=kw["pca"] or None, merge_factor=kw["merge_factor"], head=kw["head"],
        crf=kw["crf"], min_area=kw["min_area"], seed=kw["seed"],
    )
    settings.check()
    fz = build_featurizer(kw["backbone"], kw["weights"], ext["stride"], tuple(ext["shifts"]), ext["flips"],
                          kw["batch_size"], kw["device"], facet=kw["facet"], layer=kw["layer"],
                          attention=kw["attention_kind"], geometry=kw["geometry"], flip_set=kw["flip_set"])
    return fz, ext, settings


def describe_setup(fz: Any, ext: dict[str, Any], preset: str, crf: bool = False) -> str:
    bb = fz.backbone
    shifts = ",".join(str(s) for s in ext["shifts"]) or "none"
    size = f"max side {ext['max_side']} px" if ext["max_side"] else "full size"
    return (f"{bb.describe()} | preset {preset}: stride {fz.stride}, shifts {shifts}, "
            f"flips {'on' if ext['flips'] else 'off'} ({len(fz.transforms)} transforms), {size}"
            + _signals_text(fz) + (", published geometry" if getattr(fz, "geometry", "hrdv2") != "hrdv2" else "")
            + f", CRF {'on' if crf else 'off'}")


def _signals_text(fz: Any) -> str:
    """', key features of block 3, o attention' when not the defaults (last block's tokens, softmax)."""
    facet, layer, kind = getattr(fz, "facet", "token"), getattr(fz, "layer", None), getattr(fz, "attention_kind", None)
    parts = []
    if facet != "token" or (layer is not None and layer != fz.backbone.depth - 1):
        parts.append(f"{facet} features of block {layer}")
    if kind not in (None, "softmax"):
        parts.append(f"{kind} attention")
    return "".join(f", {p}" for p in parts)


def _estimate(fz: Any, ext: dict[str, Any], name: str, image: np.ndarray, estimator: Any, force: bool) -> None:
    """Print the estimated featurising time of ``image`` at its processing size when it is over the
    threshold (always with ``force``, i.e. --dry-run), with how to make it faster."""
    from hrdv2.cli.presets import estimate_message, faster_hints

    h, w = image.shape[:2]
    side = ext["max_side"]
    if side and max(h, w) > side:
        h, w = max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w)))
    msg = estimate_message(estimator.seconds(h, w), f"{name} ({w}x{h} px processed)", fz,
                           faster_hints("unsupervised", fz), threshold=0.0 if force else None)
    if msg:
        click.secho(msg, fg="yellow", err=not force)


def _untrained_note(fz: Any) -> None:
    if not fz.backbone.pretrained:
        click.secho(f"note: {fz.backbone.describe()}: masks and boxes are UNTRAINED, they show the pipeline runs, "
                    "not its quality.", fg="yellow", err=True)


def _run(image: np.ndarray, fz: Any, ext: dict[str, Any], settings: Any):
    from hrdv2.unsupervised import segment_unsupervised

    return segment_unsupervised(image, settings=settings, featurizer=fz, max_side=ext["max_side"])


def write_outputs(out: Path, name: str, image: np.ndarray, res: Any, header: dict[str, Any]) -> list[Path]:
    """NAME_labels.png, NAME_foreground.png, NAME_overlay.png and NAME_boxes.json, each atomic."""
    from hrdv2.io import write_image, write_text_atomic
    from hrdv2.unsupervised.overlay import render_overlay

    dtype = np.uint8 if res.classes.max() <= 255 else np.uint16
    paths = [
        write_image(out / f"{name}_labels.png", res.classes.astype(dtype)),
        write_image(out / f"{name}_foreground.png", (res.foreground * 255).astype(np.uint8)),
        write_image(out / f"{name}_overlay.png", render_overlay(image, res.classes, res.foreground_classes, res.boxes)),
    ]
    doc = {"image": name, "width": int(image.shape[1]), "height": int(image.shape[0]), **header, **res.summary()}
    paths.append(write_text_atomic(out / f"{name}_boxes.json", json.dumps(doc, indent=2) + "\n"))
    return paths


@click.command()
@config_file_option("unsupervised")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="hrdv2-unsupervised", show_default=True)
@_pipeline_options
def unsupervised(images: tuple[str, ...], out_dir: str, **kw: Any) -> None:
    """Foreground masks, class-agnostic label maps and object boxes for IMAGES (files or folders), no labels.

    In folders, NAME_gt.* and NAME_scribble.* label maps are skipped.

    Writes NAME_labels.png (class ids 1..m), NAME_foreground.png (255 = foreground),
    NAME_overlay.png (boxes: class colours; gold = single-object superbox) and NAME_boxes.json.
    """
    from tqdm import tqdm

    from hrdv2.cli.boundary import FileRun, check_outputs
    from hrdv2.cli.presets import TimeEstimate
    from hrdv2.datasets.folder import LABEL_SUFFIXES
    from hrdv2.errors import ImageReadError
    from hrdv2.io import list_images, read_stack

    paths: list[Path] = []
    for item in map(Path, images):  # folders: their images, minus NAME_gt / NAME_scribble label maps
        paths += [p for p in list_images(item) if not p.stem.endswith(LABEL_SUFFIXES)] if item.is_dir() else [item]
    if not paths:
        raise ImageReadError(f"no images found in {', '.join(images)}.")
    out = Path(out_dir)
    check_outputs(folders=(out,))  # before the (slow) model load
    fz, ext, settings = resolve_setup(kw)
    setup = describe_setup(fz, ext, kw["preset"], kw["crf"])
    click.echo(setup)
    _untrained_note(fz)
    estimator = TimeEstimate(fz)
    header = {"setup": setup, "untrained": not fz.backbone.pretrained}
    run = FileRun(len(paths))
    for p in tqdm(paths, desc="unsupervised", unit="img", disable=len(paths) < 2):
        with run.step(p):
            pages = read_stack(p)
            for i, image in enumerate(pages):  # every page of a stack: NAME_p000, NAME_p001, ...
                name = p.stem if len(pages) == 1 else f"{p.stem}_p{i:03d}"
                _estimate(fz, ext, name, image, estimator, kw["dry_run"])
                if kw["dry_run"]:
                    continue
                t0 = time.perf_counter()
                res = _run(image, fz, ext, settings)
                secs = time.perf_counter() - t0
                write_outputs(out, name, image, res, header)
                msg = f" ({res.message})" if res.message else ""
                click.echo(f"{name}: {image.shape[1]}x{image.shape[0]} | {res.classes.max()} classes, "
                           f"{len(res.foreground_classes)} foreground, {res.foreground.mean():.1%} of pixels | "
                           f"{len(res.boxes)} boxes{msg} | {secs:.2f} s -> {out}")
    run.finish(len(paths))


def _fmt(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"


@click.command("unsupervised")
@click.option("--dataset", type=click.Choice(["voc07", "voc12", "cub", "duts", "ecssd", "folder"]), required=True)
@click.option("--root", type=click.Path(), required=True, help="Dataset folder (see docs/unsupervised.md for layouts).")
@click.option("--split", default=None, help="Override the split (VOC: trainval; CUB: test).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the figures here.")
@_pipeline_options
def bench_unsupervised(dataset: str, root: str, split: str | None, limit: int | None, json_out: str | None,
                       **kw: Any) -> None:
    """CorLoc (single superbox / multi-object), foreground mIoU and seconds per image on a benchmark,
    with the HR-Dv2 paper's figures beside them."""
    from tqdm import tqdm

    from hrdv2.datasets.localisation import open_localisation_dataset
    from hrdv2.io import write_text_atomic
    from hrdv2.metrics.localisation import boxes_per_image, corloc, foreground_iou, mean_iou

    ds = open_localisation_dataset(dataset, root, split)
    samples = list(ds)[:limit] if limit else list(ds)
    fz, ext, settings = resolve_setup(kw)
    setup = describe_setup(fz, ext, kw["preset"], kw["crf"])
    click.echo(f"{dataset} ({root}): {len(samples)} of {len(ds)} images | {setup}")
    _untrained_note(fz)
    if kw["dry_run"]:
        return

    singles, multis, gts, ious, secs, failures = [], [], [], [], [], []
    stage_sums: dict[str, float] = {}
    for s in tqdm(samples, desc=f"bench {dataset}", unit="img"):
        try:
            image = s.image()
            t0 = time.perf_counter()
            res = _run(image, fz, ext, settings)
            secs.append(time.perf_counter() - t0)
            for k, v in res.timings.items():
                stage_sums[k] = stage_sums.get(k, 0.0) + v
            gt_boxes = s.gt_boxes(image.shape[:2])
            if gt_boxes is not None and len(gt_boxes):
                sb = res.boxes.superbox
                singles.append(np.zeros((0, 4)) if sb is None else sb[None])
                multis.append(res.boxes.boxes)
                gts.append(gt_boxes)
            m = s.mask(image.shape[:2])
            if m is not None:
                ious.append(foreground_iou(res.foreground, m[0], m[1]))
        except HRDv2Error as exc:  # one bad file must not sink a long run
            failures.append(f"{s.name}: {exc}")
            click.secho(f"skipped {s.name}: {exc}", fg="yellow", err=True)

    n = len(secs)
    figures = {
        "corloc_single": corloc(singles, gts) if gts else None,
        "corloc_multi": corloc(multis, gts) if gts else None,
        "boxes_per_image": boxes_per_image(multis) if multis else None,
        "miou": mean_iou(ious) if ious else None,
        "seconds_per_image": float(np.mean(secs)) if secs else None,
    }
    paper = PAPER.get(dataset, {})
    untrained = not fz.backbone.pretrained
    tag = " [UNTRAINED backbone: pipeline check only]" if untrained else ""
    click.echo(f"\n{'metric':<22}{'hrdv2':>10}{'paper':>10}")
    for key in ("corloc_single", "corloc_multi", "boxes_per_image", "miou"):
        if figures[key] is not None or key in paper:
            click.echo(f"{key:<22}{_fmt(figures[key]):>10}{_fmt(paper.get(key)):>10}")
    click.echo(f"{'seconds_per_image':<22}{_fmt(figures['seconds_per_image']):>10}")
    if n:
        stages = " | ".join(f"{k} {stage_sums[k] / n:.3f}" for k in STAGES if k in stage_sums)
        click.echo(f"stage seconds per image: {stages}")
    click.echo(f"images: {n} evaluated, {len(failures)} skipped{tag}")
    if json_out:
        doc = {"dataset": dataset, "root": str(root), "n_images": n, "skipped": failures, "setup": setup,
               "untrained": untrained, "figures": figures, "paper": paper,
               "stage_seconds_per_image": {k: v / n for k, v in stage_sums.items()} if n else {}}
        write_text_atomic(json_out, json.dumps(doc, indent=2) + "\n")
