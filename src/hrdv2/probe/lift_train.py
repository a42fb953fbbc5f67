"""Train LiFT on unlabelled images with its self-supervised objective.

For a random square crop x (``image_size`` px, a multiple of the patch size, random flip):
the input is the frozen backbone's patch features of x (h x w), the target its features of
x resized to twice the size (2h x 2w), and the loss 1 - cosine similarity between
LiFT(features(x), x) and that target, averaged over positions: LiFT learns to predict what
the ViT would see at twice the resolution (the "cosine" objective of the LiFT paper).

Outputs, each written atomically: ``OUT/lift.pth`` (a plain state dict in the published
LiFT layout: it loads wherever a released LiFT checkpoint does, e.g. ``--upsampler-weights
lift=OUT/lift.pth``) and ``OUT/lift_train_state.pt`` (step, losses, optimiser and generator
state, for ``resume``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import ConfigError
from hrdv2.io import atomic_path

WEIGHTS_FILE = "lift.pth"
STATE_FILE = "lift_train_state.pt"


@dataclass
class LiftTrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    image_size: int = 224
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"need steps >= 1, batch_size >= 1, lr > 0, checkpoint_every >= 1; got {self.steps}, "
                              f"{self.batch_size}, {self.lr}, {self.checkpoint_every}.")


@dataclass
class LiftTrainResult:
    losses: list[float] = field(default_factory=list)
    steps_done: int = 0
    weights: Path | None = None


def _load_images(paths: Sequence[Path], size: int) -> list[torch.Tensor]:
    """(3, H, W) [0, 1] tensors with the short side resized to ``size`` (crops come from these)."""
    from PIL import Image

    from hrdv2.io import read_image, to_rgb01

    out = []
    for p in paths:
        rgb = (to_rgb01(read_image(p)) * 255).round().astype(np.uint8)
        h, w = rgb.shape[:2]
        scale = size / min(h, w)
        im = Image.fromarray(rgb).resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1))
    return out


def _batch(images: list[torch.Tensor], size: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    from hrdv2.upsample import image_to_tensor

    crops = []
    for i in rng.choice(len(images), size=n, replace=len(images) < n):
        img = images[int(i)]
        y = int(rng.integers(0, img.shape[1] - size + 1))
        x = int(rng.integers(0, img.shape[2] - size + 1))
        crop = img[:, y : y + size, x : x + size]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        crops.append(image_to_tensor(crop))
    return torch.cat(crops)


def train_lift(backbone: Any, image_paths: Sequence[Path], out_dir: str | Path, config: LiftTrainConfig | None = None,
               resume: bool = False, progress: bool = True) -> LiftTrainResult:
    """Train a LiFT for ``backbone`` on ``image_paths``; see the module docstring for the files."""
    from tqdm.auto import tqdm

    from hrdv2.probe.lift import LiFT, load_lift_state

    config = config or LiftTrainConfig()
    P = backbone.patch_size
    if config.image_size % P or config.image_size < 2 * P:
        raise ConfigError(f"image_size must be a multiple of the patch size {P} and at least {2 * P}, "
                          f"got {config.image_size}.")
    if not image_paths:
        raise ConfigError("no training images: give a folder with PNG/JPEG/TIFF images.")
    out_dir = Path(out_dir)
    dev = backbone.device
    torch.manual_seed(config.seed)
    model = LiFT(backbone.embed_dim).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    result = LiftTrainResult()
    if resume and (out_dir / STATE_FILE).exists():
        load_lift_state(model, out_dir / WEIGHTS_FILE)
        state = load_checkpoint(out_dir / STATE_FILE, "LiFT training state",
                                "Delete it to start afresh, or train without --resume.")
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = json.loads(state["rng"])
        result.losses, result.steps_done = [float(v) for v in state["losses"]], int(state["step"])
    images = _load_images(image_paths, config.image_size)

    def save() -> None:
        with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        with atomic_path(out_dir / STATE_FILE) as tmp:
            torch.save({"step": result.steps_done, "losses": result.losses, "optimizer": opt.state_dict(),
                        "rng": json.dumps(rng.bit_generator.state), "config": json.dumps(asdict(config)),
                        "backbone": backbone.describe()}, tmp)
        result.weights = out_dir / WEIGHTS_FILE

    bar = tqdm(total=config.steps, initial=min(result.steps_done, config.steps), desc="train LiFT", unit="step",
               disable=not progress)
    model.train()
    while result.steps_done < config.steps:
        x = _batch(images, config.image_size, config.batch_size, rng).to(dev)
        lowres = backbone.forward_patches(x, P, with_attention=False)[0].clone()  # frozen: no graph
        x2 = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        target = backbone.forward_patches(x2, P, with_attention=False)[0].clone()
        pred = model(lowres, x)
        if pred.shape[-2:] != target.shape[-2:]:
            target = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False)
        loss = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        result.losses.append(float(loss.detach()))
        result.steps_done += 1
        bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
        bar.update(1)
        if result.steps_done % config.checkpoint_every == 0 or result.steps_done == config.steps:
            save()
    bar.close()
    model.eval()
    return result
