"""Reserved report names: every report's stem is claimed before anything is written under it.

A stem (`<db>_<YYYYmmddTHHMMSSZ>_<host>`) has one-second resolution, and two runs (two jobs, a
retry, a manual run beside the daemon) can start in the same second, or two databases can map to
the same safe name. A claim is a file `<state>/claims/<stem>` that one run creates exclusively
and holds under flock for as long as it works on that stem; a stem is free only when neither a
claim nor a report of that name exists.

The claim also records which names the run may create on which target (its intent), before it
creates them. A run that is SIGKILLed leaves its claim unlocked: the next run of the same job
finds it, and unless a report was written for that stem, removes the recorded names from the
targets: whatever a killed run leaves is recognisably this program's and goes away. Each
multipart upload is recorded too (target, key, upload id) the moment it starts, so the next run
aborts exactly the uploads a killed run left open, at once rather than a day later.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db_backup.reports.model import report_path, stem
from db_backup.util.clock import utc_now


@dataclass(frozen=True)
class Upload:
    """A multipart upload a run started: which target, the object key, the upload id."""

    target: str
    key: str
    upload_id: str

    def to_json(self) -> dict[str, str]:
        """Returns the upload as the claim file holds it."""
        return {"target": self.target, "key": self.key, "uploadId": self.upload_id}


@dataclass
class Claim:
    """A stem reserved by this process until `release`; `intend` records what it may create."""

    path: Path | None  # None: the claims directory was unusable; the report's own write decides
    stem: str
    started: datetime
    fd: int
    job: str
    targets: dict[str, list[str]] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    released: bool = False
    # Upload parts start in pool threads (a directory dump's members): one writer at a time.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def intend(self, names: dict[str, list[str]]) -> None:
        """Records the names (per target) this run is about to create under the stem."""
        with self.lock:
            self.targets = names
            self._write()

    def record_upload(self, target: str, key: str, upload_id: str) -> None:
        """Records a multipart upload that has just started, so a killed run's is aborted."""
        with self.lock:
            self.uploads.append(Upload(target, key, upload_id))
            self._write()

    def _write(self) -> None:
        if self.path is None or self.released:
            return
        document = {
            "job": self.job,
            "stem": self.stem,
            "pid": os.getpid(),
            "targets": self.targets,
            "uploads": [upload.to_json() for upload in self.uploads],
        }
        data = json.dumps(document).encode("utf-8")
        os.pwrite(self.fd, data, 0)  # then cut: the claim is never empty meanwhile
        os.ftruncate(self.fd, len(data))
        os.fsync(self.fd)

    def release(self) -> None:
        """Gives the stem up (its report exists, or nothing was created under it)."""
        with self.lock:
            if self.released:
                return
            self.released = True
            if self.path is None:
                return
            with contextlib.suppress(OSError):
                self.path.unlink()
            with contextlib.suppress(OSError):
                os.close(self.fd)


@dataclass
class LiveClaims:
    """The claims a run holds now, so an upload that starts is recorded in its stem's claim."""

    claims: list[Claim] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, claim: Claim) -> Claim:
        """Adds `claim` (dropping released ones); returns it."""
        with self.lock:
            self.claims = [c for c in self.claims if not c.released]
            self.claims.append(claim)
        return claim

    def owner(self, filename: str) -> Claim | None:
        """Returns the live claim whose stem `filename` is stored under (the longest stem)."""
        with self.lock:
            owners = [c for c in self.claims if not c.released and filename.startswith(c.stem)]
        return max(owners, key=lambda c: len(c.stem), default=None)


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
    uploads: list[Upload] = field(default_factory=list)
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
            uploads = _uploads(document.get("uploads") if document else None)
            stale = StaleClaim(
                path, path.name, str(owner or job), _names_by_target(targets), uploads
            )
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


def _uploads(recorded: object) -> list[Upload]:
    """Returns the well-formed upload records of a claim file (others are ignored)."""
    if not isinstance(recorded, list):
        return []
    return [
        Upload(entry["target"], entry["key"], entry["uploadId"])
        for entry in recorded
        if isinstance(entry, dict)
        and all(isinstance(entry.get(k), str) and entry[k] for k in ("target", "key", "uploadId"))
    ]
