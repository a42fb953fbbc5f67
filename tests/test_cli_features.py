"""`hrdv2 features` end to end on a real micrograph, in a fresh process."""

import subprocess
import sys

import numpy as np
from PIL import Image


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "hrdv2.cli.main", *args], capture_output=True, text=True, cwd=cwd)


def test_features_cli_writes_features_and_pictures(shared_data, tmp_path):
    src = shared_data / "superalloy" / "isb_3.png"  # 75x75 grey
    res = run_cli("features", str(src), "--weights", "random", "--stride", "7", "--shifts", "1", "--flips",
                  "--out", str(tmp_path), "--batch-size", "8")
    assert res.returncode == 0, res.stderr
    feats = np.load(tmp_path / "isb_3_features.npy")
    assert feats.shape == (384, 75, 75) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.asarray(Image.open(tmp_path / "isb_3_pca.png")).shape == (75, 75, 3)
    assert np.asarray(Image.open(tmp_path / "isb_3_attention.png")).shape == (75, 75, 3)
    assert "36 transforms" in res.stdout and "UNTRAINED" in res.stdout and "grid 11x11" in res.stdout
    assert "peak RSS" in res.stdout


def test_features_cli_zarr_output(shared_data, tmp_path):
    import zarr

    res = run_cli("features", str(shared_data / "superalloy" / "isb_3.png"), "--weights", "random", "--shifts", "",
                  "--format", "zarr", "--no-pca-png", "--no-attention-png", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert zarr.open_array(str(tmp_path / "isb_3_features.zarr"), mode="r").shape == (384, 75, 75)


def test_features_cli_bad_input_is_a_message_not_a_traceback(tmp_path):
    res = run_cli("features", str(tmp_path / "missing.png"), "--weights", "random")
    assert res.returncode == 2 and "missing.png: no such file" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("features", "--backbone", "dinov9", "--weights", "random", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown backbone 'dinov9'" in res.stderr
    res = run_cli("features", "--weights", "random", "--shifts", "7", "--out", str(tmp_path))
    assert res.returncode == 2 and "half the patch size" in res.stderr
    res = run_cli("features", "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_without_weights_the_cli_explains_and_falls_back_to_classical(shared_data, tmp_path, monkeypatch):
    """Offline (download replaced by a failing one: no network touched), nothing cached, no --weights."""
    import torch
    from click.testing import CliRunner

    from hrdv2.cli.main import cli

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, progress=True):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    src = str(shared_data / "superalloy" / "isb_3.png")
    res = CliRunner().invoke(cli, ["features", src, "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "--weights /path/to/dinov2_vits14_pretrain.pth" in res.output
    assert "falling back to classical features" in res.output
    assert np.asarray(Image.open(tmp_path / "out" / "isb_3_classical_pca.png")).shape == (75, 75, 3)
    res = CliRunner().invoke(cli, ["features", src, "--no-fallback", "--out", str(tmp_path / "out2")])
    assert res.exit_code == 2 and "could not download pretrained weights" in res.output
