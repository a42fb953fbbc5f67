"""Import skops without dragging in torch (or dask).

Why: ``skops.io`` lists scikit-learn's estimators at import time with
``sklearn.utils.all_estimators``, which walks every scikit-learn package with
``pkgutil.walk_packages``; walking imports each *package* it meets, among them
``sklearn.externals.array_api_compat.torch``, which imports torch (~2-3 s of start-up, most of
a classical `hrdv2 train`), and ``...array_api_compat.dask``, which imports dask.array (~0.4 s).
``walk_packages`` skips a package that raises ImportError, and ``all_estimators`` ignores
``externals`` anyway, so refusing these array libraries to that walk changes no trusted type.
The refusal is an import hook active only while skops is first imported, and it refuses only
imports made from inside ``pkgutil.walk_packages`` in the importing thread: torch imported
anywhere else (another thread, the deep-feature path) is untouched.

The same hook refuses pytest to ``sklearn.utils._testing`` (which ``all_estimators`` imports):
that module only builds test markers from pytest and skips them when pytest is missing, as it is
in a plain (non-test) install. Where pytest is installed, importing it cost ~0.15 s of a
classical ``hrdv2 train`` (of ~2 s); already imported (a test session), it is left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from pathlib import Path
from types import FrameType, ModuleType

# array libraries that scikit-learn's bundled array-API wrappers import when walked
_REFUSED = ("torch", "dask", "cupy", "jax")
# test-only libraries that scikit-learn's test helpers import when present (and do without)
_TEST_ONLY = ("pytest", "_pytest")
_SKLEARN_TESTING = ("sklearn", "utils", "_testing.py")


def _inside_walk(frame: FrameType | None) -> bool:
    while frame is not None:
        code = frame.f_code
        if code.co_name == "walk_packages" and code.co_filename.endswith("pkgutil.py"):
            return True
        frame = frame.f_back
    return False


def _from_sklearn_testing(frame: FrameType | None) -> bool:
    """Whether the innermost non-import-machinery frame is ``sklearn/utils/_testing.py``'s."""
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame is not None and Path(frame.f_code.co_filename).parts[-3:] == _SKLEARN_TESTING


class _NoArrayLibsForPackageWalks(importlib.abc.MetaPathFinder):
    """Refuses torch, dask, ... (and their submodules) to imports made by ``pkgutil.walk_packages``,
    and pytest to scikit-learn's test helpers."""

    def find_spec(self, name, path=None, target=None):  # noqa: D401 - importlib protocol
        top = name.split(".")[0]
        if top in _REFUSED and _inside_walk(sys._getframe(1)):
            raise ImportError(f"{name} is not needed to list scikit-learn estimators")
        if top in _TEST_ONLY and _from_sklearn_testing(sys._getframe(1)):
            raise ImportError(f"{name} is not needed to save or load a model")
        return None


def import_skops_io() -> ModuleType:
    """``skops.io``, imported without torch when torch is not loaded yet."""
    if "skops.io" in sys.modules or "torch" in sys.modules:
        return importlib.import_module("skops.io")
    hook = _NoArrayLibsForPackageWalks()
    sys.meta_path.insert(0, hook)
    try:
        return importlib.import_module("skops.io")
    finally:
        sys.meta_path.remove(hook)
