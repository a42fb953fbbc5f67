"""Linear probes of upsampled features: how much semantic information each upsampler keeps.

Two uses (paper Table S1; FeatUp's linear-probe recipe):

* **train**: a linear head (BatchNorm + 1x1 conv, i.e. an affine map per pixel) from features to
  classes, cross-entropy, Adam, learning rate 0.005, one separate probe per upsampler, then
  mIoU and pixel accuracy on a validation set. Training pixels are a random sample of every
  training image's labelled pixels (``pixels_per_image``), so memory grows with images x
  pixels_per_image x channels, not with image size.
* **apply**: a given pretrained head (DINOv2's published linear segmentation heads, whose
  checkpoints hold ``decode_head.bn.*`` and ``decode_head.conv_seg.*``) applied to the features
  of any upsampler. DINOv2 evaluates it on patch features and resizes the logits bilinearly; as
  the head is affine, that equals ``--upsampler bilinear`` here, and ``--upsampler hrdv2``
  applies the same head to HR-Dv2 features instead.

Heads are saved in the same key layout, so a head trained here can be applied later.
Output channel ``c`` of a head is class id ``c + 1`` (hrdv2 label maps keep 0 for "ignore").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hrdv2.checkpoints import load_checkpoint
from hrdv2.errors import ConfigError, ModelFileError
from hrdv2.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy

Featurise = Callable[[np.ndarray], np.ndarray]  # image -> (H, W, C) float32


class LinearHead(nn.Module):
    """BatchNorm2d(C) then Conv2d(C, K, 1): the layout of DINOv2's linear segmentation head."""

    def __init__(self, in_channels: int, n_classes: int):
        super().__init__()
        if in_channels < 1 or n_classes < 1:
            raise ConfigError(f"a linear head needs >= 1 channel and class, got {in_channels}, {n_classes}.")
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv_seg = nn.Conv2d(in_channels, n_classes, 1)

    @property
    def in_channels(self) -> int:
        return int(self.conv_seg.in_channels)

    @property
    def n_classes(self) -> int:
        return int(self.conv_seg.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.bn(x))

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of N feature vectors (N, C): the same map as ``forward`` on (N, C) rows
        (a 1x1 convolution over N 1x1 images is ~100x slower on a CPU than one matrix product)."""
        bn = self.bn
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, self.training, bn.momentum, bn.eps)
        return F.linear(x, self.conv_seg.weight[:, :, 0, 0], self.conv_seg.bias)


def save_head(head: LinearHead, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``{"state_dict": {"decode_head.*": ...}, "meta": {...}}`` atomically (DINOv2/mmseg key layout)."""
    from hrdv2.io import atomic_path

    state = {f"decode_head.{k}": v.detach().cpu() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": dict(meta or {})}, tmp)
    return Path(path)


def load_head(path: str | Path) -> tuple[LinearHead, dict[str, Any]]:
    """A head from a checkpoint with DINOv2's keys (``decode_head.`` prefix optional, ``state_dict``
    wrapper optional). Loaded with ``weights_only=True``: tensors and plain containers only."""
    path = Path(path)
    raw = load_checkpoint(path, "linear-head checkpoint", "Download e.g. dinov2_vits14_voc2012_linear_head.pth "
                          "from DINOv2's model card, or train one with `hrdv2 probe linear`.")
    meta = raw.get("meta", {}) if isinstance(raw, dict) and isinstance(raw.get("meta"), dict) else {}
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a dict of tensors (optionally under 'state_dict').")
    state = {str(k).removeprefix("module.").removeprefix("decode_head."): v for k, v in state.items()}
    need = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "conv_seg.weight", "conv_seg.bias")
    missing = [k for k in need if k not in state or not isinstance(state[k], torch.Tensor)]
    if missing:
        extra = sorted(k for k in state if not k.startswith(("bn.", "conv_seg.")))[:4]
        hint = f" It holds {extra} ...: a multi-scale or DPT head is not a linear head." if extra else ""
        raise ModelFileError(f"{path}: not a linear head, missing {missing} (DINOv2 linear heads have "
                             f"decode_head.bn.* and decode_head.conv_seg.*).{hint}")
    w = state["conv_seg.weight"]
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ModelFileError(f"{path}: conv_seg.weight has shape {tuple(w.shape)}; a linear head has (K, C, 1, 1).")
    head = LinearHead(int(w.shape[1]), int(w.shape[0]))
    state.setdefault("bn.num_batches_tracked", torch.tensor(0))
    keep = {k: state[k] for k in head.state_dict()}
    try:
        head.load_state_dict(keep)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: head tensors do not fit together ({str(exc).splitlines()[-1].strip()}).") from exc
    return head.eval(), meta


