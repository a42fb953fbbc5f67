"""The picture in docs/backbones.md: where rotary position embeddings put strided DINOv3 patches.

DINOv3 (timm ``vit_small_patch16_dinov3``) has no positional table: queries and keys are rotated
by angles proportional to each patch's position. The position a rotation encodes is read back
here from the embedding itself (the angle of its lowest frequency, which never wraps), for one
row of patches across a 128-px-wide image:

- stride 16: the model's own 8 patches;
- stride 8, hrdv2 (``hrdv2.backbones.rope.strided_rope``): 15 overlapping patches, each at the
  position of its true centre, so every second one coincides with a stride-16 patch;
- stride 8, the model's own table for a 15-patch grid (what running timm's rope on the strided
  grid would give): the same 15 patches spread as if they were 16 px apart.

Writes rope_positions.png and prints the largest position error of each (in patches). The
architecture is randomly initialised, but rotary frequencies are fixed, not learnt: the
positions are exactly those of the pretrained model.

Usage: python benchmarks/rope_figure.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import timm
import torch

from hrdv2.backbones.rope import strided_rope

P, WIDTH = 16, 128


def positions(embed: torch.Tensor, rope: torch.nn.Module, gw: int) -> np.ndarray:
    """The x coordinate ([-1, 1] across the image) each token of the first row is rotated for."""
    dim = embed.shape[-1] // 2  # [sin | cos], each (N, head_dim) in half layout: [y bands, x bands] twice
    sin, cos = embed[:gw, :dim], embed[:gw, dim:]
    col = dim // 2 - 1  # the x axis' lowest frequency (largest period)
    angle = torch.atan2(sin[:, col], cos[:, col])
    return (angle * rope.periods[-1] / (2 * math.pi)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rope = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0, dynamic_img_size=True,
                             depth=1).rope
    g, S = WIDTH // P, P // 2
    G = 1 + (WIDTH - P) // S
    centre = lambda n, s: np.arange(n) * s + P / 2  # noqa: E731  token centre in px
    native = positions(rope.get_embed(shape=[1, g]), rope, g)
    ours = positions(strided_rope(rope, (1, G), S, P, (P, WIDTH)), rope, G)
    table = positions(rope.get_embed(shape=[1, G]), rope, G)
    truth = 2 * centre(G, S) / WIDTH - 1  # DINOv3's convention: patch centre / image extent -> [-1, 1]
    for label, pos in (("hrdv2 (true centres)", ours), ("model's own 15-patch table", table)):
        print(f"stride {S}, {label}: largest position error {np.abs(pos - truth).max() * WIDTH / 2 / P:.3f} patches")

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    ax.plot(centre(G, S), table, "s", color="tab:red", ms=6, label=f"stride {S}: model's own table for {G} patches")
    ax.plot(centre(G, S), ours, "o", color="tab:blue", ms=7, label=f"stride {S}: hrdv2, true positions")
    ax.plot(centre(g, P), native, "x", color="black", ms=10, mew=2, label=f"stride {P}: the model's patches")
    ax.set_xlabel("patch centre in the image (px)")
    ax.set_ylabel("position encoded by RoPE (x)")
    ax.set_title(f"DINOv3 rotary positions of one row of patches, {WIDTH} px wide image", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "rope_positions.png")
    print(f"wrote {out / 'rope_positions.png'}")


if __name__ == "__main__":
    main()
