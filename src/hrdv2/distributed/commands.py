"""``hrdv2 apply`` and ``hrdv2 features`` on a Dask cluster: which tasks, and what runs where.

The commands hand over their own per-file steps (the functions a single-process run calls) and
get :class:`~hrdv2.distributed.runner.Outcome` objects back, one per input, which they report
exactly as a single-process run does. So results are the same functions' results:

* whole images (``--format png/tif``, and ``--block-size`` with png/tif): one task per file,
  running the command's own per-file function on a worker;
* ``--format ome-zarr/bigtiff``: one task per block of every file, each worker writing straight
  into the file's staged store; the client starts the writers before and finishes them after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hrdv2.distributed.runner import BlockJob, Outcome, run_block_jobs, run_file_tasks, start_writers
from hrdv2.distributed.worker import EngineSpec, ModelRef
from hrdv2.errors import HRDv2Error, ShapeError

BLOCK_SUFFIX = {"ome-zarr": ".ome.zarr", "bigtiff": ".ome.tif"}


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def apply_on_cluster(
    client: Any, seg: Any, files: Sequence[Path], out_dir: Path, *, model: Path, fmt: str, block_size: int | None,
    tile: int, proba: bool, whole: Callable[..., Any], blockwise: Callable[..., Any],
    fractions: Callable[[Any, Any], Any], writer_key: Callable[[Path], str], model_key: str,
    echo: Callable[[str], None] = print,
) -> Iterator[Outcome]:
    """Outcomes (phase fractions per page) of segmenting ``files`` with ``seg`` (loaded from
    ``model``; its CRF and device settings travel with it) on the cluster. ``whole(seg, path, out_dir, fmt, proba)`` and ``blockwise(seg, path,
    out_dir, fmt, block_size, tile, proba, model_key)`` are the command's per-file steps;
    ``fractions(seg, labels)`` its phase fractions of a label array; ``writer_key(path)`` the
    resume key of a block-wise output (the single-process one, so either kind of run resumes the
    other's stage)."""
    ref = ModelRef.from_file(model, crf=seg.crf, device=seg.features.device)
    if fmt not in BLOCK_SUFFIX:
        if block_size is None:
            yield from run_file_tasks(client, ref, whole, files, (out_dir, fmt, proba), out_dir, echo=echo)
        else:
            yield from run_file_tasks(client, ref, blockwise, files, (out_dir, fmt, block_size, tile, proba, model_key),
                                      out_dir, echo=echo)
        return
    from hrdv2.blocks import open_array
    from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for
    from hrdv2.segmentation.blockwise import label_writer

    overlap = tile // 8
    side = block_sizes_for(seg.features.kind, block_size, tile, overlap, seg.features.volume, seg.features.planes)
    jobs: list[tuple[BlockJob, Any, set[int]]] = []
    targets: list[tuple[Any, ...]] = []
    for path in files:
        try:
            lazy = open_array(path)
            if (lazy.channels or 1) != seg.n_channels_:
                raise ShapeError(f"{lazy.name}: the model was trained on {seg.n_channels_}-channel images but this one "
                                 f"has {lazy.channels or 1}; convert it, or train a model on images like it.")
            bf = BlockFeatures(seg.engine, lazy, side, tile=tile, overlap=overlap)
            key = writer_key(path)
            writers = [label_writer(fmt, out_dir / f"{_stem(path)}_labels{BLOCK_SUFFIX[fmt]}", key)]
            if proba:
                writers.append(label_writer(fmt, out_dir / f"{_stem(path)}_proba{BLOCK_SUFFIX[fmt]}", key,
                                            len(seg.classes_), proba=True))
            done, specs = start_writers(writers, bf.plan)
            lazy.close()
        except (HRDv2Error, OSError) as exc:  # bad input: reported like a failed task, the others go on
            yield Outcome(path, error=exc)
            continue
        jobs.append((BlockJob(str(path), str(path), side, tile, overlap, "labels", specs,
                              tuple(bf.plan.block_shape)), bf.plan, done))
        targets.append(tuple(writers))

    def finish(j: int) -> Any:
        outs = [w.finish() for w in targets[j]]
        return fractions(seg, open_array(outs[0]))

    yield from run_block_jobs(client, ref, jobs, finish, echo=echo)


def featurise_file(engine: Any, path: Path, load_pages: Callable, featurise_one: Callable, out: Path, fmt: str,
                   pca_png: bool, attention_png: bool) -> None:
    """Worker side of ``hrdv2 features`` on one file: every page through the command's own step."""
    fz = engine.featurizer(attention=attention_png and engine.backbone.has_cls_token, dtype=engine.dtype,
                           progress=False)
    for page_name, image in load_pages(path.stem, path):
        featurise_one(fz, page_name, image, out, fmt, pca_png, attention_png)


def classical_file(engine: Any, path: Path, load_pages: Callable, classical_one: Callable, out: Path,
                   pca_png: bool) -> None:
    """Worker side of the classical fallback of ``hrdv2 features`` on one file."""
    for page_name, image in load_pages(path.stem, path):
        classical_one(page_name, image, out, pca_png)


def features_on_cluster(
    client: Any, engine: Any, files: Sequence[Path], out: Path, *, blockwise: bool, block_size: int | None,
    tile: int, file_func: Callable[..., Any], file_args: tuple, after_blockwise: Callable[..., str],
    echo: Callable[[str], None] = print,
) -> Iterator[Outcome]:
    """Outcomes of featurising ``files`` on the cluster with ``engine``'s config: per file,
    ``file_func(engine, path, *file_args)`` (:func:`featurise_file` / :func:`classical_file`); block-wise,
    one task per block into ``NAME_features.ome.zarr``, then ``after_blockwise(path, target, plan,
    n_features)`` on the client (PCA picture, summary line; its text is the outcome's output)."""
    spec = EngineSpec(engine.config, engine.dtype)
    if not blockwise:
        yield from run_file_tasks(client, spec, file_func, files, file_args, out, echo=echo)
        return
    from hrdv2.blocks import OmeZarrWriter, open_array
    from hrdv2.engine.blockwise import BlockFeatures, block_sizes_for

    overlap = tile // 8
    side = block_sizes_for(engine.config.kind, block_size, tile, overlap)
    jobs: list[tuple[BlockJob, Any, set[int]]] = []
    meta: list[tuple[Any, ...]] = []
    for path in files:
        try:
            lazy = open_array(path)
            bf = BlockFeatures(engine, lazy, side, tile=tile, overlap=overlap)
            st = path.stat()
            key = f"{engine.config.key()}|{path.resolve()}:{st.st_size}:{st.st_mtime_ns}|{bf.plan.block_shape}|{tile}"
            writer = OmeZarrWriter(out / f"{_stem(path)}_features.ome.zarr", np.float32, bf.n_features, key=key)
            done, specs = start_writers([writer], bf.plan)
            lazy.close()
        except (HRDv2Error, OSError) as exc:
            yield Outcome(path, error=exc)
            continue
        jobs.append((BlockJob(str(path), str(path), side, tile, overlap, "features", specs,
                              tuple(bf.plan.block_shape)), bf.plan, done))
        meta.append((path, writer, bf.plan, bf.n_features))

    def finish(j: int) -> str:
        path, writer, plan, n_features = meta[j]
        return after_blockwise(path, writer.finish(), plan, n_features)

    for outcome in run_block_jobs(client, spec, jobs, finish, echo=echo):
        if outcome.error is None:
            outcome.output, outcome.value = outcome.value, None
        yield outcome
