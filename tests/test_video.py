"""Videos and time series: per-frame features, one PCA across frames (a static object keeps its
colour), PCA videos with the right frame count, and frame-by-frame apply / unsupervised."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli

T, SIZE = 5, 84
OBJ = (slice(28, 56), slice(14, 42))  # the static object: 2x2 patches of 14 px, patch-aligned
INNER = (slice(32, 52), slice(18, 38))  # its interior, away from the edges features blur across
BACKGROUND = (slice(0, 14), slice(0, SIZE))


def _frames() -> np.ndarray:
    """(T, H, W, 3) uint8: a static bright square on a drifting sine grating plus fresh noise per frame."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = []
    for t in range(T):
        f = 0.35 + 0.15 * np.sin((xx + 6 * t) / 5.0) + 0.08 * rng.standard_normal((SIZE, SIZE))
        f[OBJ] = 0.9
        out.append(np.repeat((np.clip(f, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1))
    return np.stack(out)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    iio.imwrite(path, _frames(), plugin="pyav", codec="libx264", fps=5)
    return path


def _colour_spread(video: np.ndarray) -> tuple[float, float]:
    """(largest deviation of the object's mean colour from its mean over frames, distance between
    the object's and the background's mean colours), in 8-bit levels."""
    obj = video[(slice(None), *INNER)].reshape(len(video), -1, 3).astype(float).mean(1)
    bg = video[(slice(None), *BACKGROUND)].reshape(len(video), -1, 3).astype(float).mean(1)
    return float(np.abs(obj - obj.mean(0)).max()), float(np.linalg.norm(obj.mean(0) - bg.mean(0)))


def test_features_of_a_video_one_pca_over_frames(clip, tmp_path):
    import zarr

    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["features", str(clip), "--weights", "random", "--shifts", "", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"{SIZE}x{SIZE} x {T} frames" in res.output and "random weights, UNTRAINED" in res.output
    feats = zarr.open_array(str(out / "clip_features.zarr"), mode="r")
    assert feats.shape == (T, 384, SIZE, SIZE) and feats.dtype == np.float32
    video = iio.imread(out / "clip_pca.mp4", plugin="pyav", index=None)
    assert video.shape == (T, SIZE, SIZE, 3)
    assert iio.immeta(out / "clip_pca.mp4", plugin="pyav")["fps"] == pytest.approx(5.0)  # the input's rate
    # Tolerance: the object's pixels are identical in every frame, so with one PCA its colour changes only
    # through context (ViT attention, filters reaching the moving background) and H.264 rounding, a few
    # levels on flat areas; 8 levels (3 % of the range) is far below the object-background contrast,
    # which must stay large so that "constant colour" is not met by a washed-out picture.
    spread, contrast = _colour_spread(video)
    assert spread < 8 and contrast > 60, (spread, contrast)


def test_frame_folder_and_timelapse_tiff_with_pca_video(tmp_path):
    frames = _frames()[..., 0]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"t{i:03d}.png")
    import tifffile

    tifffile.imwrite(tmp_path / "timelapse.tif", frames, photometric="minisblack")
    from hrdv2.engine import FeatureEngine
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.timeseries import featurise_source, split_series

    series, plain = split_series([str(folder), str(tmp_path / "timelapse.tif"), "other.png"], pca_video=True)
    assert [n for n, _ in series] == ["frames", "timelapse"] and plain == ("other.png",)
    assert split_series([str(folder)], pca_video=None)[0] == []  # a plain folder is not a series by default
    engine = FeatureEngine(FeatureConfig(kind="classical", sigmas=(1, 2, 4)))
    for name, source in series:
        res, line = featurise_source(engine, name, source, tmp_path / "out", video_format="gif", fps=4)
        assert f"x {T} frames" in line and "classical" in line
        video = iio.imread(res.video_path, plugin="pillow", index=None)[..., :3]
        assert video.shape == (T, SIZE, SIZE, 3)
        spread, contrast = _colour_spread(video)  # gif: a 256-colour palette, so a little more rounding
        assert spread < 10 and contrast > 60, (name, spread, contrast)
        assert res.features_path.name == f"{name}_features.zarr"


def test_apply_and_unsupervised_run_frame_by_frame(clip, tmp_path):
    from hrdv2.io import read_stack
    from hrdv2.segmentation import Segmenter

    pages = read_stack(clip)  # a video reads as a stack of frames (RGB with equal channels -> grey)
    assert len(pages) == T and pages[0].shape == (SIZE, SIZE)
    scribble = np.zeros((SIZE, SIZE), np.uint8)
    scribble[2:6, 2:80] = 1
    scribble[38:44, 24:34] = 2
    seg = Segmenter("classical", classifier="logistic").fit([pages[0]], [scribble])
    model = seg.save(tmp_path / "m.skops")
    res = CliRunner().invoke(cli, ["apply", str(model), str(clip), "--out", str(tmp_path / "seg")])
    assert res.exit_code == 0, res.output
    labels = read_stack(tmp_path / "seg" / "clip_labels.tif")
    assert len(labels) == T
    for lab in labels:  # one model, every frame: the static object is class 2 throughout
        assert (lab[INNER] == 2).mean() > 0.95

    res = CliRunner().invoke(cli, ["unsupervised", str(clip), "--preset", "fast", "--weights", "random", "--k", "4",
                                   "--pca", "0", "--out", str(tmp_path / "uns")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "uns").glob("*_labels.png")) == [f"clip_p{i:03d}_labels.png"
                                                                                for i in range(T)]


def test_a_broken_video_is_one_line(tmp_path):
    from hrdv2.errors import ImageReadError
    from hrdv2.io import read_stack
    from hrdv2.timeseries import iter_frames

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 20)
    for read in (read_stack, iter_frames):
        with pytest.raises(ImageReadError, match="broken.mp4: not a readable video"):
            read(bad)
    res = CliRunner().invoke(cli, ["evaluate", str(bad), "--gt", str(bad)])  # any command reading it: one line
    assert res.exit_code == 2 and "broken.mp4" in res.output and "Traceback" not in res.output, res.output
    res = CliRunner().invoke(cli, ["features", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "missing.mp4: no such file" in res.output, res.output  # before any model load
