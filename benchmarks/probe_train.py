"""Small-scale iSegProbe run on this machine: train a click head, evaluate it against the
training-free segmenter (the reference run, same process) and an untrained head, plot all.

    .venv/bin/python benchmarks/probe_train.py [--out bench-probe] [--steps 60] [--max-side 64]

Data: ../shared/data/horse (training, last 6 objects held out) and ../shared/data/grabcut
(evaluation, never trained on). Backbone: dinov2_vits14 with **random weights (UNTRAINED)**:
the numbers test the pipeline and its cost, not how good any upsampler or head is. Prints the
wall/CPU seconds of each phase and the ratios of the trained head's NoC@85 and mIoU@5 to the
training-free reference; writes every run folder and ``runs.png`` under --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import time
from pathlib import Path

from click.testing import CliRunner

from hrdv2.cli.main import cli

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(args: list[str]) -> tuple[float, float]:
    print("$ hrdv2 " + " ".join(shlex.quote(a) for a in args), flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    res = CliRunner().invoke(cli, args)
    if res.exit_code != 0:
        raise SystemExit(f"failed ({res.exit_code}): {res.output[-2000:]}")
    print(res.output.strip().splitlines()[-1])
    return time.perf_counter() - t0, time.process_time() - c0


def summary(folder: Path) -> dict[str, str]:
    with open(folder / "summary.csv", newline="") as fh:
        return next(csv.DictReader(fh))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-probe"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-side", type=int, default=64)
    ap.add_argument("--clicks", type=int, default=10)
    a = ap.parse_args()
    out, side = a.out, str(a.max_side)
    common = ["--weights", "random", "--max-side", side]
    times = {}
    times["train"] = run(["probe", "train", "--root", str(DATA / "horse"), *common, "--upsampler", "bilinear",
                          "--out", str(out / "head"), "--holdout", "6", "--steps", str(a.steps), "--batch-size", "4",
                          "--hidden", "16", "--radius", "3", "--lr", "0.01", "--max-iter-clicks", "2"])
    if not (out / "untrained.pt").exists():
        from hrdv2.probe.head import ClickHead, save_head

        save_head(out / "untrained.pt", ClickHead(384, hidden=16, radius=3), meta={"upsampler": "bilinear"})
    evals = {"training-free": "none", "trained-head": str(out / "head" / "head.pt"),
             "untrained-head": str(out / "untrained.pt")}
    for name, head in evals.items():
        times[name] = run(["probe", "--root", str(DATA / "grabcut"), *common, "--upsamplers", "bilinear",
                           "--clicks", str(a.clicks), "--head", head, "--out", str(out / name),
                           *(["--vis-clicks", "1", "--save-features"] if name == "trained-head" else [])])
    run(["probe", "plot", *(str(out / n) for n in evals), "--out", str(out / "runs.png"),
         "--title", f"grabcut, bilinear, dinov2_vits14 random weights (UNTRAINED), {side} px"])
    report = json.loads((out / "head" / "train.json").read_text())
    ref = summary(out / "training-free")
    print(f"\nhead training: BCE {report['bce_first']:.3f} -> {report['bce_last']:.3f}; held-out horse mIoU "
          f"{report['held_out_miou_before']:.3f} (untrained) -> {report['held_out_miou_after']:.3f}")
    print(f"{'run':16s} {'wall s':>7s} {'cpu s':>7s} {'NoC@85':>7s} {'mIoU@1':>7s} {'mIoU@5':>7s} "
          f"{'mIoU@' + str(a.clicks):>8s}  ratio NoC@85 / mIoU@5 vs training-free")
    for name in ("train", *evals):
        wall, cpu = times[name]
        if name == "train":
            print(f"{name:16s} {wall:7.1f} {cpu:7.1f}")
            continue
        s = summary(out / name)
        print(f"{name:16s} {wall:7.1f} {cpu:7.1f} {float(s['noc@85']):7.2f} {float(s['miou@1']):7.3f} "
              f"{float(s['miou@5']):7.3f} {float(s[f'miou@{a.clicks}']):8.3f}  "
              f"{float(s['noc@85']) / float(ref['noc@85']):.2f} / {float(s['miou@5']) / float(ref['miou@5']):.2f}")


if __name__ == "__main__":
    main()
