"""Training a click head on frozen features with simulated clicks (RITM / SimpleClick style).

Per step, for a batch of objects:

1. **Initial clicks** (RITM's random point sampling): 1..``max_positive`` positive points
   inside the object (drawn with probability proportional to the distance from its boundary,
   so interior points are likelier) and 0..``max_negative`` negative points in the background
   (half of them in a band around the object, where mistakes happen).
2. **Iterative clicks** (RITM's iterative training): 0..``max_iter_clicks`` times, the head
   predicts without gradients, and one more click is added per object at the largest error
   region of that prediction (``hrdv2.probe.clicks.next_click``, the evaluation's own rule);
   the prediction becomes the "previous mask" input.
3. **Loss** on the final prediction: the normalised focal loss (NFL, Sofiiuk et al., RITM),
   ``NFL = sum_p beta_p * (-log p_t) / sum_p beta_p`` with ``beta_p = (1 - p_t)^gamma``
   (gamma = 2; the normaliser is not differentiated), per image over non-ignored pixels,
   averaged over the batch. ``p_t`` is the predicted probability of the true label: unlike
   the focal loss, the total weight does not shrink as the head improves. Because of that
   normalisation NFL's *value* falls slowly even while the masks get much better, so every
   step also records the plain per-pixel binary cross-entropy (``bce``, not trained on) as
   the readable progress measure; the progress bar shows both.

Objects in a batch are padded to the largest one; padding and ignore pixels carry no loss.
AdamW; the step, losses, optimiser and generator state go into every checkpoint, so
``resume`` continues exactly where a run stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from hrdv2.errors import ConfigError
from hrdv2.probe.clicks import Click, next_click
from hrdv2.probe.feature_cache import CachedSample
from hrdv2.probe.head import ClickHead, encode_clicks, normalise_features, save_head


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_positive: int = 3
    max_negative: int = 3
    max_iter_clicks: int = 3
    gamma: float = 2.0
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"need steps >= 1, batch_size >= 1, lr > 0, checkpoint_every >= 1; got {self.steps}, "
                              f"{self.batch_size}, {self.lr}, {self.checkpoint_every}.")
        if self.max_positive < 1 or self.max_negative < 0 or self.max_iter_clicks < 0 or self.gamma < 0:
            raise ConfigError("need max_positive >= 1 and max_negative, max_iter_clicks, gamma >= 0.")


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # NFL, the training loss
    bce: list[float] = field(default_factory=list)  # monitor only
    steps_done: int = 0
    checkpoint: Path | None = None


def normalized_focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                          gamma: float = 2.0) -> torch.Tensor:
    """NFL of (B, H, W) logits against 0/1 targets over ``valid`` pixels (see module docstring)."""
    valid = valid.float()
    log_pt = torch.where(target > 0.5, F.logsigmoid(logits), F.logsigmoid(-logits))
    beta = (1 - log_pt.exp()).clamp_min(0) ** gamma * valid
    norm = beta.sum(dim=(-2, -1), keepdim=True).detach().clamp_min(1e-8)
    return (-(beta / norm) * log_pt).sum(dim=(-2, -1)).mean()


def initial_clicks(gt: np.ndarray, ignore: np.ndarray, rng: np.random.Generator,
                   max_positive: int = 3, max_negative: int = 3) -> list[Click]:
    """Random positive points in the object and negative points in the background (step 1)."""
    inside = gt & ~ignore
    dist = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1].ravel()
    flat = np.flatnonzero(inside)
    w = dist[flat] / dist[flat].sum()
    n_pos = int(rng.integers(1, max_positive + 1))
    picks = rng.choice(flat, size=min(n_pos, flat.size), replace=False, p=w)
    w_img = gt.shape[1]
    clicks = [Click(int(i // w_img), int(i % w_img), True) for i in picks]
    background = ~gt & ~ignore
    n_neg = int(rng.integers(0, max_negative + 1))
    if n_neg and background.any():
        band_width = max(3.0, 0.25 * math.sqrt(inside.sum()))
        near = background & (ndimage.distance_transform_edt(~gt) <= band_width)
        for _ in range(n_neg):
            pool = np.flatnonzero(near if near.any() and rng.random() < 0.5 else background)
            i = int(rng.choice(pool))
            clicks.append(Click(i // w_img, i % w_img, False))
    return clicks


def _pad(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]))


class _Batch:
    """Padded features, targets and valid masks of a batch; click maps are rebuilt per iteration."""

    def __init__(self, samples: Sequence[CachedSample], device: torch.device):
        self.samples = samples
        self.h = max(s.obj.shape[0] for s in samples)
        self.w = max(s.obj.shape[1] for s in samples)
        self.device = device
        self.features = torch.stack([_pad(normalise_features(s.features_tensor()), self.h, self.w)
                                     for s in samples]).to(device)
        self.target = torch.stack([_pad(torch.from_numpy(s.obj.astype(np.float32)), self.h, self.w)
                                   for s in samples]).to(device)
        self.valid = torch.stack([_pad(torch.from_numpy((~s.ignore).astype(np.float32)), self.h, self.w)
                                  for s in samples]).to(device)

    def maps(self, clicks: list[list[Click]], prev: list[np.ndarray | None], radius: int) -> torch.Tensor:
        return torch.stack([
            _pad(encode_clicks(c, p, s.obj.shape, radius), self.h, self.w) for s, c, p in zip(self.samples, clicks, prev)
        ]).to(self.device)

    def crop(self, logits: torch.Tensor) -> list[np.ndarray]:
        """Boolean predictions cropped back to each object's own size."""
        out = (logits[:, 0] > 0).cpu().numpy()
        return [out[i, : s.obj.shape[0], : s.obj.shape[1]] for i, s in enumerate(self.samples)]


