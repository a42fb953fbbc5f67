"""Videos and time series: read frames (mp4/avi/mov/mkv/webm/gif through imageio's PyAV plugin,
a folder of frame images, a multi-page timelapse TIFF), write videos (mp4 via H.264, gif), and
featurise a whole series with ONE PCA fitted across all frames, so a feature keeps its colour
from frame to frame (a PCA per frame may flip or rotate components between frames).

``featurise_series`` makes two passes: it featurises each frame once (through the feature
engine), writes the features to ``NAME_features.zarr`` ((T, C, H, W) float32) and keeps a seeded
sample of pixels of every frame; the PCA is fitted on those samples; the second pass reads the
features back frame by frame and writes ``NAME_pca.mp4`` (or ``.gif``). Memory holds one frame's
features at a time, plus the samples.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from hrdv2.errors import ConfigError, ImageReadError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif")
VIDEO_FORMATS = ("mp4", "gif")
SAMPLES_PER_FRAME = 4000  # pixels per frame the shared PCA is fitted on (20 frames: 80k rows)


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_info(path: str | os.PathLike) -> tuple[tuple[int, ...], float]:
    """((T, H, W, 3), frames per second) from the container, without decoding the frames."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such video file. Check the path.")
    try:
        props = iio.improps(path, plugin="pyav")
        meta = iio.immeta(path, plugin="pyav")
    except Exception as exc:  # PyAV raises its own error types for garbage / truncated files
        raise ImageReadError(f"{path}: not a readable video ({type(exc).__name__}: {exc}); re-encode it "
                             "(e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or give the frames as images.") from None
    fps = float(meta.get("fps") or 0.0)
    if not fps and meta.get("duration"):  # gif: milliseconds per frame
        fps = 1000.0 / float(meta["duration"]) if path.suffix.lower() == ".gif" else 0.0
    return tuple(int(v) for v in props.shape), fps or 10.0


def read_video(path: str | os.PathLike, max_bytes: int | None = None) -> list[np.ndarray]:
    """All frames of a video as (H, W, 3) uint8 arrays; the decoded size is checked first."""
    import imageio.v3 as iio

    from hrdv2.io import check_decoded_size

    path = Path(path)
    shape, _ = video_info(path)
    check_decoded_size(path, shape[1:], np.uint8, max_bytes, pages=shape[0])
    try:
        return [np.asarray(f) for f in iio.imiter(path, plugin="pyav")]
    except Exception as exc:
        raise ImageReadError(f"{path}: video decoding failed ({type(exc).__name__}: {exc}); re-encode it.") from None


def iter_frames(source: str | os.PathLike) -> tuple[int, Iterator[np.ndarray], float | None]:
    """(frame count, frames, fps or None) of a video, a folder of frame images (sorted by name;
    NAME_gt / NAME_scribble label maps skipped) or a multi-page TIFF. Videos are decoded lazily."""
    from hrdv2.io import expand_inputs, read_image, read_stack

    source = Path(source)
    if source.is_dir():
        files = expand_inputs([source])
        if not files:
            raise ImageReadError(f"{source}: no frame images (png/jpg/tif...) in this folder.")
        return len(files), (read_image(f) for f in files), None
    if is_video(source):
        import imageio.v3 as iio

        from hrdv2.io import _normalise_channels

        shape, fps = video_info(source)
        return shape[0], (_normalise_channels(np.asarray(f), source) for f in iio.imiter(source, plugin="pyav")), fps
    pages = read_stack(source)
    return len(pages), iter(pages), None


def _rgb8(frame: np.ndarray) -> np.ndarray:
    """A frame as (H, W, 3) uint8 (grey repeated on three channels)."""
    frame = np.asarray(frame, np.uint8)
    return np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame[..., :3]


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sides: repeat the last row / column when one is odd."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 10.0) -> Path:
    """(H, W, 3) or grey (H, W) uint8 frames to an mp4 (H.264, streamed) or a gif (looping), atomically."""
    import imageio.v3 as iio

    from hrdv2.io import atomic_path

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in VIDEO_FORMATS:
        raise ConfigError(f"{path}: videos are written as {' or '.join(VIDEO_FORMATS)}; change the suffix.")
    n = 0
    with atomic_path(path) as tmp:
        if fmt == "gif":
            frames = [_rgb8(f) for f in frames]
            n = len(frames)
            if n:
                iio.imwrite(tmp, np.stack(frames), extension=".gif", plugin="pillow",
                            duration=int(round(1000 / fps)), loop=0)
        else:
            with iio.imopen(tmp, "w", plugin="pyav", extension=".mp4") as out:
                out.init_video_stream("libx264", fps=fps)
                for f in frames:
                    out.write_frame(_even(_rgb8(f)))
                    n += 1
        if not n:
            raise ConfigError(f"{path}: no frames to write.")
    return path


@dataclass
class SeriesResult:
    """What ``featurise_series`` made: frame count, sizes, outputs and the shared PCA."""

    n_frames: int
    height: int
    width: int
    n_features: int
    features_path: Path | None
    video_path: Path
    pca: Any
    seconds: float


