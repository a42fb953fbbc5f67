"""Pictures that explain a probe run: features before / after the upsampler, and what the
segmenter predicted after every click.

* ``features/NAME__UPSAMPLER.png``: the image, the backbone's own patch features (nearest
  resize: what every upsampler starts from) and the upsampler's output, each as the first
  three principal components in RGB. When both have the same channels, one PCA (fitted on
  the upsampled map) colours both, so equal colours mean equal features.
* ``clicks/NAME__UPSAMPLER.png``: one panel per click: the predicted mask (cyan), the object
  outline (yellow), the clicks so far (green = positive, red = negative, the newest one
  larger) and the IoU after that click.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrdv2.io import atomic_path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _figure_to(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _display(image: np.ndarray) -> np.ndarray:
    from hrdv2.io import to_rgb01

    return to_rgb01(np.asarray(image))


@dataclass
class Diagnostics:
    """Which samples get pictures: the first ``first_n`` and those named in ``names``."""

    save_features: bool = False
    vis_clicks: bool = False
    first_n: int = 1
    names: tuple[str, ...] = ()
    _before: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def wants(self, index: int, name: str) -> bool:
        return (self.save_features or self.vis_clicks) and (index < self.first_n or name in self.names)

    def _lowres(self, name: str, image: np.ndarray, backbone: Any) -> torch.Tensor | None:
        if backbone is None or not hasattr(backbone, "forward_patches"):
            return None
        if name not in self._before:
            from hrdv2.upsample import upsample_baseline

            self._before = {name: upsample_baseline(image, backbone, mode="nearest", attention=False).features}
        return self._before[name]

    def features(self, out_dir: Path, name: str, upsampler: str, image: np.ndarray, after: torch.Tensor,
                 backbone: Any) -> Path | None:
        if not self.save_features:
            return None
        return save_feature_pictures(out_dir / "features" / f"{_safe(name)}__{_safe(upsampler)}.png", image,
                                     self._lowres(name, image, backbone), after, upsampler)

    def clicks(self, out_dir: Path, name: str, upsampler: str, image: np.ndarray, obj: np.ndarray,
               ignore: np.ndarray, run: Any, masks: list[np.ndarray]) -> Path | None:
        if not self.vis_clicks:
            return None
        return save_click_pictures(out_dir / "clicks" / f"{_safe(name)}__{_safe(upsampler)}.png", image, obj,
                                   run.clicks, masks, run.ious, f"{name} / {upsampler}")


def save_feature_pictures(path: Path, image: np.ndarray, before: torch.Tensor | None, after: torch.Tensor,
                          upsampler: str) -> Path:
    """Image | PCA of the patch features | PCA of the upsampled features, side by side."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from hrdv2.features.pca import PCA

    pca = PCA(3).fit(after)
    panels = [("image", _display(image))]
    if before is not None:
        same = before.shape[0] == after.shape[0]
        panels.append(("backbone patches (before)", (pca if same else PCA(3).fit(before)).to_rgb(before)))
    panels.append((f"{upsampler} (after)", pca.to_rgb(after)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=110)
    for ax, (title, pic) in zip(np.atleast_1d(axes), panels):
        ax.imshow(pic)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return _figure_to(fig, path)


def save_click_pictures(path: Path, image: np.ndarray, obj: np.ndarray, clicks: list, masks: list[np.ndarray],
                        ious: list[float], title: str, columns: int = 5) -> Path:
    """One panel per click: prediction, object outline, clicks, IoU."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(masks)
    rows = max(1, -(-n // columns))
    cols = min(columns, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows + 0.4), dpi=100, squeeze=False)
    rgb = _display(image)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= n:
            continue
        overlay = rgb.copy()
        overlay[masks[k]] = 0.45 * overlay[masks[k]] + 0.55 * np.array([0.0, 0.9, 1.0])
        ax.imshow(overlay)
        ax.contour(obj.astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
        for j, c in enumerate(clicks[: k + 1]):
            ax.scatter([c.x], [c.y], s=36 if j == k else 14, c="lime" if c.positive else "red",
                       edgecolors="black", linewidths=0.5)
        ax.set_title(f"click {k + 1}: IoU {ious[k]:.3f}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _figure_to(fig, path)
