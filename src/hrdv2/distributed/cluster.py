"""Connecting to a Dask cluster: a LocalCluster of worker processes, or an existing scheduler.

Why worker *processes* (not threads): featurising holds the GIL in parts (numpy glue, the
classifier) and a worker that dies (out of memory, killed) must not take the client with it;
each process also keeps its own loaded model. One thread per worker: the machine's cores are
shared out as processes, and BLAS / torch inside each stay single-threaded (Dask sets
``OMP_NUM_THREADS=1`` for its worker processes), so N workers do not oversubscribe N cores.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

from hrdv2.errors import HRDv2Error

CONNECT_TIMEOUT_S = 5.0  # an address where nothing listens is reported after this long


class ClusterError(HRDv2Error):
    """The cluster could not be started or reached."""


def _connect(scheduler: str, timeout: float) -> "Client":  # noqa: F821
    from distributed import Client

    path = Path(scheduler)
    try:
        if "://" not in scheduler and (path.suffix == ".json" or path.exists()):
            if not path.is_file():
                raise ClusterError(f"scheduler file {scheduler} does not exist; give the file the scheduler wrote "
                                   "(dask scheduler --scheduler-file PATH) or an address like tcp://host:8786.")
            return Client(scheduler_file=str(path), timeout=timeout)
        return Client(scheduler, timeout=timeout)
    except ClusterError:
        raise
    except (OSError, TimeoutError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"no Dask scheduler answered at {scheduler} within {timeout:g} s ({first}); start one "
                           "(dask scheduler) and check the address and port, or use --workers N for a local "
                           "cluster.") from None


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None, *,
                echo: Callable[[str], None] = print, timeout: float = CONNECT_TIMEOUT_S) -> Iterator["Client"]:  # noqa: F821
    """A connected ``distributed.Client``: a new LocalCluster of ``workers`` processes on 127.0.0.1
    (closed on exit), or the existing cluster at ``scheduler`` (an address or a scheduler file).

    The hrdv2 worker plugin is registered, so every worker (and every replacement of a dead one)
    keeps its loaded models between tasks. ``echo`` receives the dashboard line.
    """
    from distributed import LocalCluster

    from hrdv2.distributed.worker import StatePlugin

    if (workers is None) == (scheduler is None):
        raise ClusterError("give either --workers N (a local cluster) or --scheduler ADDRESS (an existing one), "
                           "not both.")
    with contextlib.ExitStack() as stack:
        if workers is not None:
            if workers < 1:
                raise ClusterError(f"--workers must be at least 1, got {workers}.")
            try:
                cluster = stack.enter_context(LocalCluster(
                    n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                    local_directory=os.environ.get("HRDV2_DASK_DIR"),
                ))
            except OSError as exc:
                raise ClusterError(f"could not start a local cluster of {workers} worker(s) ({exc}).") from None
            from distributed import Client

            client = stack.enter_context(Client(cluster, timeout=timeout * 6))
            echo(f"started a local Dask cluster: {workers} worker process(es); {dashboard_line(client)}")
        else:
            client = stack.enter_context(_connect(str(scheduler), timeout))
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            echo(f"connected to the Dask scheduler at {client.scheduler.address} ({n} worker(s)); "
                 f"{dashboard_line(client)}")
        client.register_plugin(StatePlugin())
        yield client


def dashboard_line(client: "Client") -> str:  # noqa: F821
    """Where the dashboard is, or how to get one (it needs bokeh, which hrdv2 does not require)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "dashboard off (pip install 'bokeh>=3.1' to watch tasks in a browser)"
    return f"dashboard {client.dashboard_link}"
