"""Tasks on a Dask cluster: one per file for folders, one per block for large images and volumes.

Both kinds are idempotent, so Dask may run a task twice (its worker died, it was stolen) without
harm, and a whole run that was interrupted can be run again:

* a file task writes its outputs atomically (``hrdv2.io.atomic_path``), then a marker
  ``OUT/.hrdv2-done/NAME-HASH.json`` holding the task's key (model digest, input identity,
  options), its result and its output files; a re-run skips files whose marker matches and whose
  outputs are all present;
* a block task writes its block into the writer's shared stage (``TARGET.partial/``: distinct,
  chunk-aligned zarr chunks, each stored by zarr with a temp file + rename, so concurrent writers
  never touch the same file) and then the writer's done marker; the client starts each writer
  before and finishes it (pyramid, move into place) after all its blocks are in.

A task that fails on bad input (a user error: ``HRDv2Error``, ``OSError``, ``MemoryError``) is
reported with its file or block and the others finish; any other exception is a bug and stops
the run. Results come back as :class:`Outcome` objects in completion order, with a tqdm bar
over tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from hrdv2.distributed.worker import EngineSpec, ModelRef, worker_state
from hrdv2.errors import HRDv2Error

DONE_DIR = ".hrdv2-done"
USER_ERRORS = (HRDv2Error, OSError, MemoryError)


class TaskFailed(HRDv2Error):
    """A block task failed on bad input: the message names the file and the block."""


@dataclass
class Outcome:
    """One file's result: ``value`` (or ``error``), the task's printed ``output``, and whether it
    was complete from an earlier run (``skipped``)."""

    name: Path
    value: Any = None
    error: BaseException | None = None
    output: str = ""
    skipped: bool = False

    def result(self) -> Any:
        """The value, or the task's exception re-raised (as a single-process run would raise it)."""
        if self.error is not None:
            raise self.error
        return self.value


def _bar(total: int, initial: int, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="tasks", unit=unit, disable=None)


def _user_error(failed: Any, futures: Iterable[Any]) -> BaseException:
    """The exception of a failed task when it is bad input (``USER_ERRORS``: reported, the others
    go on); any other exception is a bug: every task is cancelled and it is raised here, with
    the worker's traceback."""
    exc = failed.exception()
    if not isinstance(exc, USER_ERRORS):
        for other in futures:
            other.cancel()
        failed.result()  # raises it
    return exc


# --------------------------------------------------------------------------- file tasks

def _marker_path(done_dir: Path, path: Path) -> Path:
    digest = hashlib.blake2s(str(path.resolve()).encode(), digest_size=6).hexdigest()
    return done_dir / f"{path.name}-{digest}.json"


def file_identity(path: Path) -> str:
    """Name, size and modification time: what tells an input changed since a marker was written."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _read_marker(marker: Path, key: str, out_dir: Path) -> dict | None:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key or not all((out_dir / name).exists() for name in data.get("outputs", [])):
        return None
    return data


def _stable(value: Any) -> str:
    """A repr that is the same in every run (functions by name, not by address)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def file_task(spec: ModelRef | EngineSpec, func: Callable[..., Any], path: Path, args: tuple, out_dir: Path,
              marker: Path, key: str) -> tuple[Any, str]:
    """On a worker: ``func(loaded spec, path, *args)`` with its printing captured; then the marker."""
    from hrdv2.io import write_text_atomic

    target = worker_state().resolve(spec)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        value = func(target, path, *args)
    prefix = path.name.split(".")[0] + "_"
    outputs = sorted(p.name for p in out_dir.iterdir() if p.name.startswith(prefix) and ".part" not in p.name)
    write_text_atomic(marker, json.dumps({"key": key, "value": value, "output": buf.getvalue(), "outputs": outputs},
                                         default=float))
    return value, buf.getvalue()


