"""HR-Dv2 on a GPU: are CUDA features the CPU features, and how fast and small is the paper's GPU setting?

1. Correctness: the same weights on the CPU and on the GPU featurise the same image; the
   per-pixel cosine between the two feature maps (and attention maps) must be >= 0.999
   everywhere (float32 compute on both; PyTorch's default TF32 settings on the GPU).
2. Speed and memory in the paper's GPU setting: a 350x350 image, stride 4, shifts 1,2 in the
   Moore pattern x flips = 68 transforms, for hrdv2's HighResFeaturizer and for the plain
   method (benchmarks/features_speed.py ``reference``: all transforms through the ViT in one
   batch, then per transform a full-size resize, the inverse transform and a full-size add),
   on the same GPU in the same run. Each is warmed up once, then timed (median) with
   torch.cuda.synchronize around every run, until its results are float32 arrays on the CPU;
   peak GPU memory is torch.cuda.max_memory_allocated (weights included), reset between
   methods. The published figures (their GPU) are printed beside.

Random weights by default (timing does not depend on the values; the output says UNTRAINED).
The whole run takes well under 5 minutes on a current GPU. Without CUDA it prints one line and
exits 0; ``--device cpu --quick`` smoke-tests the script on a tiny setting.

Usage: python benchmarks/gpu_check.py [--device cuda] [--backbone dinov2_vits14] [--weights random]
       [--batch 8] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# (method, seconds per image, peak GPU GB) as published, each on its authors' GPU
PUBLISHED = {"HR-Dv2": (1.12, 4.0), "LoftUp": (0.157, 2.1), "FeatUp JBU": (0.144, 1.0)}
COSINE_MIN = 0.999
BUDGET_S = 240  # stop starting new timing rows after this, so the run stays under 5 minutes


def features_speed():
    """benchmarks/features_speed.py as a module (benchmarks/ is not a package): its ``reference``
    is the plain method and ``transform_set`` the paper's transform sets."""
    path = Path(__file__).with_name("features_speed.py")
    spec = importlib.util.spec_from_file_location("features_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], object], device, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``repeats`` runs after one warm-up, and peak GPU GB over the timed runs."""
    import torch

    run()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return statistics.median(times), peak


def pixel_cosine(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1), dim=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N (default cuda); cpu for a smoke test")
    ap.add_argument("--backbone", default="dinov2_vits14")
    ap.add_argument("--weights", default="random", help="random (default), a local file, or 'official'")
    ap.add_argument("--batch", type=int, default=8, help="hrdv2 batch size (transforms per ViT call)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny setting (for --device cpu smoke tests)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from hrdv2.backbones import load_backbone, resolve_device
    from hrdv2.errors import HRDv2Error
    from hrdv2.upsample import HighResFeaturizer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to check "
              "(--device cpu --quick runs a smoke test).")
        return 0
    try:
        device = resolve_device(args.device)
        cpu_bb = load_backbone(args.backbone, weights=None if args.weights == "official" else args.weights)
    except HRDv2Error as exc:
        print(f"gpu_check: {exc}")
        return 2
    start = time.perf_counter()
    fs = features_speed()
    transforms = fs.transform_set(68)  # shifts 1,2 Moore x flips
    size, stride = (28, 7) if args.quick else (350, 4)
    checks = [(28, 14), (28, 4)] if args.quick else [(350, 14), (112, 4)]
    repeats = 1 if args.quick else args.repeats
    # the same weights on the device: a copy of the CPU model, not a second load
    dev_bb = dataclasses.replace(cpu_bb, model=copy.deepcopy(cpu_bb.model).to(device), device=None,
                                 _compute_copies={})
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"gpu_check on {where}: {dev_bb.describe()}; torch {torch.__version__}, "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 conv {torch.backends.cudnn.allow_tf32}")

    # 1. device features == CPU features
    print(f"\n1. {device} vs CPU features, float32, {len(transforms)} transforms (per-pixel cosine)")
    print("| image | stride | features mean | features min | attention min | pass |")
    print("|---|---|---|---|---|---|")
    ok = True
    for side, s in checks:
        crop = image[:side, :side]
        ref = HighResFeaturizer(cpu_bb, stride=s, transforms=transforms, batch_size=args.batch)(crop)
        got = HighResFeaturizer(dev_bb, stride=s, transforms=transforms, batch_size=args.batch)(crop)
        assert got.features.device.type == "cpu" and got.features.dtype == torch.float32
        fc, ac = pixel_cosine(ref.features, got.features), pixel_cosine(ref.attention, got.attention)
        passed = bool(fc.min() >= COSINE_MIN and ac.min() >= COSINE_MIN)
        ok &= passed
        print(f"| {side}x{side} | {s} | {fc.mean():.6f} | {fc.min():.6f} | {ac.min():.6f} | "
              f"{'yes' if passed else 'NO'} |")
    side, s = checks[0]
    crop = image[:side, :side]
    ref = HighResFeaturizer(cpu_bb, stride=s, transforms=transforms, batch_size=args.batch)(crop)
    low = HighResFeaturizer(dev_bb, stride=s, transforms=transforms, batch_size=args.batch, dtype="bfloat16")(crop)
    print(f"(bfloat16 on {device} vs float32 on CPU, {side}x{side} stride {s}: mean per-pixel cosine "
          f"{pixel_cosine(ref.features, low.features).mean():.4f}; not a pass criterion)")
    del ref, low

    # 2. the paper's GPU setting: hrdv2 vs the plain method, same device, same run
    def plain() -> None:
        feats, _ = fs.reference(dev_bb, image, transforms, stride)
        feats.to("cpu")

    rows: list[tuple[str, str, int, float, float | None]] = []
    plans: list[tuple[str, str, int, Callable[[], object]]] = [("plain method", "float32", len(transforms), plain)]
    # bfloat16 matmuls on CPUs without native support are far slower than float32: GPU only
    for dtype in ("float32", "bfloat16") if device.type != "cpu" else ("float32",):
        fz = HighResFeaturizer(dev_bb, stride=stride, transforms=transforms, batch_size=args.batch, dtype=dtype)
        plans.append(("hrdv2", dtype, args.batch, lambda fz=fz: fz(image)))  # float32 CPU results
    for name, dtype, batch, run in plans:
        if time.perf_counter() - start > BUDGET_S:
            print(f"(time budget of {BUDGET_S} s spent: {name} {dtype} not run)")
            continue
        seconds, peak = measure(run, device, repeats)
        rows.append((name, dtype, batch, seconds, peak))
        print(f"  timed {name} {dtype}: {seconds:.3f} s", file=sys.stderr)

    print(f"\n2. {size}x{size} image, stride {stride}, shifts 1,2 Moore x flips = {len(transforms)} transforms, "
          f"on {where}; median of {repeats} after 1 warm-up, until float32 results are on the CPU")
    print("| method | dtype | transforms per ViT call | s/img | peak GPU GB | speed-up vs plain | memory vs plain |"
          " published s/img | published GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = next((r for r in rows if r[0] == "plain method"), None)
    for name, dtype, batch, seconds, peak in rows:
        speed = f"{base[3] / seconds:.2f}x" if base else "-"
        mem = f"{peak / base[4]:.2f}" if base and peak and base[4] else "-"
        print(f"| {name} | {dtype} | {batch} | {seconds:.3f} | {f'{peak:.2f}' if peak else '-'} | {speed} | {mem} | - | - |")
    for name, (s_pub, gb_pub) in PUBLISHED.items():
        what = "published implementation" if name == "HR-Dv2" else "trained upsampler"
        print(f"| {name} ({what}, not run here) | - | - | - | - | - | - | {s_pub} | {gb_pub} |")
    hr = next((r for r in rows if r[0] == "hrdv2"), None)
    if hr and device.type == "cuda":
        s_pub, gb_pub = PUBLISHED["HR-Dv2"]
        print(f"\nhrdv2 {hr[1]} here vs the published HR-Dv2 figures (different GPUs): {s_pub / hr[3]:.2f}x the speed, "
              f"{hr[4] / gb_pub:.2f}x the memory.")
    print(f"\nPublished figures are the brief's, each measured on its authors' GPU. Feature check: "
          f"{'PASS' if ok else 'FAIL'} (min per-pixel cosine >= {COSINE_MIN}). Total {time.perf_counter() - start:.0f} s.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
