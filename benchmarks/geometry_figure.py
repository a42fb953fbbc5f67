"""The picture in docs/geometry.md: where each pixel's feature comes from in the two geometries.

For a ViT with patch P and stride S, every pixel of the output receives the feature of one patch
(per transform). ``hrdv2`` pads the image so the patch of cell i is centred on the pixels of that
cell; ``published`` (the published HR-Dv2 code) runs the unpadded image and stretches its smaller
grid over the image with nearest-exact resizing. The figure is computed from the same geometry
classes the featurizer uses (``hrdv2.upsample.geometry``), not drawn by hand:

  geometry_cells.png  left/middle: which patch each pixel of a 45x59 image reads at S = 7
                      (colours = patch id, dots = patch centres, lines = the pixel -> centre offset
                      for a few pixels); right: offset from each pixel to the centre of its patch
                      along a 100-px row, at S = 4 and S = 14.

Also prints the largest offset of each geometry (px) for a few strides. No weights involved.

Usage: python benchmarks/geometry_figure.py [--out docs/img]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hrdv2.upsample.geometry import make_geometry

P = 14


def patch_centres(kind: str, n_pixels: int, stride: int) -> np.ndarray:
    """For each pixel along one axis, the centre (in image coordinates) of the patch whose feature
    it receives."""
    geo = make_geometry(kind, n_pixels, n_pixels, P, stride)
    cells = geo.cell_of(torch.arange(n_pixels), axis=0).numpy()
    return cells * stride - geo.offset + P / 2.0  # patch i covers padded rows [iS, iS + P)


def offsets(kind: str, n_pixels: int, stride: int) -> np.ndarray:
    """Centre of the pixel's patch minus the pixel's own centre (px); 0 = perfectly placed."""
    return patch_centres(kind, n_pixels, stride) - (np.arange(n_pixels) + 0.5)


def _cell_map(kind: str, h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    geo = make_geometry(kind, h, w, P, stride)
    rows = geo.cell_of(torch.arange(h), axis=0).numpy()
    cols = geo.cell_of(torch.arange(w), axis=1).numpy()
    ids = rows[:, None] * geo.grid[1] + cols[None, :]
    cy = np.arange(geo.grid[0]) * stride - geo.offset + P / 2.0
    cx = np.arange(geo.grid[1]) * stride - geo.offset + P / 2.0
    return ids, cy, cx


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hrdv2.io import atomic_path

    h, w, s = 45, 59, 7
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.25]})
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[:2], ("hrdv2", "published")):
        ids, cy, cx = _cell_map(kind, h, w, s)
        palette = rng.permutation(ids.max() + 1)
        ax.imshow(palette[ids] % 20, cmap="tab20", interpolation="nearest", extent=(0, w, h, 0))
        gy, gx = np.meshgrid(cy, cx, indexing="ij")
        ax.plot(gx.ravel(), gy.ravel(), "k.", ms=4)
        for y, x in ((2, 3), (22, 30), (43, 57), (40, 5)):  # pixel -> centre of the patch it reads
            i, j = divmod(int(ids[y, x]), len(cx))
            ax.annotate("", xy=(cx[j], cy[i]), xytext=(x + 0.5, y + 0.5),
                        arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.5})
            ax.plot(x + 0.5, y + 0.5, "wo", ms=4)
        grid = f"{len(cy)}x{len(cx)}"
        ax.set_title(f"{kind}: grid {grid} at P={P}, S={s}" + (" (padded)" if kind == "hrdv2" else " (stretched)"))
        ax.set_xlim(-P / 2, w + P / 2)
        ax.set_ylim(h + P / 2, -P / 2)
        ax.add_patch(plt.Rectangle((0, 0), w, h, fill=False, ec="k", lw=1))
    ax = axes[2]
    n = 100
    for stride, style in ((4, "-"), (14, "--")):
        for kind, colour in (("hrdv2", "tab:blue"), ("published", "tab:red")):
            ax.plot(np.arange(n), offsets(kind, n, stride), style, color=colour, label=f"{kind}, S={stride}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("pixel row y (image of 100 px)")
    ax.set_ylabel("patch centre - pixel centre (px)")
    ax.set_title("offset from each pixel to the patch it reads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "geometry_cells.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    args = parser.parse_args()
    print(f"{'stride':>6} {'size':>5} {'hrdv2 max |offset|':>19} {'published max |offset|':>23}")
    for stride in (14, 7, 4):
        for n in (98, 100):
            a, b = np.abs(offsets("hrdv2", n, stride)).max(), np.abs(offsets("published", n, stride)).max()
            print(f"{stride:>6} {n:>5} {a:>19.2f} {b:>23.2f}")
    print(f"wrote {draw(args.out)}")


if __name__ == "__main__":
    main()
