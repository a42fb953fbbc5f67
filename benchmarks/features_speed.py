"""Speed and memory of HR-Dv2 featurisation against a straightforward implementation of the method.

For DINOv2 ViT-S/14 (random weights unless --weights: speed does not depend on the values),
each configuration (image size x stride x transform set x dtype) runs in a fresh process so
that its peak RSS is its own. Printed per row:

* s/img, megapixels/s, peak RSS of hrdv2's HighResFeaturizer;
* (a) the same for the reference, the method as published written plainly: all transforms
  through the ViT in one batch, then per transform nearest-resize the patch map to full size,
  roll it back (inverse transform) and add it to a full-size accumulator; speed-up and memory
  ratio against it. The reference always computes in float32, and gets its attention from the
  same pass (the published code needs a second pass for it, so the reference is generous);
* (b) the share of hrdv2's time spent outside the ViT forwards;
* (c) achieved ViT FLOP/s (analytic count) against this machine's matmul FLOP/s measured in
  the same run for that dtype;
* for bfloat16 rows, the mean per-pixel cosine similarity to the float32 features.

Usage: python benchmarks/features_speed.py [--sizes 224,448] [--strides 14,7] [--sets 17,68]
       [--dtypes float32,bfloat16] [--threads 2] [--backbone dinov2_vits14] [--weights random]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def transform_set(n: int):
    from hrdv2.transforms import flips, product, shifts

    if n == 17:
        return shifts((1, 2), "moore")
    if n == 68:
        return product(shifts((1, 2), "moore"), flips())
    raise SystemExit(f"--sets takes 17 (Moore shifts 1,2) or 68 (x flips), got {n}")


def vit_flops(backbone, tokens: int) -> float:
    """Multiply-adds x 2 of one forward with ``tokens`` patch tokens (+ prefix tokens)."""
    m = backbone.model
    C, depth = backbone.embed_dim, len(m.blocks)
    N = tokens + backbone.num_prefix_tokens
    hidden = m.blocks[0].mlp.fc1.out_features
    per_block = 2 * N * C * 3 * C + 2 * 2 * N * N * C + 2 * N * C * C + 2 * 2 * N * C * hidden
    patch_embed = 2 * tokens * C * 3 * backbone.patch_size**2
    return depth * per_block + patch_embed


def matmul_flops(dtype_name: str) -> float:
    """This machine's practical GEMM peak: F.linear (the path every nn.Linear of the ViT takes)
    on 2048x2048 operands. (Plain torch.mm in bfloat16 on CPUs without native bf16 is ~70x
    slower still, so it is not the relevant limit.)"""
    import torch
    import torch.nn.functional as F

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    F.linear(a, b)
    best = 1e9
    for _ in range(3):
        t = time.perf_counter()
        F.linear(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 2048**3 / best


def reference(backbone, image, transforms, stride):
    """The published recipe, plainly: one big batch, then full-size resize + roll-back + add per transform."""
    import torch
    import torch.nn.functional as F

    from hrdv2.upsample import PatchGeometry, image_to_tensor

    x = image_to_tensor(image, device=backbone.device)
    H, W = x.shape[-2:]
    geo = PatchGeometry(H, W, backbone.patch_size, stride)
    t0 = time.perf_counter()
    batch = torch.cat([geo.pad(t.forward(x)) for t in transforms])
    feats, attn = backbone.forward_patches(batch, stride)
    vit = time.perf_counter() - t0
    gh, gw = geo.grid
    acc = torch.zeros(backbone.embed_dim, H, W, device=feats.device)
    acc_attn = torch.zeros(backbone.num_heads, H, W, device=feats.device)
    for i, t in enumerate(transforms):
        up = F.interpolate(feats[i: i + 1], size=(gh * stride, gw * stride), mode="nearest-exact")[..., :H, :W]
        acc += t.inverse(up)[0]
        up = F.interpolate(attn[i: i + 1], size=(gh * stride, gw * stride), mode="nearest-exact")[..., :H, :W]
        acc_attn += t.inverse(up)[0]
    return acc / len(transforms), vit


def run_one(cfg: dict) -> dict:
    """Runs in a child process: one configuration, one implementation."""
    import numpy as np
    import torch

    torch.set_num_threads(cfg["threads"])
    from hrdv2.backbones import load_backbone
    from hrdv2.cli.features import peak_rss_gb
    from hrdv2.upsample import HighResFeaturizer, PatchGeometry

    bb = load_backbone(cfg["backbone"], weights=cfg["weights"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (cfg["size"], cfg["size"], 3), dtype=np.uint8)
    tfs = transform_set(cfg["set"])
    fz = HighResFeaturizer(bb, stride=cfg["stride"], transforms=tfs, batch_size=cfg["batch"], dtype=cfg["dtype"])
    fz(image[:64, :64])  # warm-up: first-call allocations and kernel selection
    rss_before = peak_rss_gb()
    t0 = time.perf_counter()
    if cfg["impl"] == "reference":
        feats, vit = reference(bb, image, tfs, fz.stride)
    else:
        res = fz(image)
        feats, vit = res.features, res.info["vit_seconds"]
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "vit_seconds": vit, "peak_rss_gb": peak_rss_gb(), "rss_before_gb": rss_before}
    print(json.dumps(out), file=sys.stderr)
    geo = PatchGeometry(cfg["size"], cfg["size"], bb.patch_size, fz.stride)
    out["flops"] = vit_flops(bb, geo.grid[0] * geo.grid[1]) * len(tfs)
    if cfg.get("save"):
        np.save(cfg["save"], feats.contiguous().numpy())
    if cfg.get("compare"):
        ref = torch.from_numpy(np.load(cfg["compare"]))
        out["cosine"] = float(torch.nn.functional.cosine_similarity(ref, feats, dim=0).mean())
    out["backbone"] = bb.describe()
    return out


def spawn(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"configuration {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="224,448")
    ap.add_argument("--strides", default="14,7")
    ap.add_argument("--sets", default="17,68")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference (no ratio (a))")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    import torch

    torch.set_num_threads(args.threads)
    peak = {d: matmul_flops(d) for d in args.dtypes.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="hrdv2-bench-"))
    rows = []
    backbone_desc = None
    for size in map(int, args.sizes.split(",")):
        for stride in map(int, args.strides.split(",")):
            for nset in map(int, args.sets.split(",")):
                base = dict(size=size, stride=stride, set=nset, threads=args.threads, batch=args.batch,
                            backbone=args.backbone, weights=args.weights)
                ref = None if args.no_reference else spawn({**base, "impl": "reference", "dtype": "float32"})
                f32_path = tmp / f"{size}_{stride}_{nset}.npy"
                for dtype in args.dtypes.split(","):
                    cfg = {**base, "impl": "hrdv2", "dtype": dtype}
                    if dtype == "float32":
                        cfg["save"] = str(f32_path)
                    elif f32_path.exists():
                        cfg["compare"] = str(f32_path)
                    r = spawn(cfg)
                    backbone_desc = r["backbone"]
                    rows.append((size, stride, nset, dtype, r, ref, peak[dtype]))
                    print(f"  done {size}px stride {stride} {nset} tf {dtype}: {r['seconds']:.2f} s", file=sys.stderr)
                f32_path.unlink(missing_ok=True)

    print(f"\nHR-Dv2 featurisation, {backbone_desc}, {args.threads} threads, batch {args.batch}; "
          f"matmul peak measured: " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peak.items()))
    head = ("size", "S", "T", "dtype", "s/img", "MP/s", "RSS GB", "ref s", "ref GB", "(a) speed-up", "mem ratio",
            "(b) non-ViT", "ViT GFLOP/s", "(c) of peak", "cos vs fp32")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for size, stride, nset, dtype, r, ref, pk in rows:
        vit_rate = r["flops"] / max(r["vit_seconds"], 1e-9)
        cells = [
            size, stride, nset, dtype, f"{r['seconds']:.2f}", f"{size * size / 1e6 / r['seconds']:.3f}",
            f"{r['peak_rss_gb']:.2f}",
            f"{ref['seconds']:.2f}" if ref else "-", f"{ref['peak_rss_gb']:.2f}" if ref else "-",
            f"{ref['seconds'] / r['seconds']:.2f}x" if ref else "-",
            f"{r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}" if ref else "-",
            f"{1 - r['vit_seconds'] / r['seconds']:.1%}", f"{vit_rate / 1e9:.0f}", f"{vit_rate / pk:.0%}",
            f"{r['cosine']:.4f}" if "cosine" in r else "-",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    print("\nTargets (448 px, stride 14, 17 transforms): float32 (a) >= 3x with mem ratio <= 0.5; "
          "bfloat16 (a) >= 6x with cos >= 0.99; (b) < 25%. The reference runs in float32.")


if __name__ == "__main__":
    main()