@dataclass
class LinearProbeConfig:
    """FeatUp's recipe (Adam, lr 0.005) on sampled pixels; defaults run in seconds on small folders."""

    lr: float = 0.005
    steps: int = 300
    batch_pixels: int = 4096
    pixels_per_image: int = 4096
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.steps < 1 or self.batch_pixels < 1 or self.pixels_per_image < 1:
            raise ConfigError(f"linear probe needs lr > 0 and steps, batch_pixels, pixels_per_image >= 1; got {self}.")


@dataclass
class ProbeScores:
    miou: float
    accuracy: float
    iou: list[float]  # per class 1..K (NaN where a class is absent from prediction and truth)
    confusion: np.ndarray = field(repr=False)
    n_images: int = 0


def downsize(image: np.ndarray, labels: np.ndarray, max_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and labels (nearest) scaled so the longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, labels
    from skimage.transform import resize

    scale = max_side / max(h, w)
    size = (max(4, round(h * scale)), max(4, round(w * scale)))
    small = resize(image, size + image.shape[2:], order=1, preserve_range=True, anti_aliasing=True)
    small = small.round().astype(image.dtype) if image.dtype.kind in "ui" else small.astype(np.float32)
    lab = resize(labels, size, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    return small, lab


def _images_and_labels(dataset: Any, prepare: Callable | None):
    for sample in dataset:
        image, labels = sample.image(), sample.labels()
        if prepare is not None:
            image, labels = prepare(image, labels)
        yield sample.name, image, labels


def sample_pixels(dataset: Any, featurise: Featurise, per_image: int, seed: int = 0,
                  prepare: Callable | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, C) float32 and class ids (N,) of up to ``per_image`` random labelled pixels per image."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    items = _images_and_labels(dataset, prepare)
    for name, image, labels in tqdm(items, total=len(dataset), desc="train features", disable=not progress):
        feats = featurise(image)
        idx = np.flatnonzero(labels.ravel() > 0)
        if idx.size == 0:
            continue
        pick = np.sort(rng.choice(idx, size=min(per_image, idx.size), replace=False))
        xs.append(np.asarray(feats).reshape(-1, feats.shape[-1])[pick].astype(np.float32))
        ys.append(labels.ravel()[pick].astype(np.int64))
    if not xs:
        raise ConfigError("the training set has no labelled pixels (all label maps are 0 = ignore).")
    return np.concatenate(xs), np.concatenate(ys)


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, config: LinearProbeConfig = LinearProbeConfig(),
               progress: bool = True) -> LinearHead:
    """Fit a :class:`LinearHead` to features ``x`` (N, C) and class ids ``y`` (N,) in 1..K."""
    from tqdm.auto import tqdm

    if y.min(initial=1) < 1 or y.max(initial=0) > n_classes:
        raise ConfigError(f"training labels span {y.min()}..{y.max()} but the probe has classes 1..{n_classes}.")
    torch.manual_seed(config.seed)
    dev = torch.device(config.device)
    head = LinearHead(x.shape[1], n_classes).to(dev).train()
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(y - 1).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(range(config.steps), desc="linear probe", disable=not progress)
    for _ in bar:
        batch = torch.randint(0, len(xt), (min(config.batch_pixels, len(xt)),), generator=gen).to(dev)
        loss = loss_fn(head.pixels(xt[batch]), yt[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return head.cpu().eval()


@torch.inference_mode()
def predict(head: LinearHead, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(H, W) class ids 1..K of (H, W, C) features."""
    h, w, c = features.shape
    if c != head.in_channels:
        raise ConfigError(f"the head expects {head.in_channels} feature channels but the features have {c}; use the "
                          "backbone the head was trained for (e.g. 384 channels: dinov2_vits14).")
    flat = np.asarray(features).reshape(-1, c)
    out = np.empty(h * w, np.int64)
    for i in range(0, h * w, chunk):
        out[i:i + chunk] = head.pixels(torch.from_numpy(np.ascontiguousarray(flat[i:i + chunk], np.float32))).argmax(1)
    dtype = np.uint8 if head.n_classes < 255 else np.uint16
    return (out + 1).reshape(h, w).astype(dtype)


def evaluate(head: LinearHead, dataset: Any, featurise: Featurise, prepare: Callable | None = None,
             progress: bool = True, keep: int = 0) -> tuple[ProbeScores, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """mIoU / accuracy of ``head`` over ``dataset`` (summed confusion), and the first ``keep``
    (image, truth, prediction) triples for pictures."""
    from tqdm.auto import tqdm

    k = head.n_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    kept = []
    n = 0
    for name, image, labels in tqdm(_images_and_labels(dataset, prepare), total=len(dataset), desc="val",
                                    disable=not progress):
        if labels.max(initial=0) > k:
            raise ConfigError(f"{name}: label id {int(labels.max())} exceeds the head's {k} classes.")
        pred = predict(head, featurise(image))
        cm += confusion_matrix(pred, labels, k)
        n += 1
        if len(kept) < keep:
            kept.append((image, labels, pred))
    ious = iou_per_class(cm)
    return ProbeScores(mean_iou(cm), pixel_accuracy(cm), [float(v) for v in ious], cm, n), kept


def n_classes_of(*datasets: Any) -> int:
    """Stated class count of the datasets, else the largest label id found in them."""
    stated = [d.n_classes for d in datasets if getattr(d, "n_classes", None)]
    if stated:
        return max(stated)
    top = 0
    for d in datasets:
        for s in d:
            top = max(top, int(s.labels().max(initial=0)))
    if top < 1:
        raise ConfigError("the label maps hold no class ids (only 0 = ignore); expected 1..K.")
    return top


def label_colours(labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 picture of class ids in PASCAL VOC's palette (id 1 = VOC background, black);
    0 (ignore) in VOC's boundary cream."""
    ids = np.arange(256)
    pal = np.zeros((256, 3), np.int64)
    for bit in range(8):  # VOC's bit-interleaved palette
        for ch in range(3):
            pal[:, ch] |= ((ids >> (3 * bit + ch)) & 1) << (7 - bit)
    table = np.zeros((65536, 3), np.uint8)
    table[0] = (224, 224, 192)
    table[1:257] = pal
    return table[np.asarray(labels, np.int64)]


def prediction_picture(kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """One row per kept sample: image | ground truth | prediction (all resized to the first row's width;
    images under 128 px enlarged by a whole factor)."""
    from skimage.transform import resize

    from hrdv2.io import to_rgb01

    rows = []
    width = None
    zoom = max(1, -(-128 // max(1, min(im.shape[0] for im, _, _ in kept)))) if kept else 1  # small images enlarged
    for image, truth, pred in kept:
        tiles = [(to_rgb01(image) * 255).round().astype(np.uint8), label_colours(truth), label_colours(pred)]
        tiles = [np.repeat(np.repeat(t, zoom, 0), zoom, 1) for t in tiles]
        row = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
        if width is None:
            width = row.shape[1]
        elif row.shape[1] != width:
            h = max(4, round(row.shape[0] * width / row.shape[1]))
            row = resize(row, (h, width), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
        rows.append(np.pad(row, ((0, 4), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(rows, axis=0)
