"""The classical path (train, save, load, apply) never imports torch or timm: they cost seconds of
start-up and classical features do not need them. Run in a fresh interpreter, since this test
session has imported torch long ago."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from hrdv2.io import write_image

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from hrdv2.cli.main import cli
d = sys.argv[1]
args = ["train", "--out", d + "/m.skops"]
for i in range(2):
    args += ["--image", f"{d}/im{i}.png", "--scribble", f"{d}/s{i}.png"]
cli(args, standalone_mode=False)
after_train = [m for m in ("tqdm", "tifffile", "imageio", "matplotlib", "dask", "torch", "timm")
               if m in sys.modules]
cli(["apply", d + "/m.skops", d + "/im0.png", "--out", d + "/out"], standalone_mode=False)
from hrdv2.segmentation import Segmenter
Segmenter.load(d + "/m.skops")
print(json.dumps({"torch": "torch" in sys.modules, "timm": "timm" in sys.modules,
                  "seconds": time.perf_counter() - t0, "after_train": after_train,
                  "hrdv2_modules": sorted(m for m in sys.modules if m.startswith("hrdv2."))}))
"""


def test_classical_train_and_apply_never_import_torch(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        img = (rng.random((128, 128)) * 80).astype(np.uint8)
        img[:, 64:] += 120  # two phases, so the model has something to learn
        scr = np.zeros((128, 128), np.uint8)
        scr[20:24, 10:50], scr[80:84, 80:120] = 1, 2
        write_image(tmp_path / f"im{i}.png", img)
        write_image(tmp_path / f"s{i}.png", scr)
    res = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["torch"] is False and out["timm"] is False, out
    # train reads PNGs with PIL only, and draws no progress bar off a terminal
    assert out["after_train"] == [], out
    # nothing of the deep path, the app or the other workflows
    for unneeded in ("hrdv2.backbones", "hrdv2.upsample", "hrdv2.app", "hrdv2.unsupervised", "hrdv2.probe"):
        assert not any(m == unneeded or m.startswith(unneeded + ".") for m in out["hrdv2_modules"]), out
    assert (tmp_path / "out" / "im0_labels.png").is_file()


def test_skops_import_hook_refuses_only_package_walks(tmp_path, monkeypatch):
    """The hook that keeps torch out of skops' estimator listing refuses torch only to imports
    made inside pkgutil.walk_packages; anywhere else (e.g. the deep-feature path) it stays out."""
    import builtins
    import pkgutil

    from hrdv2.segmentation.lazy_skops import _NoArrayLibsForPackageWalks

    assert _NoArrayLibsForPackageWalks().find_spec("torch") is None  # a direct import: not refused
    inner = tmp_path / "walkpkg" / "inner"
    inner.mkdir(parents=True)
    (tmp_path / "walkpkg" / "__init__.py").write_text("")
    (inner / "__init__.py").write_text(
        "import builtins\n"
        "from hrdv2.segmentation.lazy_skops import _NoArrayLibsForPackageWalks\n"
        "try:\n"
        "    _NoArrayLibsForPackageWalks().find_spec('torch.nn')\n"
        "    builtins._hrdv2_walk_probe = 'allowed'\n"
        "except ImportError:\n"
        "    builtins._hrdv2_walk_probe = 'refused'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        list(pkgutil.walk_packages([str(tmp_path)]))  # imports walkpkg.inner, as sklearn's walk does
        assert builtins._hrdv2_walk_probe == "refused"
    finally:
        builtins.__dict__.pop("_hrdv2_walk_probe", None)


_SKOPS_CHILD = r"""
import json, sys
from hrdv2.segmentation.lazy_skops import import_skops_io
sio = import_skops_io()
without = "pytest" in sys.modules or "_pytest" in sys.modules
import pytest  # the test helpers still import normally afterwards
print(json.dumps({"pytest_during_skops": without, "pytest_after": "pytest" in sys.modules,
                  "trusted": sorted(sio._trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES)}))
"""


def test_skops_is_imported_without_pytest_and_trusts_the_same_estimators():
    """pytest (installed here) is refused only to scikit-learn's test helpers while skops is first
    imported, and skops trusts exactly the estimators it trusts with pytest loaded."""
    res = subprocess.run([sys.executable, "-c", _SKOPS_CHILD], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["pytest_during_skops"] is False and out["pytest_after"] is True
    import skops.io  # this process: pytest already imported, so nothing was refused

    assert out["trusted"] == sorted(skops.io._trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES)
    assert len(out["trusted"]) > 100


def test_console_script_freezes_gc_only_at_its_end():
    """``hrdv2`` (``main``) runs the command, then freezes the collector for a fast exit; the
    in-process ``cli`` leaves gc alone."""
    child = ("import atexit, gc, sys\n"
             "from hrdv2.cli.main import cli, main\n"
             "try:\n    cli(['--version'])\nexcept SystemExit:\n    pass\n"
             "print('cli', gc.get_freeze_count())\n"
             "atexit.register(lambda: print('main', gc.get_freeze_count() > 0))\n"
             "sys.argv = ['hrdv2', '--version']\nmain()\n")
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert "cli 0" in lines and lines[-1] == "main True", lines
    assert any("version" in ln for ln in lines)
