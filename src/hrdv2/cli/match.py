"""``hrdv2 match``: keypoint matching and small-object retrieval between two images.

For each query pixel of SOURCE, the most similar TARGET pixel (cosine similarity of dense
features from ``--upsampler``); writes the matches drawn side by side, a similarity heat map
per query and a CSV, and with ``--pairs`` the PCK at ``--threshold`` px.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click
import numpy as np

from hrdv2.cli.config_file import config_file_option
from hrdv2.errors import ConfigError


def _query_points(points: str | None, points_csv: Path | None, pairs: Path | None):
    """(queries, truth or None) from exactly one of --points / --points-csv / --pairs."""
    from hrdv2.matching import parse_points, read_pairs_csv, read_points_csv

    given = [n for n, v in (("--points", points), ("--points-csv", points_csv), ("--pairs", pairs)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --points \"x,y;x,y\", --points-csv FILE or --pairs FILE "
                          f"(got {', '.join(given) or 'none'}).")
    if pairs is not None:
        return read_pairs_csv(pairs)
    return (parse_points(points) if points is not None else read_points_csv(points_csv)), None


def _csv_text(result, truth: np.ndarray | None, threshold: float) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["query", "x_source", "y_source", "x_match", "y_match", "similarity"]
    w.writerow(head + (["x_truth", "y_truth", "error_px", "correct"] if truth is not None else []))
    for i, ((qx, qy), (mx, my), s) in enumerate(zip(result.queries, result.matches, result.scores)):
        row = [i, qx, qy, mx, my, f"{s:.4f}"]
        if truth is not None:
            err = float(np.hypot(mx - truth[i][0], my - truth[i][1]))
            row += [f"{truth[i][0]:g}", f"{truth[i][1]:g}", f"{err:.2f}", int(err <= threshold)]
        w.writerow(row)
    return buf.getvalue()


@click.command()
@config_file_option("match")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--points", default=None, help='Query pixels of SOURCE as "x,y;x,y" (x = column, 0-based).')
@click.option("--points-csv", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV of query pixels, one x,y per row.")
@click.option("--pairs", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV of annotated correspondences x_source,y_source,x_target,y_target: also reports PCK.")
@click.option("--threshold", type=click.FloatRange(0), default=10.0, show_default=True,
              help="PCK: a match within this many px of the annotation is correct.")
@click.option("--upsampler", default="hrdv2", show_default=True,
              help="hrdv2, hrdv2-shift-flip, nearest, bilinear, stride (stride-only), jbu (joint bilateral), classical "
                   "(see `hrdv2 probe --list-upsamplers`).")
@click.option("--features", "feature_kind", type=click.Choice(["deep", "classical"]), default="deep", show_default=True,
              help="classical: hand-crafted filter features, no backbone or weights (same as --upsampler classical).")
@click.option("--stride", type=click.IntRange(1), default=None,
              help="ViT patch stride for hrdv2* and nearest/bilinear/stride (paper figures: 4); default: each upsampler's.")
@click.option("--backbone", default="dinov2_vits14", show_default=True, help="Backbone name (see `hrdv2 backbones`).")
@click.option("--weights", default=None,
              help="Local checkpoint, or 'random' (UNTRAINED: matches say nothing about quality). Default: pretrained.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("hrdv2-match"),
              show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep features on disk: a second run with the same images and upsampler skips the ViT.")
@click.option("--max-maps", type=click.IntRange(0), default=50, show_default=True,
              help="Write similarity heat maps for at most this many queries.")
def match(source, target, points, points_csv, pairs, threshold, upsampler, feature_kind, stride, backbone, weights,
          device, out_dir, cache_dir, max_maps) -> None:
    """Match query pixels of SOURCE into TARGET by cosine similarity of upsampled features.

    Writes into --out: SRC_to_TGT_matches.png (source | target, query i joined to its match
    in colour i; annotated points as crosses), SRC_to_TGT_similarity_qI.png per query (the
    query | its similarity heat map over the target), SRC_to_TGT_matches.csv and
    SRC_to_TGT_match.json (set-up, and PCK with --pairs).
    """
    from hrdv2.cli.boundary import check_outputs
    from hrdv2.io import read_image, write_image, write_text_atomic
    from hrdv2.matching import DenseFeatures, check_points, match_features, pck, resolve_upsampler_name
    from hrdv2.matching.features import stride_kwargs
    from hrdv2.matching.core import standardise_pair
    from hrdv2.matching.draw import draw_matches, draw_similarity

    name = "classical" if feature_kind == "classical" else resolve_upsampler_name(upsampler)
    kwargs = stride_kwargs(name, stride)
    queries, truth = _query_points(points, points_csv, pairs)
    check_outputs(folders=(out_dir,))
    src_img, tgt_img = read_image(source), read_image(target)
    queries = check_points(queries, src_img.shape, "source")
    if truth is not None:
        truth = check_points(truth, tgt_img.shape, "target").astype(np.float64)
    bb = None
    if name != "classical":
        from hrdv2.backbones import load_backbone

        bb = load_backbone(backbone, weights=weights, device=device)
    dense = DenseFeatures(name, bb, cache_dir=cache_dir, **kwargs)
    click.echo(f"features: {dense.describe()}", err=True)
    fs, ft = dense(src_img), dense(tgt_img)
    standardised = name == "classical"
    if standardised:
        fs, ft = standardise_pair(np.asarray(fs), np.asarray(ft))
    result = match_features(fs, ft, queries)

    stem = f"{source.stem}_to_{target.stem}"
    written = [write_image(out_dir / f"{stem}_matches.png", draw_matches(src_img, tgt_img, result, truth))]
    for i in range(min(len(result), max_maps)):
        written.append(write_image(out_dir / f"{stem}_similarity_q{i}.png", draw_similarity(src_img, tgt_img, result, i)))
    written.append(write_text_atomic(out_dir / f"{stem}_matches.csv", _csv_text(result, truth, threshold)))
    summary = {"source": str(source), "target": str(target), "features": dense.describe(), "upsampler": name,
               "untrained": dense.untrained, "standardised": standardised, "queries": len(result)}
    for i, ((qx, qy), (mx, my), s) in enumerate(zip(result.queries, result.matches, result.scores)):
        if i < 20:
            click.echo(f"query {i}: ({qx}, {qy}) -> ({mx}, {my})  cosine {s:.3f}")
    if len(result) > 20:
        click.echo(f"... {len(result) - 20} more in {stem}_matches.csv")
    if truth is not None:
        value = pck(result.matches, truth, threshold)
        summary.update(pck=value, threshold_px=threshold)
        click.echo(f"PCK@{threshold:g}px = {value:.3f} ({int(round(value * len(result)))}/{len(result)} matches "
                   f"within {threshold:g} px)  [{dense.describe()}]")
    written.append(write_text_atomic(out_dir / f"{stem}_match.json", json.dumps(summary, indent=2) + "\n"))
    if dense.untrained:
        click.secho(f"note: {dense.describe()}: these matches say nothing about the quality of the method; "
                    "use pretrained weights for that.", fg="yellow", err=True)
    click.echo(f"wrote {len(written)} files to {out_dir}")