class _FrameStore:
    """Per-frame (C, H, W) features: appended to a zarr array in a temporary folder renamed into
    place at the end (``path``), or kept in memory (``path`` None)."""

    def __init__(self, path: Path | None):
        self.path, self.tmp, self.z, self.frames = path, None, None, []

    def append(self, feats: np.ndarray) -> None:
        if self.path is None:
            self.frames.append(feats)
            return
        if self.z is None:
            import zarr

            self.tmp = self.path.with_name(f".{self.path.name}.part")
            shutil.rmtree(self.tmp, ignore_errors=True)
            c, h, w = feats.shape
            self.z = zarr.open_array(str(self.tmp), mode="w", shape=(0, c, h, w), dtype=np.float32,
                                     chunks=(1, min(64, c), min(256, h), min(256, w)))
        self.z.append(feats[None].astype(np.float32, copy=False), axis=0)

    def __len__(self) -> int:
        return len(self.frames) if self.path is None else (0 if self.z is None else self.z.shape[0])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.frames[i] if self.path is None else np.asarray(self.z[i])

    def commit(self) -> Path | None:
        if self.path is None or self.tmp is None:
            return None
        old = self.path.with_name(f".{self.path.name}.old")
        if self.path.exists():
            self.path.rename(old)
        self.tmp.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path


def featurise_series(frames: Iterable[np.ndarray], featurise: Callable[[np.ndarray], np.ndarray], out: Path,
                     name: str, *, video_format: str = "mp4", fps: float = 10.0, store: bool = True,
                     n_frames: int | None = None, seed: int = 0) -> SeriesResult:
    """Featurise every frame (``featurise``: image -> (C, H, W) float32), fit one PCA over samples of
    all frames, write ``NAME_pca.mp4|gif`` and (``store``) ``NAME_features.zarr`` (T, C, H, W)."""
    from tqdm import tqdm

    from hrdv2.errors import ShapeError
    from hrdv2.features.pca import PCA

    if video_format not in VIDEO_FORMATS:
        raise ConfigError(f"video format {video_format!r}: choose one of {list(VIDEO_FORMATS)}.")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    frames_store = _FrameStore(out / f"{name}_features.zarr" if store else None)
    samples, shape = [], None
    for i, frame in enumerate(tqdm(frames, total=n_frames, desc=f"features {name}", unit="frame", disable=None)):
        feats = np.asarray(featurise(frame), dtype=np.float32)
        if shape is None:
            shape = feats.shape
        elif feats.shape != shape:
            raise ShapeError(f"{name}: frame {i} gives features {feats.shape} but frame 0 gave {shape}; all frames "
                             "must share a size.")
        frames_store.append(feats)
        rows = feats.reshape(feats.shape[0], -1)
        pick = rng.choice(rows.shape[1], min(SAMPLES_PER_FRAME, rows.shape[1]), replace=False)
        samples.append(rows[:, pick].T)
    if shape is None:
        raise ImageReadError(f"{name}: the series holds no frames.")
    table = np.concatenate(samples)
    pca = PCA(3, max_samples=len(table), random_state=seed).fit(table)  # ONE PCA for every frame
    video = write_video(out / f"{name}_pca.{video_format}",
                        (pca.to_rgb(frames_store[i]) for i in range(len(frames_store))), fps=fps)
    features_path = frames_store.commit()
    return SeriesResult(len(frames_store), shape[1], shape[2], shape[0], features_path, video, pca,
                        time.perf_counter() - t0)


def split_series(inputs: Iterable[str], pca_video: bool | None) -> tuple[list[tuple[str, Path]], tuple[str, ...]]:
    """Split command-line inputs into time series ((name, source)) and plain images. Video files
    are always series (unless ``pca_video`` is False); folders and multi-page TIFFs only with
    ``pca_video`` True (a folder may be unrelated images, a TIFF stack a z-stack)."""
    from hrdv2.io import TIFF_SUFFIXES

    series, plain = [], []
    for item in inputs:
        p = Path(item)
        if pca_video is not False and is_video(p):
            series.append((p.stem, p))
        elif pca_video and (p.is_dir() or (p.suffix.lower() in TIFF_SUFFIXES and p.is_file())):
            series.append((p.name if p.is_dir() else p.stem, p))
        else:
            plain.append(item)
    return series, tuple(plain)


def featurise_source(engine: Any, name: str, source: Path, out: Path, *, store: bool = True,
                     video_format: str = "mp4", fps: float | None = None) -> tuple[SeriesResult, str]:
    """``hrdv2 features`` on one time series with a :class:`~hrdv2.engine.FeatureEngine`: deep
    features through its HR-Dv2 featurizer (as for single images), classical ones through
    ``compute``. Returns the result and the summary line (size, frames, backbone, outputs)."""
    count, frames, source_fps = iter_frames(source)
    if engine.config.uses_deep:
        fz = engine.featurizer(dtype=engine.dtype)

        def featurise(image: np.ndarray) -> np.ndarray:
            return fz(image).features.detach().cpu().float().numpy()
    else:
        def featurise(image: np.ndarray) -> np.ndarray:
            return np.moveaxis(engine.compute(image), -1, 0)

    res = featurise_series(frames, featurise, out, name, video_format=video_format, fps=fps or source_fps or 10.0,
                           store=store, n_frames=count)
    where = f"{res.features_path.name} (T, C, H, W) + " if res.features_path else ""
    line = (f"{name}: {res.width}x{res.height} x {res.n_frames} frames | {engine.describe()} | {res.n_features} "
            f"channels | one PCA over all frames | {res.seconds:.2f} s -> {out}/{where}{res.video_path.name}")
    return res, line