def run_file_tasks(client: Any, spec: ModelRef | EngineSpec, func: Callable[..., Any], files: Sequence[Path],
                   args: tuple, out_dir: Path, *, echo: Callable[[str], None] = print) -> Iterator[Outcome]:
    """One task per file (``func(loaded spec, path, *args)``, a module-level function); files whose
    marker matches are not run again. Yields each file's :class:`Outcome` as it completes."""
    from distributed import as_completed

    done_dir = out_dir / DONE_DIR
    done_dir.mkdir(parents=True, exist_ok=True)
    spec_future = client.scatter(spec, broadcast=True, hash=False)  # the model bytes travel once per worker
    futures: dict[Any, Path] = {}
    skipped: list[Outcome] = []
    for path in files:
        marker = _marker_path(done_dir, path)
        try:
            key = f"{spec.key}|{file_identity(path)}|{_stable(func)}|{[_stable(a) for a in args]}"
        except OSError as exc:  # a missing input: reported like any other bad input
            skipped.append(Outcome(path, error=exc))
            continue
        old = _read_marker(marker, key, out_dir)
        if old is not None:
            skipped.append(Outcome(path, old["value"], output=old.get("output", ""), skipped=True))
            continue
        fut = client.submit(file_task, spec_future, func, path, args, out_dir, marker, key, pure=False,
                            key=f"hrdv2-file-{marker.stem}-{os.urandom(4).hex()}")
        futures[fut] = path
    n_done = sum(o.skipped for o in skipped)
    if n_done:
        echo(f"resuming: {n_done} of {len(files)} file(s) complete from an earlier run, {len(futures)} to do")
    yield from skipped
    with _bar(len(files), len(skipped), "file") as bar:
        for fut in as_completed(futures):
            path = futures[fut]
            bar.update(1)
            if fut.status == "error":
                yield Outcome(path, error=_user_error(fut, futures))
            else:
                value, output = fut.result()
                yield Outcome(path, value, output=output)


# --------------------------------------------------------------------------- block tasks

@dataclass(frozen=True)
class WriterSpec:
    """How to rebuild, on a worker, a staged writer the client has started (and its manifest)."""

    fmt: str  # "ome-zarr" | "bigtiff"
    target: str
    dtype: str
    channels: int | None
    kind: str
    key: str
    manifest: str = ""  # the stage's manifest.json as the client's start() wrote it

    @classmethod
    def of(cls, writer: Any) -> "WriterSpec":
        fmt = "bigtiff" if type(writer).__name__ == "BigTiffWriter" else "ome-zarr"
        return cls(fmt, str(writer.target), np.dtype(writer.dtype).str, writer.channels, writer.kind, writer.key)

    def build(self) -> Any:
        from hrdv2.blocks import BigTiffWriter, OmeZarrWriter

        cls = BigTiffWriter if self.fmt == "bigtiff" else OmeZarrWriter
        return cls(self.target, np.dtype(self.dtype), self.channels, kind=self.kind, key=self.key)

    def started(self, writer: Any) -> "WriterSpec":
        """This spec with the manifest the client's ``writer.start`` just wrote."""
        manifest = (Path(str(writer.partial)) / "manifest.json").read_text()
        return WriterSpec(self.fmt, self.target, self.dtype, self.channels, self.kind, self.key, manifest)

    def attach(self, plan: Any) -> Any:
        """The writer opened on the client's stage for block writes. Refuses a stage whose manifest
        is not the one the client started (it would otherwise be discarded under the other workers)."""
        writer = self.build()
        mpath = Path(str(writer.partial)) / "manifest.json"
        try:
            same = mpath.read_text() == self.manifest
        except OSError:
            same = False
        if not same:
            raise TaskFailed(f"{self.target}: the staged output {writer.partial} changed or vanished during the "
                             "run (another run writing the same output?); run again.")
        writer.start(plan, resume=True)  # same manifest: opens the stage, discards nothing
        return writer


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to compute and write any block of one input (hashable: its cache key).

    ``mode``: ``"labels"`` (writers: labels, then optional probabilities) or ``"features"``."""

    name: str
    source: str
    block_size: int
    tile: int
    overlap: int
    mode: str
    writers: tuple[WriterSpec, ...]
    block_shape: tuple[int, ...]


class _BlockContext:
    """A worker's open reader, BlockFeatures (page statistics, tile cache) and writers of one job."""

    def __init__(self, job: BlockJob, target: Any) -> None:
        from hrdv2.blocks import open_array
        from hrdv2.engine.blockwise import BlockFeatures

        self.job = job
        self.lazy = open_array(job.source)
        self.seg = target if job.mode == "labels" else None
        engine = target.engine if job.mode == "labels" else target
        self.bf = BlockFeatures(engine, self.lazy, job.block_size, tile=job.tile, overlap=job.overlap)
        if tuple(self.bf.plan.block_shape) != tuple(job.block_shape):
            raise TaskFailed(f"{job.name}: the worker planned blocks of {self.bf.plan.block_shape}, the client "
                             f"{job.block_shape}; are client and workers running the same hrdv2 version?")
        self.writers = [w.attach(self.bf.plan) for w in job.writers]

    def run(self, index: int) -> None:
        block = self.bf.plan[index]
        feats = self.bf.features(self.lazy[block.read], block)
        if self.seg is None:
            outs = [feats]
        else:
            probs = self.seg.predict_proba_features(feats.reshape(-1, feats.shape[-1]))
            labels = self.seg.classes_.astype(np.uint8)[np.argmax(probs, axis=-1)].reshape(feats.shape[:-1])
            outs = [labels, probs.reshape(feats.shape[:-1] + (probs.shape[-1],))]
        for writer, out in zip(self.writers, outs):
            writer.write(block, out)

    def close(self) -> None:
        self.lazy.close()


