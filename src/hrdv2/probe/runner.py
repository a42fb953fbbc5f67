"""Run the click probe: every sample of a dataset x every upsampler -> IoU per click, then
NoC / failures / mIoU@k per upsampler, written as CSV + PNG (+ a JSON of the set-up).

Only the features differ between upsamplers: the image (optionally downsized), the click
simulator, its seed and the click segmenter are the same for all of them. The segmenter is
the training-free ``ClickSegmenter`` (``heads=None``) or a trained ``ClickHead`` (one for
every upsampler, or one per upsampler name: ``hrdv2.probe.head``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from hrdv2.datasets.interactive import InteractiveDataset
from hrdv2.errors import ConfigError
from hrdv2.io import atomic_path, to_float01, write_text_atomic
from hrdv2.metrics.clicks import summarize
from hrdv2.probe.click_segmenter import ClickSegmenter, SegmenterConfig
from hrdv2.probe.clicks import simulate
from hrdv2.probe.upsamplers import (
    Upsampler,
    UpsamplerUnavailableError,
    check_available,
    check_features,
    create_upsampler,
)

THRESHOLDS = (0.80, 0.85, 0.90)
ANY_UPSAMPLER = "*"  # key of a head used for every upsampler


@dataclass
class ProbeConfig:
    max_clicks: int = 20
    stop_iou: float | None = None  # None: always all clicks (full mIoU@k curves)
    seed: int = 0
    max_side: int | None = None  # downsize images (and masks, nearest) so the longer side is at most this
    limit: int | None = None  # first N samples only
    strategy: str = "largest_region"
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)

    def __post_init__(self) -> None:
        if self.max_clicks < 1:
            raise ConfigError(f"max_clicks must be >= 1, got {self.max_clicks}.")
        if self.max_side is not None and self.max_side < 16:
            raise ConfigError(f"max_side must be >= 16 px, got {self.max_side}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}.")


@dataclass
class ProbeResult:
    dataset: str
    backbone: str
    records: list[dict[str, Any]]  # one per (sample, upsampler): ious, seconds
    unavailable: dict[str, str]  # upsampler -> why it did not run
    summary: list[dict[str, Any]]  # one per upsampler
    skipped: list[str] = field(default_factory=list)  # samples whose object vanished when downsized
    evaluator: Any = "training-free ClickSegmenter"  # or {upsampler: head checkpoint}
    files: dict[str, Path] = field(default_factory=dict)


def downsize(image: np.ndarray, masks: Sequence[np.ndarray], max_side: int | None):
    """Image (bilinear, as uint8) and masks (nearest) resized so that max(H, W) <= max_side."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, list(masks)
    from PIL import Image

    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img8 = image if image.dtype == np.uint8 else (to_float01(image) * 255).round().astype(np.uint8)
    small = np.asarray(Image.fromarray(img8).resize(size, Image.BILINEAR))
    out_masks = [np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.NEAREST)).astype(bool) for m in masks]
    return small, out_masks


def _resolve(upsamplers: Sequence[str | Upsampler]) -> list[Upsampler]:
    out = [create_upsampler(u) if isinstance(u, str) else u for u in upsamplers]
    names = [u.name for u in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"upsampler names must be unique, got {names}.")
    if not out:
        raise ConfigError("no upsamplers given.")
    return out


def _segmenter_factory(heads: Mapping[str, Any] | None, config: ProbeConfig) -> Callable[[Any, str], Any]:
    """(features, upsampler name) -> predictor: the training-free segmenter, or the trained head."""
    if not heads:
        return lambda feats, name: ClickSegmenter(feats, config.segmenter).as_predictor()
    from hrdv2.probe.head import HeadSegmenter

    def make(feats: Any, name: str) -> Any:
        head = heads.get(name, heads.get(ANY_UPSAMPLER))
        if head is None:
            raise ConfigError(f"no trained head for upsampler {name!r}; heads given for {sorted(heads)}. "
                              "Give one checkpoint per upsampler (trained with --upsampler NAME).")
        return HeadSegmenter(head, feats).as_predictor()

    return make


