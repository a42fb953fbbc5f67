"""The search: an Optuna study over a task's space with two objectives (quality up, seconds
down), so the sampler explores the quality/cost trade-off rather than quality alone; then the
outputs: ``trials.csv``, ``pareto.png`` and ``best.json`` (a ``--config`` file of the command).

Each trial's quality, wall-clock seconds (featurising + fitting + predicting; reading the data
and loading the backbone happen once, before the first trial) and peak memory (RSS above the
trial's start, sampled: :mod:`hrdv2.tune.memory`) are recorded. A trial whose options the
workflow refuses (an ``HRDv2Error``) is recorded as failed with its message; the study goes on.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hrdv2.errors import HRDv2Error
from hrdv2.tune.memory import PeakMemory


@dataclass
class TrialRecord:
    """One trial: its number, state, the command options it tried and what they cost."""

    number: int
    state: str  # "complete" or "failed"
    options: dict[str, Any]
    params: dict[str, Any]  # the searched values only (as Optuna names them)
    quality: float | None = None
    seconds: float | None = None
    peak_mb: float | None = None
    per_image: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def run_study(task: Any, n_trials: int, timeout: float | None = None, seed: int = 0,
              on_trial: Callable[[TrialRecord], None] | None = None) -> list[TrialRecord]:
    """Run up to ``n_trials`` trials (or until ``timeout`` seconds) of ``task``; every record in order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records: list[TrialRecord] = []
    seen: dict[str, TrialRecord] = {}  # small categorical spaces repeat: a repeat is not re-run

    def objective(trial: "optuna.Trial") -> tuple[float, float]:
        opts = task.suggest(trial)
        params = {k: round(v, 6) if isinstance(v, float) else v for k, v in trial.params.items()}
        rec = TrialRecord(trial.number, "failed", opts, params)
        records.append(rec)
        key = json.dumps(rec.params, sort_keys=True, default=str)
        if key in seen:
            old = seen[key]
            rec.state, rec.quality, rec.seconds, rec.peak_mb = old.state, old.quality, old.seconds, old.peak_mb
            rec.per_image, rec.error = old.per_image, f"repeat of trial {old.number} (not re-run)"
            if on_trial:
                on_trial(rec)
            if rec.state != "complete":
                raise HRDv2Error(rec.error)
            return rec.quality, rec.seconds
        seen[key] = rec
        try:
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                quality, per_image = task.evaluate(opts)
                rec.seconds = time.perf_counter() - t0
        except HRDv2Error as exc:
            rec.error = str(exc)
            trial.set_user_attr("error", rec.error)
            if on_trial:
                on_trial(rec)
            raise
        rec.state, rec.quality, rec.per_image = "complete", float(quality), per_image
        rec.peak_mb = mem.peak_delta_bytes / 2**20
        if on_trial:
            on_trial(rec)
        return rec.quality, rec.seconds

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(n_trials // 3, 2)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(HRDv2Error,), gc_after_trial=True)
    return records


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Complete trials that no other trial beats on both quality (higher) and seconds (lower);
    repeats of an earlier trial are left out."""
    done = [r for r in records if r.state == "complete" and not r.error]
    front = []
    for r in done:
        dominated = any(o.quality >= r.quality and o.seconds <= r.seconds and
                        (o.quality > r.quality or o.seconds < r.seconds) for o in done)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.seconds)


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The highest quality; among equals, the fastest."""
    done = [r for r in records if r.state == "complete"]
    return max(done, key=lambda r: (r.quality, -r.seconds)) if done else None


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def trials_csv(records: list[TrialRecord]) -> str:
    """trial, state, quality, seconds, peak_rss_mb, one column per searched parameter, error."""
    names = sorted({k for r in records for k in r.params})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["trial", "state", "quality", "seconds", "peak_rss_mb", *names, "error"])
    for r in records:
        w.writerow([r.number, r.state, _num(r.quality, ".4f"), _num(r.seconds, ".3f"), _num(r.peak_mb, ".1f"),
                    *[r.params.get(n, "") for n in names], r.error or ""])
    return buf.getvalue()


def plot_pareto(records: list[TrialRecord], path: Path, title: str, quality: str = "quality (mIoU)") -> Path:
    """Quality vs seconds of every complete trial; the Pareto front joined and highlighted, the
    best trial starred, failed trials counted in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hrdv2.io import atomic_path

    done = [r for r in records if r.state == "complete"]
    front, best = pareto_front(records), best_trial(records)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    ax.scatter([r.seconds for r in done], [r.quality for r in done], c="0.6", s=28, label="trial")
    if front:
        ax.step([r.seconds for r in front], [r.quality for r in front], where="post", c="tab:red", lw=1.2)
        ax.scatter([r.seconds for r in front], [r.quality for r in front], c="tab:red", s=46, label="Pareto front")
    if best is not None:
        ax.scatter([best.seconds], [best.quality], marker="*", s=260, c="gold", edgecolors="k", zorder=5,
                   label=f"best.json (trial {best.number})")
    for r in front:
        ax.annotate(str(r.number), (r.seconds, r.quality), textcoords="offset points", xytext=(4, 4), fontsize=8)
    failed = len(records) - len(done)
    ax.set_xlabel("seconds per trial (featurise + fit + predict)")
    ax.set_ylabel(quality)
    secs = [r.seconds for r in done if r.seconds > 0]
    if secs and max(secs) / min(secs) > 20:
        ax.set_xscale("log")
    ax.set_title(title + (f"  [{failed} failed]" if failed else ""), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def best_config(workflow: str, best: TrialRecord, about: dict[str, Any]) -> str:
    """best.json text: the ``--config`` format of :mod:`hrdv2.cli.config_file`, plus a ``tune``
    record (quality, cost, backbone) that the reader ignores."""
    doc = {"hrdv2_config": 1, "workflow": workflow, "options": best.options,
           "tune": {"trial": best.number, "quality": round(best.quality, 4), "seconds": round(best.seconds, 3),
                    "peak_rss_mb": round(best.peak_mb, 1), "per_image": {k: round(v, 4) for k, v in best.per_image.items()},
                    **about}}
    return json.dumps(doc, indent=2) + "\n"