def held_out_miou(head: ClickHead, samples: Sequence[CachedSample], max_clicks: int = 5, seed: int = 0) -> float:
    """Mean over objects of the mean IoU over clicks 1..max_clicks (the evaluation protocol)."""
    from hrdv2.probe.clicks import simulate
    from hrdv2.probe.head import HeadSegmenter

    if not samples:
        raise ConfigError("no held-out objects to evaluate.")
    head.eval()
    runs = [simulate(s.obj, HeadSegmenter(head, s.features_tensor()).as_predictor(), s.ignore, max_clicks, None, seed)
            for s in samples]
    return float(np.mean([np.mean(r.ious + [r.ious[-1]] * (max_clicks - len(r.ious))) for r in runs]))


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def _rng_from(state: str) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(state)
    return rng


def train_click_head(
    head: ClickHead,
    samples: Sequence[CachedSample],
    config: TrainConfig | None = None,
    checkpoint: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``head`` in place; write ``checkpoint`` every ``checkpoint_every`` steps and at the end.

    ``resume_state`` is the ``train_state`` of a checkpoint (``load_head(...).train_state``):
    training continues from its step with its optimiser and generator state.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if not samples:
        raise ConfigError("no training objects: the dataset is empty, or every object vanished at --max-side.")
    dev = torch.device(config.device)
    head.to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = TrainResult()
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    if resume_state:
        opt.load_state_dict(resume_state["optimizer"])
        rng = _rng_from(resume_state["rng"])
        result.losses = [float(v) for v in resume_state.get("losses", [])]
        result.bce = [float(v) for v in resume_state.get("bce", [])]
        result.steps_done = int(resume_state["step"])
    radius = head.config.radius

    def save() -> None:
        if checkpoint is None:
            return
        state = {"step": result.steps_done, "losses": list(result.losses), "bce": list(result.bce), "optimizer": opt.state_dict(),
                 "rng": _rng_state(rng), "config": json.dumps(asdict(config))}
        result.checkpoint = save_head(checkpoint, head, meta, state)

    bar = tqdm(total=config.steps, initial=min(result.steps_done, config.steps), desc="train head", unit="step",
               disable=not progress)
    ema = None
    while result.steps_done < config.steps:
        head.train()
        idx = rng.choice(len(samples), size=min(config.batch_size, len(samples)), replace=False)
        batch = _Batch([samples[int(i)] for i in idx], dev)
        clicks = [initial_clicks(s.obj, s.ignore, rng, config.max_positive, config.max_negative) for s in batch.samples]
        prev: list[np.ndarray | None] = [None] * len(idx)
        n_iter = int(rng.integers(0, config.max_iter_clicks + 1))
        with torch.no_grad():  # the simulated user reacts to the head's own predictions
            for _ in range(n_iter):
                pred = batch.crop(head(batch.features, batch.maps(clicks, prev, radius)))
                for i, s in enumerate(batch.samples):
                    c = next_click(s.obj, pred[i], s.ignore, rng)
                    if c is not None:
                        clicks[i].append(c)
                prev = pred
        logits = head(batch.features, batch.maps(clicks, prev, radius))[:, 0]
        loss = normalized_focal_loss(logits, batch.target, batch.valid, config.gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            bce = (F.binary_cross_entropy_with_logits(logits, batch.target, reduction="none") * batch.valid).sum(
                dim=(-2, -1)) / batch.valid.sum(dim=(-2, -1)).clamp_min(1)
        value = np.array([float(loss.detach()), float(bce.mean())])
        result.losses.append(float(value[0]))
        result.bce.append(float(value[1]))
        result.steps_done += 1
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        bar.set_postfix(nfl=f"{ema[0]:.4f}", bce=f"{ema[1]:.4f}")
        bar.update(1)
        if result.steps_done % config.checkpoint_every == 0 or result.steps_done == config.steps:
            save()
    bar.close()
    head.eval()
    return result
