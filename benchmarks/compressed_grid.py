"""Deep-feature classification on the compressed grid against per-pixel classification.

An HR-Dv2 map is piecewise constant (hrdv2.segmentation.compressed), so a per-pixel classifier
needs one prediction per distinct (row, column) cell. Per stride, on a crop of
``superalloy/isb_0`` (features from DINOv2 ViT-S/14, random weights unless --weights: the
point is speed and exact equality, not quality), a random forest and a logistic regression are
trained on the image's scribbles; the table prints the per-pixel ``predict_proba`` time (the
reference, in the same process), the compressed-grid time (run detection included), their
ratio, the compression factor (pixels per cell), whether it was used, and whether the probabilities
are identical.

Usage: python benchmarks/compressed_grid.py [--size 448] [--strides 14,7] [--shifts 1,2]
       [--backbone dinov2_vits14] [--weights random] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--strides", default="14,7")
    ap.add_argument("--shifts", default="1,2", help="Moore shifts (17 transforms with 1,2)")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="random", help="'random' (UNTRAINED), a local file, or 'official'")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()

    from hrdv2.engine import FeatureEngine
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.io import read_image, read_labels
    from hrdv2.segmentation import Segmenter
    from hrdv2.segmentation.compressed import compressed_grid, predict_compressed

    crop = (slice(0, args.size), slice(0, args.size))
    image = np.ascontiguousarray(read_image(args.data / "superalloy" / "isb_0.png")[crop])
    scribbles = np.ascontiguousarray(read_labels(args.data / "superalloy" / "isb_0_scribble.png")[crop])
    shifts = tuple(int(s) for s in args.shifts.split(","))
    print(f"backbone {args.backbone}, weights {args.weights}"
          + (" (UNTRAINED: speed and equality only)" if args.weights == "random" else "")
          + f"; image {image.shape[1]}x{image.shape[0]} (superalloy/isb_0 crop), Moore shifts {shifts}")
    print("| stride | classifier | channels | per-pixel predict (reference) | predict_compressed | speed-up | pixels per cell | compressed? | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stride in (int(s) for s in args.strides.split(",")):
        cfg = FeatureConfig(kind="deep", backbone=args.backbone, weights=args.weights, stride=stride, shifts=shifts,
                            pattern="moore", flips=False)
        feats = FeatureEngine(cfg).features(image)
        cells = compressed_grid(feats)[0]
        per_cell = feats.shape[0] * feats.shape[1] / (cells.shape[0] * cells.shape[1])
        for clf in ("random_forest", "logistic"):
            seg = Segmenter(cfg, classifier=clf).fit([image], [scribbles], features=[feats])
            t0 = time.perf_counter()
            ref = seg.predict_proba_features(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2] + (-1,))
            t_ref = time.perf_counter() - t0
            t0 = time.perf_counter()
            out, used = predict_compressed(feats, seg.predict_proba_features)
            t_new = time.perf_counter() - t0
            same = bool(np.array_equal(out, ref))
            print(f"| {stride} | {clf} | {feats.shape[-1]} | {t_ref:.3f} s | {t_new:.3f} s | {t_ref / t_new:.1f}x | "
                  f"{per_cell:.1f} | {'yes' if used > 1 else 'no (per pixel)'} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
