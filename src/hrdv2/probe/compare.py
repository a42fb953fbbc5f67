"""Overlay the mIoU-vs-clicks curves of several probe runs in one picture (the iSegProbe
figure): one line per (run, upsampler), read from each run's ``summary.csv``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from hrdv2.errors import ConfigError
from hrdv2.io import atomic_path


def read_summary(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``RUN_DIR/summary.csv`` (as written by ``hrdv2 probe``)."""
    path = Path(run_dir) / "summary.csv"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no summary.csv here; give folders written by `hrdv2 probe --out DIR`.")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not any(k.startswith("miou@") for k in rows[0]):
        raise ConfigError(f"{path}: no mIoU@k columns; was it written by `hrdv2 probe`?")
    return rows


def _curve(row: dict[str, str]) -> np.ndarray:
    ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("miou@"))
    return np.array([float(row[f"miou@{k}"]) for k in ks])


def collect_curves(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """(legend label, mIoU@1..K) for every (run, upsampler), in the order they are drawn."""
    if not run_dirs:
        raise ConfigError("give at least one run folder to plot.")
    if labels is not None and len(labels) != len(run_dirs):
        raise ConfigError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run folder.")
    labels = list(labels) if labels is not None else [Path(d).resolve().name for d in run_dirs]
    out = []
    for run, label in zip(run_dirs, labels):
        for row in read_summary(run):
            suffix = f" ({row['dataset']})" if len(run_dirs) == 1 and row.get("dataset") else ""
            out.append((f"{label}: {row.get('upsampler', '?')}{suffix}", _curve(row)))
    return out


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
              title: str = "mIoU vs clicks") -> Path:
    """One PNG with every run's curves; the legend says ``label: upsampler``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = collect_curves(run_dirs, labels)
    run_of = {}  # line style per run: the label before ": "
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    styles = ["-", "--", ":", "-."]
    k_max = 1
    for name, y in curves:
        style = styles[run_of.setdefault(name.split(": ")[0], len(run_of)) % len(styles)]
        k_max = max(k_max, y.size)
        ax.plot(np.arange(1, y.size + 1), y, ls=style, marker=".", label=name)
    lines = len(curves)
    for t in (0.85, 0.90):
        ax.axhline(t, color="grey", lw=0.6, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(1, k_max)
    ax.set_ylim(0, 1)
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if lines > 8 else 1)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
