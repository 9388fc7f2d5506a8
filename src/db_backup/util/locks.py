"""The per-job lock: one run of a job at a time, across the daemon, timers and manual runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from db_backup.util.fsutil import describe_os_error


class JobBusy(Exception):
    """Another run of the same job holds its lock."""


class JobSetupError(Exception):
    """A run could not start (directories, secrets, server unreachable); the message says why."""


def lock_path(state_dir: Path, job_name: str) -> Path:
    """Returns the lock file of `job_name` under the state directory."""
    return state_dir / "locks" / f"{job_name}.lock"


@contextlib.contextmanager
def job_lock(state_dir: Path, job_name: str) -> Iterator[None]:
    """Holds the job's flock for the duration; raises JobBusy if another run holds it."""
    path = lock_path(state_dir, job_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise JobSetupError(f"cannot open lock file {describe_os_error(exc, path)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise JobBusy(
                f"job {job_name!r} is already running (pid {holder}, lock {path}); "
                "this run was not started"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
