"""hrdv2 on a Dask cluster: a LocalCluster of 2 worker processes on 127.0.0.1, started here.

Folder and block-wise apply give the single-process outputs; a worker killed mid-run loses
nothing; an interrupted run resumes (only the missing files / blocks are computed); an address
where no scheduler listens is a one-line error within seconds; the notebook API equals the CLI.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from PIL import Image

from hrdv2.cli.main import cli
from hrdv2.io import read_image, read_labels
from hrdv2.segmentation import Segmenter

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    from hrdv2.distributed import StatePlugin

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster, timeout=60) as c:
        c.register_plugin(StatePlugin())
        yield c


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """A classical model (superalloy scribbles), a folder of 4 crops and a tiled 256^2 TIFF."""
    root = tmp_path_factory.mktemp("dist")
    sa = shared_data / "superalloy"
    image, scribble = read_image(sa / "isb_0.png"), read_labels(sa / "isb_0_scribble.png")
    seg = Segmenter("classical", classifier="logistic").fit([image], [scribble])
    model = seg.save(root / "model.skops")
    folder = root / "in"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(image[40 * i:40 * i + 120, 30 * i:30 * i + 140]).save(folder / f"crop{i}.png")
    big = root / "big.tif"
    tifffile.imwrite(big, image[:256, :256], tile=(64, 64))
    return seg, model, folder, big


def _apply(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["apply", *map(str, args)])
    return res.exit_code, res.output


def _same_folder(a: Path, b: Path, names: list[str]) -> None:
    def rows(folder: Path) -> list[str]:  # file column by name: the two runs read the same files from two folders
        return [Path(line.split(",")[0]).name + line[line.index(","):] for line in
                (folder / "phase_fractions.csv").read_text().splitlines()]

    assert rows(a) == rows(b)
    for n in names:
        np.testing.assert_array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n)))


def _zarr_level0(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["0"][:]


def test_folder_apply_equals_single_process_and_bad_file_is_reported(client, data, tmp_path):
    seg, model, folder, _ = data
    code, _ = _apply(model, folder, "--out", tmp_path / "one")
    assert code == 0
    bad = tmp_path / "in"
    bad.mkdir()
    for p in folder.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    code, out = _apply(model, bad, "--out", tmp_path / "many", "--scheduler", client.scheduler.address)
    assert code == 1, out
    assert "broken.png" in out and "1 of 5 file(s) failed" in out
    loads = client.run(lambda dask_worker: dask_worker.plugins["hrdv2-state"].state.loads)
    assert max(loads.values()) == 1  # each worker loaded the model once, whatever its number of tasks
    _same_folder(tmp_path / "one", tmp_path / "many", [f"crop{i}_labels.png" for i in range(4)])


def test_workers_option_starts_a_local_cluster(data, tmp_path):
    seg, model, folder, _ = data
    assert _apply(model, folder, "--out", tmp_path / "one")[0] == 0
    code, out = _apply(model, folder, "--out", tmp_path / "two", "--workers", "1")  # 1: starting workers is slow here
    assert code == 0, out
    assert "started a local Dask cluster: 1 worker process(es)" in out and "dashboard" in out
    _same_folder(tmp_path / "one", tmp_path / "two", [f"crop{i}_labels.png" for i in range(4)])


def test_blockwise_apply_equals_single_process(client, data, tmp_path):
    seg, model, _, big = data
    opts = ["--format", "ome-zarr", "--block-size", "64", "--proba"]
    assert _apply(model, big, "--out", tmp_path / "one", *opts)[0] == 0
    code, out = _apply(model, big, "--out", tmp_path / "many", *opts, "--scheduler", client.scheduler.address)
    assert code == 0, out
    assert (tmp_path / "one/phase_fractions.csv").read_text() == (tmp_path / "many/phase_fractions.csv").read_text()
    for name in ("big_labels.ome.zarr", "big_proba.ome.zarr"):
        a, b = (zarr.open_group(str(tmp_path / d / name), mode="r") for d in ("one", "many"))
        assert sorted(a.array_keys()) == sorted(b.array_keys())
        for k in a.array_keys():  # level 0 and every pyramid level
            np.testing.assert_array_equal(a[k][:], b[k][:])
    assert not (tmp_path / "many/big_labels.ome.zarr.partial").exists()


def test_killed_worker_loses_nothing(client, data, tmp_path):
    seg, model, _, big = data
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, read_image(big)[:128, :128], tile=(16, 16))
    expected = seg.predict(read_image(small))  # classical block-wise labels equal whole-image labels
    out_dir = tmp_path / "out"
    done_dir = out_dir / "small_labels.ome.zarr.partial" / "done"
    result: dict = {}

    def run() -> None:
        result["res"] = _apply(model, small, "--out", out_dir, "--format", "ome-zarr", "--block-size", "16",
                               "--scheduler", client.scheduler.address)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (done_dir.exists() and len(os.listdir(done_dir)) >= 3):
        time.sleep(0.05)
    assert done_dir.exists(), "no block was written within 60 s"
    busy = [addr for addr, keys in client.processing().items() if keys]
    pids = client.run(os.getpid)
    victim = busy[0] if busy else next(iter(pids))
    assert len(os.listdir(done_dir)) < 64, "the run ended before a worker could be killed"
    os.kill(pids[victim], signal.SIGKILL)  # mid-run: its tasks must be re-run elsewhere
    thread.join(120)
    assert not thread.is_alive()
    code, out = result["res"]
    assert code == 0, out
    assert len(list(done_dir.parent.parent.glob("*.partial"))) == 0  # finished, stage moved into place
    np.testing.assert_array_equal(_zarr_level0(out_dir / "small_labels.ome.zarr"), expected)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_rerun_skips_completed_files_and_blocks(client, data, tmp_path):
    from hrdv2.cli.segment import _file_key
    from hrdv2.segmentation.blockwise import label_writer, segment_blockwise

    seg, model, folder, big = data
    addr = client.scheduler.address
    out = tmp_path / "folder"
    assert _apply(model, folder, "--out", out, "--scheduler", addr)[0] == 0
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("crop[01]_labels.png")}
    for i in (2, 3):  # as if the run had been interrupted before these two files
        (out / f"crop{i}_labels.png").unlink()
    code, text = _apply(model, folder, "--out", out, "--scheduler", addr)
    assert code == 0, text
    assert "resuming: 2 of 4 file(s) complete from an earlier run, 2 to do" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("crop[01]_labels.png")} == kept
    assert all((out / f"crop{i}_labels.png").exists() for i in range(4))
    assert len((out / "phase_fractions.csv").read_text().splitlines()) == 5

    # a block-wise run interrupted after 5 blocks (single process), finished on the cluster
    blocks = tmp_path / "blocks"
    key = f"{_file_key(model)}|{_file_key(big)}|64|448"
    writer = label_writer("ome-zarr", blocks / "big_labels.ome.zarr", key)

    def stop_after_five(done: int, total: int) -> None:
        if done >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_blockwise(seg, big, writer, block_size=64, tile=448, overlap=56, progress=stop_after_five)
    code, text = _apply(model, big, "--out", blocks, "--format", "ome-zarr", "--block-size", "64",
                        "--scheduler", addr)
    assert code == 0, text
    assert "5 of 16 block(s) written by an earlier run, 11 to do" in text
    np.testing.assert_array_equal(_zarr_level0(blocks / "big_labels.ome.zarr"), seg.predict(read_image(big)))


def test_scheduler_where_nothing_listens_is_one_line_error(data, tmp_path):
    _, model, folder, _ = data
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    t0 = time.monotonic()
    code, out = _apply(model, folder, "--out", tmp_path / "o", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 20
    assert code == 2
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--workers" in lines[0], out


def test_segment_dask_equals_blockwise_and_writes_ome_zarr(client, data, tmp_path):
    from hrdv2.distributed import segment_dask, write_ome_zarr
    from hrdv2.segmentation.blockwise import segment_blockwise

    seg, _, _, big = data
    image = read_image(big)
    store = tmp_path / "img.zarr"
    zarr.create_array(str(store), shape=image.shape, chunks=(100, 100), dtype=image.dtype)[:] = image
    labels = segment_dask(seg, store, block_size=80)
    assert labels.chunks[0][0] == 80 and labels.dtype == np.uint8
    expected = segment_blockwise(seg, image, block_size=80)
    np.testing.assert_array_equal(labels.compute(), expected)  # on the distributed client
    np.testing.assert_array_equal(labels.compute(scheduler="sync"), expected)  # and with no cluster at all
    # a tiled TIFF path: its reader travels to the workers as the path and is reopened there
    np.testing.assert_array_equal(segment_dask(seg, big, block_size=80).compute(), expected)
    probs = segment_dask(seg, image, block_size=80, proba=True)
    assert probs.shape == image.shape + (len(seg.classes_),)
    target = write_ome_zarr(labels, tmp_path / "labels.ome.zarr", key="k")
    np.testing.assert_array_equal(_zarr_level0(target), expected)


def test_segment_dask_of_a_volume_model_uses_the_volume_statistics(shared_data):
    """Volume mode keys its statistics by -1 (the whole volume), not by page: the dask array of a
    classical 3-D model equals the block-wise run (it failed with a KeyError before)."""
    from hrdv2.blocks import as_lazy
    from hrdv2.distributed import segment_dask
    from hrdv2.engine.blockwise import BlockFeatures
    from hrdv2.features.sets import FeatureConfig
    from hrdv2.segmentation.blockwise import segment_blockwise

    d = shared_data / "isbi2012"
    vol = np.stack([read_image(d / f"isbi_{i:02d}.png")[:40, :48] for i in range(6)])
    vol[2] //= 2  # page statistics would differ from the volume's
    gt = read_labels(d / "isbi_03_gt.png")[:40, :48]
    seg = Segmenter(FeatureConfig(kind="classical", volume=True, sigmas=(1.0, 2.0)), classifier="logistic")
    bf = BlockFeatures(seg.engine, as_lazy(vol), 16)
    seg.fit([vol[3]], [gt], [bf.slice_features(3)])
    expected = segment_blockwise(seg, vol, block_size=16)
    labels = segment_dask(seg, vol, block_size=16)
    np.testing.assert_array_equal(labels.compute(scheduler="sync"), expected)


class _Done:
    """A finished task as ``as_completed`` hands it over: its exception, ``result()``, ``cancel()``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc, self.cancelled = exc, False

    def exception(self) -> BaseException:
        return self.exc

    def result(self) -> None:
        raise self.exc

    def cancel(self) -> None:
        self.cancelled = True


def test_a_failed_task_is_reported_if_bad_input_and_stops_the_run_if_a_bug():
    """The one handler both file and block tasks use for failed futures."""
    from hrdv2.distributed.runner import _user_error
    from hrdv2.errors import ImageReadError

    bad_input, others = _Done(ImageReadError("crop9.png: not an image")), [_Done(RuntimeError()) for _ in range(3)]
    assert _user_error(bad_input, [bad_input, *others]) is bad_input.exc
    assert not any(f.cancelled for f in others)  # the other files / blocks go on
    for user in (OSError("disk full"), MemoryError()):
        assert _user_error(_Done(user), others) is user
    bug = _Done(ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        _user_error(bug, [bug, *others])
    assert all(f.cancelled for f in others)  # a bug stops every task
