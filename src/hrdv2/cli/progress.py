"""A ``progress(done, total)`` callback that draws a transient tqdm bar, for library calls
(featurising one image or block) that report progress through a callback."""

from __future__ import annotations

import sys


class ProgressBar:
    """A ``progress(done, total)`` callback drawing a transient tqdm bar (featurising one image)."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not sys.stderr.isatty():  # tqdm's disable=None would hide it: skip its import (start-up)
                return
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, leave=False, disable=None)
        self.bar.n = done
        self.bar.refresh()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
