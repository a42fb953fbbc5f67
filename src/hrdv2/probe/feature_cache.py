"""Frozen (backbone + upsampler) features of a dataset, computed once and kept on disk.

Training a click head re-reads every image's features hundreds of times; computing them once
makes training cost the head only. Entries are float16 ``.npy`` files (half the disk of
float32; ViT and filter features are far inside float16's range), read back memory-mapped, in
a folder named by a hash of the backbone (name, weights), the upsampler (its settings and,
for checkpoint-based upsamplers, its ``cache_key``) and the image size; the file name is the
hash of the (downsized) image's pixels, as in ``hrdv2.features.cache``. A changed image,
backbone, weights file or upsampler therefore misses, and a renamed file still hits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrdv2.datasets.interactive import InteractiveDataset
from hrdv2.features.cache import image_hash
from hrdv2.io import write_npy, write_text_atomic


@dataclass
class CachedSample:
    """One object: its frozen features (float16, (C, H, W), maybe memory-mapped) and masks."""

    name: str
    features: np.ndarray
    obj: np.ndarray
    ignore: np.ndarray
    image: np.ndarray | None = None  # the (downsized) image, kept for pictures

    def features_tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.features, dtype=np.float32))


@dataclass
class LazySample:
    """An object whose features are computed whenever asked (``--no-cache``: nothing is kept)."""

    name: str
    image: np.ndarray
    obj: np.ndarray
    ignore: np.ndarray
    upsampler: Any
    backbone: Any

    def features_tensor(self) -> torch.Tensor:
        from hrdv2.probe.upsamplers import check_features

        return check_features(self.upsampler(self.image, self.backbone), self.image, self.upsampler.name)


def upsampler_key(up: Any) -> str:
    """A stable description of an upsampler's settings (its own ``cache_key()`` if it has one)."""
    own = getattr(up, "cache_key", None)
    if callable(own):
        return f"{type(up).__name__}|{up.name}|{own()}"
    fields = {k: v for k, v in vars(up).items() if not k.startswith("_")} if hasattr(up, "__dict__") else {}
    return f"{type(up).__name__}|{up.name}|{sorted((k, repr(v)) for k, v in fields.items())}"


def feature_set_key(backbone: Any, upsampler: Any, max_side: int | None) -> dict[str, Any]:
    weights = getattr(backbone, "weights_source", "")
    return {"backbone": getattr(backbone, "name", str(backbone)), "weights": str(weights),
            "pretrained": bool(getattr(backbone, "pretrained", False)), "upsampler": upsampler_key(upsampler),
            "max_side": max_side}


def featurise_dataset(
    dataset: InteractiveDataset,
    upsampler: Any,
    backbone: Any,
    max_side: int | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    lazy: bool = False,
) -> list[CachedSample] | list[LazySample]:
    """Features of every object of ``dataset`` (objects that vanish when downsized are left out);
    ``lazy``: only the images and masks are loaded, features are computed on every use."""
    from tqdm.auto import tqdm

    from hrdv2.probe.runner import downsize
    from hrdv2.probe.upsamplers import check_features

    key = feature_set_key(backbone, upsampler, max_side)
    folder = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(cache_dir) / digest
        if not (folder / "key.json").exists():
            write_text_atomic(folder / "key.json", json.dumps(key, indent=2))
    samples = list(dataset)[:limit] if limit else list(dataset)
    out: list[CachedSample] = []
    by_image: dict[str, np.ndarray] = {}  # several objects of one image share its features
    bar = tqdm(samples, desc=f"features {upsampler.name}", unit="obj", disable=not progress)
    for s in bar:
        image, obj, ignore = s.load()
        image, (obj, ignore) = downsize(image, (obj, ignore), max_side)
        if not (obj & ~ignore).any():
            continue
        if lazy:
            out.append(LazySample(s.name, image, np.asarray(obj, bool), np.asarray(ignore, bool), upsampler, backbone))
            continue
        h = image_hash(image)
        feats = by_image.get(h)
        path = None if folder is None else folder / f"{h}.npy"
        if feats is None and path is not None and path.exists():
            try:
                cand = np.load(path, mmap_mode="r")
                feats = cand if cand.shape[-2:] == image.shape[:2] and cand.dtype == np.float16 else None
            except (OSError, ValueError):
                feats = None  # unreadable entry: recompute and overwrite it
        if feats is None:
            feats = check_features(upsampler(image, backbone), image, upsampler.name).numpy().astype(np.float16)
            if path is not None:
                write_npy(path, feats)
                feats = np.load(path, mmap_mode="r")
        by_image[h] = feats
        out.append(CachedSample(s.name, feats, np.asarray(obj, bool), np.asarray(ignore, bool), image))
    return out
