"""Background jobs (featurisation, training, apply-to-all) with progress and cancel.

Jobs run on a small thread pool, never on a request thread, so painting (a quick database
write) is answered while features are computed. A job reports progress through
``Job.report``; cancelling sets a flag that ``report`` turns into ``JobCancelled`` at the next
progress tick, so even a long featurisation stops promptly.
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from hrdv2.errors import HRDv2Error

from .schemas import JobOut


class JobCancelled(Exception):
    """Raised inside a job when the user pressed Cancel."""


class Job:
    """State of one background job; updated by the worker, read by request handlers."""

    def __init__(self, kind: str, key: str | None = None):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.key = key
        self.state = "queued"
        self.stage = "queued"
        self.done = 0.0
        self.total = 1.0
        self.message = ""
        self.error: str | None = None
        self.result: dict | None = None
        self.created = time.time()
        self._cancel = threading.Event()
        self._changed = threading.Condition()
        self.version = 0

    # -- worker side -------------------------------------------------------------------------
    def report(self, done: float, total: float | None = None, stage: str | None = None, message: str | None = None) -> None:
        """Record progress; raises JobCancelled if cancel was requested."""
        if self._cancel.is_set():
            raise JobCancelled()
        with self._changed:
            self.done = float(done)
            if total is not None:
                self.total = float(max(total, 1e-9))
            if stage is not None:
                self.stage = stage
            if message is not None:
                self.message = message
            self._bump()

    def progress_callback(self, stage: str, offset: float = 0.0, span: float = 1.0) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callable mapping a sub-task onto [offset, offset+span] of this job."""

        def cb(done: int, total: int) -> None:
            self.report(offset + span * (done / max(total, 1)), stage=stage)

        return cb

    def _finish(self, state: str, result: dict | None = None, error: str | None = None) -> None:
        with self._changed:
            self.state = state
            self.result = result
            self.error = error
            if state == "done":
                self.done = self.total
                self.stage = "done"
            self._bump()

    def _bump(self) -> None:
        self.version += 1
        self._changed.notify_all()

    # -- reader side -------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        with self._changed:
            if self.state == "queued":
                self.state = "cancelled"
                self.stage = "cancelled"
            self._bump()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def wait_change(self, seen_version: int, timeout: float) -> int:
        """Block until the job changes after ``seen_version`` (or timeout); return the new version."""
        with self._changed:
            if self.version == seen_version and not self.finished:
                self._changed.wait(timeout)
            return self.version

    def out(self) -> JobOut:
        return JobOut(
            id=self.id,
            kind=self.kind,
            state=self.state,  # type: ignore[arg-type]
            stage=self.stage,
            done=self.done,
            total=self.total,
            message=self.message,
            error=self.error,
            result=self.result,
        )


class JobManager:
    """Runs jobs on a thread pool and remembers the most recent ones for progress queries."""

    def __init__(self, workers: int = 2, keep: int = 200):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hrdv2-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def submit(self, kind: str, fn: Callable[[Job], dict | None], key: str | None = None) -> Job:
        """Start ``fn(job)`` in the background. With ``key``, an unfinished job of the same key is
        returned instead of starting a duplicate (e.g. two requests for the same features)."""
        with self._lock:
            if key is not None:
                for job in reversed(self._jobs.values()):
                    if job.key == key and not job.finished:
                        return job
            job = Job(kind, key)
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> None:
        if job.cancelled:
            job._finish("cancelled")
            return
        job.state = "running"
        try:
            job.report(0.0, stage="starting")
            result = fn(job)
        except JobCancelled:
            job._finish("cancelled")
        except HRDv2Error as exc:
            job._finish("failed", error=str(exc))
        except Exception as exc:  # a bug: keep the server alive, show the message, log the trace
            traceback.print_exc()
            job._finish("failed", error=f"{type(exc).__name__}: {exc}")
        else:
            job._finish("cancelled" if job.cancelled and result is None else "done", result=result)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.finished:
                job.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
