"""On-disk feature cache: retraining after new strokes never recomputes features.

Entries are keyed by a hash of the image's pixels (bytes, shape and dtype) and the feature
config's :meth:`~hrdv2.features.sets.FeatureConfig.key`, so a changed image or config misses
and a renamed file still hits. Files are written atomically (a killed run leaves no partial
entry) and read back memory-mapped.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from hrdv2.features.sets import FeatureConfig
from hrdv2.io import write_npy


def image_hash(image: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:24]


class FeatureCache:
    """``FeatureCache(directory).get_or_compute(image, config, compute)`` -> (H, W, F) float32."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def path_for(self, image: np.ndarray, config: FeatureConfig) -> Path:
        return self.directory / config.key() / f"{image_hash(image)}.npy"

    def get_or_compute(self, image: np.ndarray, config: FeatureConfig, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached features of ``image`` under ``config``, else ``compute()`` stored for next time
        (the cache never featurises by itself: :class:`hrdv2.engine.FeatureEngine` does)."""
        path = self.path_for(image, config)
        if path.exists():
            try:
                arr = np.load(path, mmap_mode="r")
                if arr.shape[:2] == image.shape[:2] and arr.dtype == np.float32:
                    self.hits += 1
                    return arr
            except (OSError, ValueError):
                pass  # unreadable entry: recompute and overwrite it
        self.misses += 1
        feats = compute()
        write_npy(path, feats)
        return feats

    def clear(self) -> int:
        """Delete every entry; returns how many files were removed."""
        n = 0
        if self.directory.exists():
            for p in self.directory.glob("*/*.npy"):
                p.unlink()
                n += 1
        return n
