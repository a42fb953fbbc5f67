"""Where errors become one line: the boundary every command shares.

* :func:`describe_error` turns any exception into one line and an exit code: user errors
  (``HRDv2Error``, an operating-system refusal, running out of memory) exit 2 with the fix;
  anything else is a bug in hrdv2 and exits 3 asking for a report.
* :class:`FileRun` processes a list of files so that one bad file is reported and the others
  still finish; the command exits 1 at the end when any file failed.
* :func:`check_outputs` validates output paths *before* minutes of work are spent.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import click

from hrdv2.errors import HRDv2Error

USER_ERROR = 2  # the input or set-up is wrong: the message says what and how to fix it
INTERNAL_ERROR = 3  # a bug in hrdv2: the message asks for a report
SOME_FILES_FAILED = 1  # a folder run finished the good files; some others failed


def describe_error(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for any exception reaching a command.

    User errors (``HRDv2Error``), operating-system refusals (a read-only folder, a full disk,
    a path that is a file) and running out of memory are the user's to fix; anything else is a
    bug in hrdv2, reported in one line (set ``HRDV2_DEBUG=1`` to see the traceback).
    """
    if isinstance(exc, HRDv2Error):
        return str(exc), USER_ERROR
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        reason = exc.strerror or str(exc) or type(exc).__name__
        return f"{where}{reason}. Check the path, its permissions and the free disk space.", USER_ERROR
    if isinstance(exc, MemoryError):
        return ("out of memory. Use smaller images (crop or tile them), fewer transforms or a smaller "
                "--batch-size."), USER_ERROR
    if os.environ.get("HRDV2_DEBUG"):
        raise exc
    return (f"internal error {type(exc).__name__}: {exc}. This is a bug in hrdv2; please report it "
            "(run again with HRDV2_DEBUG=1 for the traceback)."), INTERNAL_ERROR


def fail(exc: BaseException) -> None:
    """Print ``exc`` as one line and exit with its code (the commands' last resort)."""
    message, code = describe_error(exc)
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


class FileRun:
    """Run one step per input file; a file that fails with a user error is reported, the rest go on.

    Bugs (internal errors) are not swallowed: they stop the run, since they would recur.
    """

    def __init__(self, total: int = 0) -> None:
        self.failed: list[tuple[str, str]] = []
        self.done = 0
        self.single = total == 1  # one input: its failure is the command's one error line

    @contextlib.contextmanager
    def step(self, path: str | os.PathLike) -> Iterator[None]:
        from tqdm import tqdm

        try:
            yield
        except (HRDv2Error, OSError, MemoryError) as exc:
            message, _ = describe_error(exc)
            self.failed.append((str(path), message))
            with tqdm.external_write_mode(file=sys.stderr):  # above any progress bar, colour only on a terminal
                named = message if str(path) in message else f"{path}: {message}"
                click.secho(f"error: {named}" if self.single else f"skipped {path}: {message}",
                            fg="red" if self.single else "yellow", err=True)
        else:
            self.done += 1

    def finish(self, total: int) -> None:
        """Exit 1 after listing the failed files (the good ones are already written); a run over
        one file that failed is a plain user error (exit 2, its one line already printed)."""
        if self.failed and total == 1:
            sys.exit(USER_ERROR)
        if self.failed:
            names = ", ".join(p for p, _ in self.failed[:5]) + (" ..." if len(self.failed) > 5 else "")
            click.secho(f"{len(self.failed)} of {total} file(s) failed: {names}", fg="red", err=True)
            sys.exit(SOME_FILES_FAILED)


def check_outputs(*, files: tuple[str | os.PathLike, ...] = (), folders: tuple[str | os.PathLike, ...] = ()) -> None:
    """Refuse unusable output paths before any work starts (see :func:`hrdv2.io.check_writable`)."""
    from hrdv2.io import check_writable

    for f in files:
        check_writable(Path(f), kind="file")
    for d in folders:
        check_writable(Path(d), kind="folder")