def block_task(spec: ModelRef | EngineSpec, job: BlockJob, index: int) -> int:
    """On a worker: compute block ``index`` of ``job`` and write it into every writer's stage."""
    state = worker_state()
    target = state.resolve(spec)
    state.context((spec.key, job), lambda: _BlockContext(job, target)).run(index)
    return index


def _window(block: Any) -> str:
    return ", ".join(f"{ax} {s.start}:{s.stop}" for ax, s in zip("zyx"[-len(block.write):], block.write))


def run_block_jobs(client: Any, spec: ModelRef | EngineSpec, jobs: Sequence[tuple[BlockJob, Any, set[int]]],
                   finish: Callable[[int], Any], *, echo: Callable[[str], None] = print) -> Iterator[Outcome]:
    """One task per block not yet written, over every job; ``jobs`` holds ``(job, plan, blocks already
    written)`` (see :func:`start_writers`). When all of a job's blocks are in, ``finish(i)``
    runs on the client (e.g. ``writer.finish()`` and the phase fractions) and its value is the
    job's outcome; a job with a failed block keeps its stage (a re-run resumes) and its outcome
    carries the first failure, naming the block."""
    from distributed import as_completed

    spec_future = client.scatter(spec, broadcast=True, hash=False)
    futures: dict[Any, tuple[int, int]] = {}
    pending: list[int] = []
    errors: list[list[str]] = [[] for _ in jobs]
    already = 0
    for j, (job, plan, done) in enumerate(jobs):
        todo = [i for i in range(len(plan)) if i not in done]
        already += len(plan) - len(todo)
        if done:
            echo(f"resuming {job.name}: {len(done)} of {len(plan)} block(s) written by an earlier run, {len(todo)} to do")
        pending.append(len(todo))
        for i in todo:
            fut = client.submit(block_task, spec_future, job, i, pure=False,
                                key=f"hrdv2-block-{j}-{i}-{os.urandom(4).hex()}")
            futures[fut] = (j, i)
    total = sum(len(plan) for _, plan, _ in jobs)

    def close(j: int) -> Outcome:
        name = Path(jobs[j][0].name)
        if errors[j]:
            more = f" (and {len(errors[j]) - 1} more block(s))" if len(errors[j]) > 1 else ""
            return Outcome(name, error=TaskFailed(f"{errors[j][0]}{more}; the blocks written are kept: run the same "
                                                  "command again to finish"))
        try:
            return Outcome(name, finish(j))
        except USER_ERRORS as exc:
            return Outcome(name, error=exc)

    for j, n in enumerate(pending):
        if n == 0:
            yield close(j)
    with _bar(total, already, "block") as bar:
        for fut in as_completed(futures):
            j, i = futures[fut]
            bar.update(1)
            if fut.status == "error":
                errors[j].append(f"block {i} ({_window(jobs[j][1][i])}): {_user_error(fut, futures)}")
            pending[j] -= 1
            if pending[j] == 0:
                yield close(j)


def start_writers(writers: Sequence[Any], plan: Any) -> tuple[set[int], tuple[WriterSpec, ...]]:
    """Start staged writers on the client (resuming their stages): the blocks every one of them
    already holds, and the specs workers attach with."""
    done = [writer.start(plan, resume=True) for writer in writers]
    specs = tuple(WriterSpec.of(w).started(w) for w in writers)
    return (set.intersection(*done) if done else set()), specs
