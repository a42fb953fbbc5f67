"""hrdv2 on a Dask cluster (``dask.distributed``): the same file and block tasks, many workers.

* :func:`open_client` (:mod:`~hrdv2.distributed.cluster`): a LocalCluster of worker processes
  on this machine, or an existing scheduler (address or scheduler file); one-line errors.
* :mod:`~hrdv2.distributed.worker`: what a worker keeps between tasks (the loaded model and
  backbone, keyed by the model file's digest), through a ``WorkerPlugin``.
* :mod:`~hrdv2.distributed.runner`: idempotent tasks, one per file (atomic outputs + a done
  marker) or one per block (written straight into the shared staged store), progress over
  tasks, per-file/per-block failure reports; :mod:`~hrdv2.distributed.commands` wires
  ``hrdv2 apply`` and ``hrdv2 features`` to them.
* :func:`segment_dask` / :func:`write_ome_zarr` (:mod:`~hrdv2.distributed.arrays`): a trained
  Segmenter as a lazy dask array, for notebooks (dask-image, xarray), and a resumable writer.

See docs/distributed.md for a laptop run, a SLURM recipe and how to size blocks and workers.
"""

from hrdv2.distributed.arrays import segment_dask, write_ome_zarr
from hrdv2.distributed.cluster import ClusterError, open_client
from hrdv2.distributed.commands import apply_on_cluster, features_on_cluster
from hrdv2.distributed.worker import EngineSpec, ModelRef, StatePlugin, WorkerState

__all__ = [
    "ClusterError", "EngineSpec", "ModelRef", "StatePlugin", "WorkerState", "apply_on_cluster",
    "features_on_cluster", "open_client", "segment_dask", "write_ome_zarr",
]