def run_probe(
    dataset: InteractiveDataset,
    upsamplers: Sequence[str | Upsampler],
    backbone: Any,
    config: ProbeConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    heads: Mapping[str, Any] | None = None,
    diagnostics: Any = None,
) -> ProbeResult:
    """Probe ``upsamplers`` on ``dataset``; write CSVs, plot and JSON into ``out_dir`` if given.

    ``heads``: None (training-free segmenter) or {upsampler name or "*": ClickHead}.
    ``diagnostics``: a ``hrdv2.probe.diagnostics.Diagnostics`` (feature / per-click pictures
    into ``out_dir``), or None.
    """
    from tqdm.auto import tqdm

    config = config or ProbeConfig()
    make_predictor = _segmenter_factory(heads, config)
    if diagnostics is not None and out_dir is None:
        raise ConfigError("feature and click pictures need an output folder (out_dir).")
    ups = _resolve(upsamplers)
    unavailable = {u.name: r for u in ups if (r := check_available(u)) is not None}
    active = [u for u in ups if u.name not in unavailable]
    samples = list(dataset)[: config.limit] if config.limit else list(dataset)
    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    bar = tqdm(total=len(samples) * len(active), desc=f"probe {dataset.name}", unit="run", disable=not progress)
    for index, sample in enumerate(samples):
        image, obj, ignore = sample.load()
        image, (obj, ignore) = downsize(image, (obj, ignore), config.max_side)
        if not (obj & ~ignore).any():
            skipped.append(sample.name)  # the object vanished at this size: left out for every upsampler
            bar.update(len(active))
            continue
        for up in active:
            if up.name in unavailable:
                bar.update(1)
                continue
            bar.set_postfix_str(f"{sample.name} / {up.name}")
            t0 = time.perf_counter()
            try:
                feats = check_features(up(image, backbone), image, up.name)
            except UpsamplerUnavailableError as exc:
                unavailable[up.name] = str(exc)
                bar.update(1)
                continue
            t1 = time.perf_counter()
            predictor = make_predictor(feats, up.name)
            masks: list[np.ndarray] = []
            if diagnostics is not None and diagnostics.wants(index, sample.name):
                predictor = _recording(predictor, masks)
                diagnostics.features(Path(out_dir), sample.name, up.name, image, feats, backbone)
            del feats
            run = simulate(obj, predictor, ignore, config.max_clicks, config.stop_iou, config.seed, config.strategy)
            if masks:
                diagnostics.clicks(Path(out_dir), sample.name, up.name, image, obj, ignore, run, masks)
            records.append({
                "dataset": dataset.name, "sample": sample.name, "upsampler": up.name,
                "height": image.shape[0], "width": image.shape[1],
                "feature_seconds": t1 - t0, "segment_seconds": time.perf_counter() - t1,
                "ious": run.ious, "clicks": [(c.y, c.x, c.positive) for c in run.clicks],
            })
            bar.update(1)
    bar.close()

    summary = []
    for up in active:
        recs = [r for r in records if r["upsampler"] == up.name]
        if not recs:
            continue
        row: dict[str, Any] = {"dataset": dataset.name, "upsampler": up.name}
        row.update(summarize([r["ious"] for r in recs], config.max_clicks, THRESHOLDS))
        row["feature_seconds"] = float(np.mean([r["feature_seconds"] for r in recs]))
        summary.append(row)
    result = ProbeResult(dataset.name, backbone.describe() if hasattr(backbone, "describe") else str(backbone),
                         records, unavailable, summary, skipped)
    result.evaluator = "training-free ClickSegmenter" if not heads else {
        k: getattr(h, "source", "ClickHead") for k, h in heads.items()}
    if out_dir is not None:
        result.files = write_outputs(result, config, Path(out_dir))
    return result


def _recording(predictor: Callable, masks: list[np.ndarray]) -> Callable:
    """The same predictor, keeping every mask it returns (for per-click pictures)."""

    def predict(clicks, prev):
        mask = predictor(clicks, prev)
        masks.append(np.asarray(mask, bool).copy())
        return mask

    return predict


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_outputs(result: ProbeResult, config: ProbeConfig, out_dir: Path) -> dict[str, Path]:
    """summary.csv, per_sample.csv, miou_vs_clicks.png and probe.json, each written atomically."""
    from hrdv2.metrics.clicks import failed, noc, pad_ious

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    k = config.max_clicks
    per_sample = []
    for r in result.records:
        row = {key: r[key] for key in ("dataset", "sample", "upsampler", "height", "width")}
        row["feature_seconds"] = round(r["feature_seconds"], 4)
        for t in THRESHOLDS:
            row[f"noc@{round(t * 100)}"] = noc(r["ious"], t, k)
            row[f"fail@{round(t * 100)}"] = int(failed(r["ious"], t, k))
        row.update({f"iou@{i}": round(v, 5) for i, v in enumerate(pad_ious(r["ious"], k), start=1)})
        per_sample.append(row)
    files["per_sample"] = write_text_atomic(out_dir / "per_sample.csv", _csv(per_sample))
    files["summary"] = write_text_atomic(out_dir / "summary.csv", _csv(
        [{key: (round(v, 5) if isinstance(v, float) else v) for key, v in row.items()} for row in result.summary]
    ))
    files["plot"] = plot_miou(result.summary, out_dir / "miou_vs_clicks.png", k,
                              f"{result.dataset}: {result.backbone}")
    meta = {"dataset": result.dataset, "backbone": result.backbone, "evaluator": result.evaluator,
            "unavailable": result.unavailable, "skipped": result.skipped,
            "config": asdict(config), "samples": sorted({r["sample"] for r in result.records})}
    files["json"] = write_text_atomic(out_dir / "probe.json", json.dumps(meta, indent=2, default=str))
    return files


def plot_miou(summary: list[dict[str, Any]], path: Path, max_clicks: int, title: str) -> Path:
    """mIoU vs number of clicks, one line per upsampler (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ks = np.arange(1, max_clicks + 1)
    for row in summary:
        ax.plot(ks, [row[f"miou@{k}"] for k in ks], marker=".", label=row["upsampler"])
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", lw=0.6, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.set_xlim(1, max_clicks)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if len(summary) > 6 else 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def format_table(summary: list[dict[str, Any]], ks: Sequence[int] = (1, 3, 5, 10, 20)) -> list[list[str]]:
    """Header + rows of the results table (strings), for the CLI and the docs."""
    header = ["dataset", "upsampler", "n", "NoC@80", "NoC@85", "NoC@90", "fail@85", "fail@90"] + [f"mIoU@{k}" for k in ks] + ["feat s"]
    rows = [header]
    for r in summary:
        rows.append([
            r["dataset"], r["upsampler"], f"{int(r['n'])}", f"{r['noc@80']:.2f}", f"{r['noc@85']:.2f}", f"{r['noc@90']:.2f}",
            f"{int(r['fail@85'])}", f"{int(r['fail@90'])}",
            *[f"{r[f'miou@{k}']:.3f}" if f"miou@{k}" in r else "-" for k in ks], f"{r['feature_seconds']:.2f}",
        ])
    return rows
