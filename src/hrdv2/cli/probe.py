"""``hrdv2 probe``: rank feature upsamplers by how few clicks a segmenter needs (the
training-free one, or a click head trained with ``hrdv2 probe train``)."""

from __future__ import annotations

from pathlib import Path

import click

from hrdv2.cli.lazy import LazyGroup
from hrdv2.datasets.interactive import DATASETS

# `hrdv2 probe SUB`: sub-commands, each in its own module (imported only when used).
# `hrdv2 probe [OPTIONS]` without a sub-command runs the evaluation below.
PROBE_COMMANDS: dict[str, str] = {
    "train": "hrdv2.cli.probe_train:train",
    "train-upsampler": "hrdv2.cli.probe_train:train_upsampler",
    "plot": "hrdv2.cli.probe_train:plot",
    "linear": "hrdv2.cli.probe_linear:linear",
}


def _print_table(rows: list[list[str]], title: str) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in rows[0]:
        table.add_column(h, justify="left" if h in ("dataset", "upsampler") else "right")
    for r in rows[1:]:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # files/pipes: no truncation


@click.group("probe", cls=LazyGroup, lazy=PROBE_COMMANDS, invoke_without_command=True)
@click.option("--dataset", "kind", type=click.Choice(DATASETS), default="folder", show_default=True,
              help="Dataset layout (RITM/f-BRS releases, or NAME.png + NAME_gt.png).")
@click.option("--root", type=click.Path(path_type=Path), required=False, help="Dataset folder.")
@click.option("--upsamplers", default="nearest,bilinear,hrdv2", show_default=True,
              help="Comma-separated upsampler names (see --list-upsamplers).")
@click.option("--backbone", default="dinov2_vits14", show_default=True)
@click.option("--weights", default=None, help="Checkpoint path, or 'random' (UNTRAINED); default: official weights.")
@click.option("--clicks", "max_clicks", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("probe_results"), show_default=True)
@click.option("--split", type=click.Choice(["train", "val"]), default="val", show_default=True, help="SBD split.")
@click.option("--max-side", type=click.IntRange(16, None), default=None,
              help="Downsize images so the longer side is at most this (masks: nearest).")
@click.option("--limit", type=click.IntRange(1, None), default=None, help="Use only the first N samples.")
@click.option("--stop-iou", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Stop a session once IoU reaches this (default: always all clicks).")
@click.option("--strategy", type=click.Choice(["largest_region", "farthest"]), default="largest_region",
              show_default=True, help="Error region to click: largest by area, or RITM's farthest pixel.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--head", "heads", multiple=True, default=("none",), show_default=True,
              help="'none' = training-free segmenter; else a checkpoint from `hrdv2 probe train` (used for every "
                   "upsampler), or several --head, matched to upsamplers by the upsampler they were trained on.")
@click.option("--upsampler-weights", "upsampler_weights", multiple=True,
              help="NAME=PATH checkpoint of a learned upsampler (lift, featup-jbu), e.g. lift=lift.pth; "
                   "NAME=random: UNTRAINED (tests only). Repeatable or comma-separated.")
@click.option("--save-features", is_flag=True, help="Write PCA pictures of the features before/after each upsampler "
                                                     "(OUT/features/) for the --vis-clicks samples.")
@click.option("--vis-clicks", type=click.IntRange(0, None), default=0, show_default=True,
              help="Write per-click prediction pictures (OUT/clicks/) for the first N samples.")
@click.option("--vis-samples", default="", help="Comma-separated sample names that also get the pictures.")
@click.option("--list-upsamplers", is_flag=True, help="List the registered upsamplers and exit.")
@click.pass_context
def probe(ctx, kind, root, upsamplers, backbone, weights, max_clicks, out_dir, split, max_side, limit, stop_iou,
          strategy, seed, device, heads, upsampler_weights, save_features, vis_clicks, vis_samples,
          list_upsamplers) -> None:
    """Interactive-segmentation probe of feature upsamplers (NoC@80/85/90, mIoU@k, failures).

    Simulated clicks (RITM/iSegProbe protocol) drive one click segmenter, the same for every
    upsampler: the training-free one (--head none) or a trained click head (--head FILE).
    Writes summary.csv, per_sample.csv, miou_vs_clicks.png and probe.json into --out.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hrdv2.errors import ConfigError
    from hrdv2.probe.upsamplers import check_available, create_upsampler
    from hrdv2.probe.upsamplers import list_upsamplers as registry

    if list_upsamplers:
        for name, desc in registry().items():
            reason = check_available(create_upsampler(name))
            click.echo(f"{name:26s} {desc}" + (f"  [unavailable: {reason.split(';')[0]}]" if reason else ""))
        return
    if root is None:
        raise ConfigError("--root is required: the dataset folder (e.g. ../shared/data/grabcut).")

    from hrdv2.backbones import load_backbone
    from hrdv2.cli.probe_train import load_heads, make_upsamplers
    from hrdv2.datasets.interactive import load_interactive
    from hrdv2.probe.diagnostics import Diagnostics
    from hrdv2.probe.runner import ProbeConfig, format_table, run_probe

    names = [n.strip() for n in upsamplers.split(",") if n.strip()]
    ups = make_upsamplers(names, upsampler_weights)  # unknown names fail here, before any work
    head_map = load_heads(heads, names, device)
    dataset = load_interactive(kind, root, split)
    bb = load_backbone(backbone, weights=weights, device=device)
    config = ProbeConfig(max_clicks=max_clicks, stop_iou=stop_iou, seed=seed, max_side=max_side, limit=limit,
                         strategy=strategy)
    chosen = tuple(n.strip() for n in vis_samples.split(",") if n.strip())
    diagnostics = None
    if save_features or vis_clicks or chosen:
        diagnostics = Diagnostics(save_features=save_features, vis_clicks=bool(vis_clicks or chosen),
                                  first_n=vis_clicks if (vis_clicks or chosen) else 1, names=chosen)
    evaluator = "training-free segmenter" if not head_map else f"trained head(s): {', '.join(heads)}"
    click.echo(f"backbone: {bb.describe()}; dataset: {dataset.name} ({len(dataset)} objects); {evaluator}", err=True)
    result = run_probe(dataset, ups, bb, config, out_dir, progress=True, heads=head_map, diagnostics=diagnostics)
    for reason in result.unavailable.values():
        click.secho(f"unavailable: {reason}", fg="yellow", err=True)
    if result.skipped:
        click.secho(f"skipped (object vanished at --max-side): {', '.join(result.skipped)}", fg="yellow", err=True)
    if not result.summary:
        raise ConfigError("no upsampler produced results (all unavailable?); see the messages above.")
    ks = [k for k in (1, 3, 5, 10, 20) if k <= max_clicks]
    _print_table(format_table(result.summary, ks), f"click probe, {bb.describe()}")
    click.echo(f"wrote {', '.join(str(p) for p in result.files.values())}")
