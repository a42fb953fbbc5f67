"""``hrdv2 tune``: hyper-parameter search (Optuna) for ``train`` or ``unsupervised`` on a labelled
folder; writes trials.csv, pareto.png and best.json (a ``--config`` file of that command)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--workflow", type=click.Choice(["train", "unsupervised"]), required=True,
              help="train: feature preset, filters, sigmas, classifier (scored: mIoU of predictions vs NAME_gt). "
                   "unsupervised: transforms, stride, PCA dimension, k, merge factor (scored: foreground IoU).")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Labelled folder: NAME.png + NAME_gt.png (+ NAME_scribble.png for train).")
@click.option("--trials", type=click.IntRange(1), default=20, show_default=True, help="Number of trials.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting new trials after this many seconds.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Output folder for trials.csv, pareto.png, best.json.")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None,
              help="Backbone weights file, or 'random' (UNTRAINED, mechanics only). train: deep/hybrid features "
                   "are searched only when given. unsupervised: default pretrained (downloaded once).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images of --data.")
@click.option("--pooled/--per-image", default=False, show_default=True,
              help="train: one model on all scribbles (class ids must mean the same in every image) instead of "
                   "one model per image.")
@click.option("--max-samples", type=click.IntRange(10), default=20_000, show_default=True,
              help="train: cap on training pixels per model.")
@click.option("--max-side", type=click.IntRange(0), default=224, show_default=True,
              help="unsupervised: featurise at most this many px per side (0: full size).")
@click.option("--strides", default=None, help="unsupervised: strides to try, e.g. 14,7,4 (default: P and P/2).")
@click.option("--transforms", default=None,
              help="unsupervised: transform sets to try, from none, shift1, shift12, shift12-flips (1, 9, 17 and 68 ViT "
                   "passes per image; default: all).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler and model seed.")
def tune(workflow, data, trials, timeout, out_dir, backbone, weights, device, limit, pooled, max_samples, max_side,
         strides, transforms, seed) -> None:
    """Search the options of `hrdv2 train` or `hrdv2 unsupervised` on a labelled folder.

    Every trial runs the workflow on the folder and records its quality, seconds and peak
    memory (RSS above the trial's start); the best options (highest quality, then fastest)
    become OUT/best.json, which `hrdv2 WORKFLOW --config OUT/best.json ...` reads."""
    from tqdm import tqdm

    from hrdv2.cli.boundary import check_outputs
    from hrdv2.errors import HRDv2Error
    from hrdv2.io import write_text_atomic
    from hrdv2.tune import TrainTask, UnsupervisedTask, best_config, best_trial, plot_pareto, run_study, trials_csv

    check_outputs(folders=(out_dir,))
    if workflow == "train":
        task = TrainTask(data, weights=weights, backbone=backbone, device=device, max_samples=max_samples,
                         pooled=pooled, limit=limit, seed=seed)
        backbone_used = task.describe_backbone or "none (classical features)"
    else:
        task = UnsupervisedTask(data, weights=weights, backbone=backbone, device=device, max_side=max_side,
                                strides=strides, transforms=transforms, limit=limit, seed=seed)
        backbone_used = task.describe_backbone
    click.echo(f"tune {workflow} on {data}: {task.describe()}")
    if "UNTRAINED" in backbone_used:
        click.secho(f"note: {backbone_used}: qualities say nothing about real features, only that the search runs.",
                    fg="yellow", err=True)

    bar = tqdm(total=trials, desc="trials", unit="trial", disable=None)

    def report(rec) -> None:
        bar.update(1)
        with tqdm.external_write_mode():
            if rec.state == "complete":
                note = f" ({rec.error})" if rec.error else ""
                click.echo(f"trial {rec.number}: quality {rec.quality:.4f} | {rec.seconds:.2f} s | "
                           f"peak +{rec.peak_mb:.0f} MB RSS | {rec.params}{note}")
            else:
                click.echo(f"trial {rec.number}: failed ({rec.error}) | {rec.params}")

    with bar:
        records = run_study(task, trials, timeout, seed, on_trial=report)
    write_text_atomic(out_dir / "trials.csv", trials_csv(records))
    title = f"hrdv2 tune {workflow}: {data.name} | {backbone_used}"
    plot_pareto(records, out_dir / "pareto.png", title,
                "quality (mIoU vs NAME_gt)" if workflow == "train" else "quality (foreground IoU vs NAME_gt)")
    best = best_trial(records)
    if best is None:
        raise HRDv2Error(f"all {len(records)} trial(s) failed (see {out_dir / 'trials.csv'}); fix the data or widen "
                         "--timeout / --trials.")
    about = {"data": str(data), "backbone": backbone_used, "trials": len(records),
             "memory": "peak RSS above the trial's start, sampled every 5 ms"}
    write_text_atomic(out_dir / "best.json", best_config(workflow, best, about))
    click.echo(f"best: trial {best.number}, quality {best.quality:.4f} in {best.seconds:.2f} s | backbone "
               f"{backbone_used} | wrote {out_dir}/trials.csv, pareto.png, best.json "
               f"(use: hrdv2 {workflow} --config {out_dir / 'best.json'} ...)")
