"""Reserved report names: every report's stem is claimed before anything is written under it.

A stem (`<db>_<YYYYmmddTHHMMSSZ>_<host>`) has one-second resolution, and two runs (two jobs, a
retry, a manual run beside the daemon) can start in the same second, or two databases can map to
the same safe name. A claim is a file `<state>/claims/<stem>` that one run creates exclusively
and holds under flock for as long as it works on that stem; a stem is free only when neither a
claim nor a report of that name exists.

The claim also records which names the run may create on which target (its intent), before it
creates them. A run that is SIGKILLed leaves its claim unlocked: the next run of the same job
finds it, and unless a report was written for that stem, removes the recorded names from the
targets: whatever a killed run leaves is recognisably this program's and goes away.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db_backup.reports.model import report_path, stem
from db_backup.util.clock import utc_now


@dataclass
class Claim:
    """A stem reserved by this process until `release`; `intend` records what it may create."""

    path: Path | None  # None: the claims directory was unusable; the report's own write decides
    stem: str
    started: datetime
    fd: int
    job: str

    def intend(self, names: dict[str, list[str]]) -> None:
        """Records the names (per target) this run is about to create under the stem."""
        if self.path is None:
            return
        document = {"job": self.job, "stem": self.stem, "pid": os.getpid(), "targets": names}
        data = json.dumps(document).encode("utf-8")
        os.pwrite(self.fd, data, 0)  # then cut: the claim is never empty meanwhile
        os.ftruncate(self.fd, len(data))
        os.fsync(self.fd)

    def release(self) -> None:
        """Gives the stem up (its report exists, or nothing was created under it)."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def unclaimed(reports_dir: Path, job: str, database: str, host: str) -> Claim:
    """Returns a stem that no report has yet, without a claim file (the directory is unusable).

    Reports are still never overwritten (`write_report` refuses an existing name); what is
    lost is only the protection against a second run taking the same second meanwhile.
    """
    while True:
        started = utc_now()
        name = stem(database, started, host)
        if not report_path(reports_dir, name).exists():
            return Claim(None, name, started, -1, job)
        time.sleep(1.02 - datetime.now(UTC).microsecond / 1_000_000)


def claims_dir(state_dir: Path) -> Path:
    """Returns the directory of the claim files."""
    return state_dir / "claims"


def claim_stem(state_dir: Path, reports_dir: Path, job: str, database: str, host: str) -> Claim:
    """Reserves the stem of `database` at the current second, waiting for the next if taken."""
    directory = claims_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    while True:
        started = utc_now()
        name = stem(database, started, host)
        if not report_path(reports_dir, name).exists():
            claim = _try_claim(directory, name, started, job)
            if claim is not None:
                if not report_path(reports_dir, name).exists():
                    return claim
                claim.release()
        time.sleep(1.02 - datetime.now(UTC).microsecond / 1_000_000)


def _try_claim(directory: Path, name: str, started: datetime, job: str) -> Claim | None:
    # Lock a private file first, then link it in: a claim is never visible unlocked.
    temp = directory / f".new-{os.getpid()}-{time.monotonic_ns()}"
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(temp, directory / name)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        temp.unlink(missing_ok=True)
    return Claim(directory / name, name, started, fd, job)


@dataclass
class StaleClaim:
    """A claim whose run is gone (its lock is free), with what it meant to create.

    Set `keep` when its leftovers could not be removed, so the next run tries again.
    """

    path: Path
    stem: str
    job: str
    targets: dict[str, list[str]]
    keep: bool = False


def stale_claims(state_dir: Path, job: str) -> Iterator[StaleClaim]:
    """Yields the unlocked claims of `job` (and unreadable ones) and removes each after use.

    The caller removes the leftovers while the claim is still locked by us, so no other run can
    take the same stem in between.
    """
    directory = claims_dir(state_dir)
    try:
        entries = sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError:
        return
    for path in entries:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run holds it
            if os.fstat(fd).st_ino != _inode(path):
                continue  # released and taken again meanwhile
            document = _read_intent(fd)
            owner = document.get("job") if document else None
            if document and owner != job:
                continue  # another job's leftover: its own next run cleans it up
            targets = document.get("targets", {}) if document else {}
            stale = StaleClaim(path, path.name, str(owner or job), _names_by_target(targets))
            yield stale
            if not stale.keep:
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _read_intent(fd: int) -> dict[str, Any] | None:
    data = os.pread(fd, os.fstat(fd).st_size, 0)  # a directory dump's members can be many
    if not data:
        return None
    try:
        # raw_decode: bytes after the document (a longer intent cut short by a kill between
        # the write and the truncate of `intend`) do not hide it.
        document, _ = json.JSONDecoder().raw_decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _names_by_target(targets: object) -> dict[str, list[str]]:
    if not isinstance(targets, dict):
        return {}
    return {
        str(name): [n for n in names if isinstance(n, str)]
        for name, names in targets.items()
        if isinstance(names, list)
    }
