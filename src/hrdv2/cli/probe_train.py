"""``hrdv2 probe train`` (click head), ``hrdv2 probe train-upsampler lift`` and ``hrdv2 probe plot``,
plus the option parsing they share with ``hrdv2 probe`` (learned-upsampler weights, heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from hrdv2.datasets.interactive import DATASETS
from hrdv2.errors import ConfigError

HEAD_FILE = "head.pt"


def parse_upsampler_weights(specs: Sequence[str]) -> dict[str, str]:
    """["lift=a.pth,featup-jbu=random", ...] -> {"lift": "a.pth", "featup-jbu": "random"}."""
    out: dict[str, str] = {}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ConfigError(f"--upsampler-weights {item!r}: expected NAME=PATH (e.g. lift=lift_dinov2s.pth).")
            out[name.strip()] = path.strip()
    return out


def make_upsamplers(names: Sequence[str], weight_specs: Sequence[str]) -> list[Any]:
    """Upsampler objects by name, learned ones with their checkpoints."""
    from hrdv2.probe.upsamplers import create_upsampler

    weights = parse_upsampler_weights(weight_specs)
    stray = sorted(set(weights) - set(names))
    if stray:
        raise ConfigError(f"--upsampler-weights names {stray} that are not among the upsamplers {list(names)}.")
    return [create_upsampler(n, checkpoint=weights[n]) if n in weights else create_upsampler(n) for n in names]


def load_heads(heads: Sequence[str], names: Sequence[str], device: str) -> dict[str, Any] | None:
    """--head values -> None (training-free) or {upsampler or "*": ClickHead}."""
    from hrdv2.probe.head import load_head
    from hrdv2.probe.runner import ANY_UPSAMPLER

    paths = [h for h in heads if h.lower() != "none"]
    if not paths:
        return None
    if len(paths) != len(heads):
        raise ConfigError("--head none cannot be combined with head checkpoints; give one or the other.")
    if len(paths) == 1:
        return {ANY_UPSAMPLER: load_head(paths[0], device).head}
    out: dict[str, Any] = {}
    for p in paths:
        ck = load_head(p, device)
        up = str(ck.meta.get("upsampler", ""))
        if up in out:
            raise ConfigError(f"{p}: a second head for upsampler {up!r}; give one head per upsampler.")
        out[up] = ck.head
    missing = [n for n in names if n not in out]
    if missing:
        raise ConfigError(f"no --head trained on upsampler(s) {missing}; heads given for {sorted(out)}.")
    return out


@click.command("train")
@click.option("--dataset", "kind", type=click.Choice(DATASETS), default="folder", show_default=True)
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Dataset folder.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True, help="SBD split.")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None, help="Checkpoint path, or 'random' (UNTRAINED); default: official weights.")
@click.option("--upsampler", default="bilinear", show_default=True, help="The (frozen) upsampler the head is trained on.")
@click.option("--upsampler-weights", multiple=True, help="NAME=PATH for a learned upsampler (lift, featup-jbu).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Writes head.pt, train_log.csv.")
@click.option("--max-side", type=click.IntRange(16, None), default=224, show_default=True,
              help="Downsize images so the longer side is at most this.")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Use only the first N objects.")
@click.option("--holdout", type=click.IntRange(0, None), default=0, show_default=True,
              help="Keep the last N objects out of training; report the untrained and trained head's mean IoU "
                   "over 5 clicks on them (train.json).")
@click.option("--steps", type=click.IntRange(1, None), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, None), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(0, None, min_open=True), default=1e-3, show_default=True)
@click.option("--hidden", type=click.IntRange(1, None), default=32, show_default=True, help="Head width.")
@click.option("--radius", type=click.IntRange(0, None), default=5, show_default=True, help="Click disk radius (px).")
@click.option("--max-iter-clicks", type=click.IntRange(0, None), default=3, show_default=True,
              help="Up to this many clicks simulated on the head's own predictions per step.")
@click.option("--checkpoint-every", type=click.IntRange(1, None), default=100, show_default=True)
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Keep the frozen features on disk (OUT/feature_cache); --no-cache recomputes them every step.")
@click.option("--resume", is_flag=True, help="Continue from OUT/head.pt (same set-up) up to --steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def train(kind, root, split, backbone, weights, upsampler, upsampler_weights, out_dir, max_side, limit, holdout,
          steps, batch_size, lr, hidden, radius, max_iter_clicks, checkpoint_every, cache, resume, seed, device) -> None:
    """Train a click head on frozen (backbone + upsampler) features with simulated clicks.

    RITM-style iterative click simulation, normalised focal loss, AdamW; checkpoints
    OUT/head.pt (atomic, resumable). Evaluate with `hrdv2 probe --head OUT/head.pt`.
    """
    import csv
    import io
    import json

    from hrdv2.backbones import load_backbone
    from hrdv2.datasets.interactive import load_interactive
    from hrdv2.io import check_writable, write_text_atomic
    from hrdv2.probe.feature_cache import featurise_dataset, feature_set_key
    from hrdv2.probe.head import ClickHead, load_head
    from hrdv2.probe.training import TrainConfig, held_out_miou, train_click_head

    ckpt = out_dir / HEAD_FILE
    check_writable(ckpt, "file")
    if ckpt.exists() and not resume:
        raise ConfigError(f"{ckpt} exists; pass --resume to continue that run, or choose another --out.")
    if resume and not ckpt.exists():
        raise ConfigError(f"--resume: {ckpt} does not exist; start without --resume.")
    up = make_upsamplers([upsampler], upsampler_weights)[0]
    from hrdv2.probe.upsamplers import check_available

    reason = check_available(up)
    if reason:
        raise ConfigError(reason)
    dataset = load_interactive(kind, root, split)
    bb = load_backbone(backbone, weights=weights, device=device)
    meta = {**feature_set_key(bb, up, max_side), "backbone_describe": bb.describe(), "upsampler_name": up.name,
            "dataset": dataset.name, "root": str(root), "split": split, "loss": "normalised focal loss (gamma 2)"}
    meta["upsampler_key"] = meta.pop("upsampler")
    meta["upsampler"] = up.name  # the name --head matching uses
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, max_iter_clicks=max_iter_clicks, seed=seed,
                         device=device, checkpoint_every=checkpoint_every)
    state = None
    if resume:
        ck = load_head(ckpt, device)
        for key in ("backbone", "weights", "upsampler_key", "max_side"):
            if str(ck.meta.get(key)) != str(meta[key]):
                raise ConfigError(f"--resume: {ckpt} was trained with {key}={ck.meta.get(key)!r}, this run has "
                                  f"{meta[key]!r}; use the same set-up or another --out.")
        head, state = ck.head, ck.train_state
    click.echo(f"backbone: {bb.describe()}; upsampler: {up.name}; dataset: {dataset.name} ({len(dataset)} objects)",
               err=True)
    samples = featurise_dataset(dataset, up, bb, max_side, out_dir / "feature_cache" if cache else None, limit,
                                lazy=not cache)
    if holdout and holdout >= len(samples):
        raise ConfigError(f"--holdout {holdout} leaves no training objects ({len(samples)} in all); lower it.")
    held = samples[len(samples) - holdout:] if holdout else []
    samples = samples[: len(samples) - holdout]
    meta["holdout"] = [s.name for s in held]
    if not resume:
        import torch

        torch.manual_seed(seed)
        head = ClickHead(samples[0].features_tensor().shape[0], hidden=hidden, radius=radius) if samples else None
    report: dict = {"train_objects": len(samples), "held_out": meta["holdout"]}
    if held:
        report["held_out_miou_before"] = held_out_miou(head, held)
    result = train_click_head(head, samples, config, ckpt, meta, state)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["step", "nfl", "bce"])
    w.writerows([i + 1, f"{a:.6f}", f"{b:.6f}"] for i, (a, b) in enumerate(zip(result.losses, result.bce)))
    write_text_atomic(out_dir / "train_log.csv", buf.getvalue())
    n = max(1, min(50, len(result.losses) // 5))
    first, last = sum(result.bce[:n]) / n, sum(result.bce[-n:]) / n
    report.update(steps=result.steps_done, bce_first=first, bce_last=last, nfl_first=sum(result.losses[:n]) / n,
                  nfl_last=sum(result.losses[-n:]) / n, backbone=bb.describe(), upsampler=up.name)
    held_msg = ""
    if held:
        report["held_out_miou_after"] = held_out_miou(head, held)
        held_msg = (f"; held-out mIoU (5 clicks) {report['held_out_miou_before']:.3f} untrained -> "
                    f"{report['held_out_miou_after']:.3f} trained")
    write_text_atomic(out_dir / "train.json", json.dumps(report, indent=2))
    click.echo(f"trained {result.steps_done} steps on {len(samples)} objects; BCE {first:.4f} -> {last:.4f} "
               f"(NFL {report['nfl_first']:.4f} -> {report['nfl_last']:.4f}){held_msg}; wrote {ckpt}, "
               f"{out_dir / 'train_log.csv'}, {out_dir / 'train.json'}")


@click.command("train-upsampler")
@click.argument("name", type=click.Choice(["lift"]))
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Folder of unlabelled images.")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None, help="Checkpoint path, or 'random' (UNTRAINED); default: official weights.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Writes lift.pth.")
@click.option("--steps", type=click.IntRange(1, None), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, None), default=8, show_default=True)
@click.option("--image-size", type=click.IntRange(28, None), default=224, show_default=True,
              help="Square crop size (multiple of the patch size); the target is the backbone at twice this.")
@click.option("--lr", type=click.FloatRange(0, None, min_open=True), default=1e-3, show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(1, None), default=100, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/lift.pth + OUT/lift_train_state.pt.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def train_upsampler(name, root, backbone, weights, out_dir, steps, batch_size, image_size, lr, checkpoint_every,
                    resume, seed, device) -> None:
    """Train a learned upsampler (LiFT) self-supervised on a folder of unlabelled images."""
    from hrdv2.backbones import load_backbone
    from hrdv2.io import check_writable, list_images
    from hrdv2.probe.lift_train import STATE_FILE, WEIGHTS_FILE, LiftTrainConfig, train_lift

    check_writable(out_dir / WEIGHTS_FILE, "file")
    if (out_dir / WEIGHTS_FILE).exists() and not resume:
        raise ConfigError(f"{out_dir / WEIGHTS_FILE} exists; pass --resume to continue, or choose another --out.")
    if resume and not (out_dir / STATE_FILE).exists():
        raise ConfigError(f"--resume: {out_dir / STATE_FILE} does not exist; start without --resume.")
    images = list_images(root)
    bb = load_backbone(backbone, weights=weights, device=device)
    click.echo(f"backbone: {bb.describe()}; {len(images)} images in {root}", err=True)
    cfg = LiftTrainConfig(steps=steps, batch_size=batch_size, lr=lr, image_size=image_size, seed=seed,
                          checkpoint_every=checkpoint_every)
    res = train_lift(bb, images, out_dir, cfg, resume=resume)
    n = max(1, min(50, len(res.losses) // 5))
    click.echo(f"trained {res.steps_done} steps; loss (1 - cos) {sum(res.losses[:n]) / n:.4f} -> "
               f"{sum(res.losses[-n:]) / n:.4f}; wrote {res.weights} (use --upsampler-weights lift={res.weights})")


@click.command("plot")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=Path("miou_vs_clicks_runs.png"),
              show_default=True)
@click.option("--labels", default="", help="Comma-separated legend labels, one per run (default: folder names).")
@click.option("--title", default="mIoU vs clicks", show_default=True)
def plot(run_dirs, out_file, labels, title) -> None:
    """Overlay the mIoU-vs-clicks curves of several `hrdv2 probe` runs in one PNG."""
    from hrdv2.probe.compare import plot_runs

    names = [s.strip() for s in labels.split(",")] if labels else None
    click.echo(f"wrote {plot_runs(list(run_dirs), out_file, names, title)}")
