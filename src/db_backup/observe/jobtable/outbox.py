"""The outbox: reports waiting to be sent, one file each under the state directory, and its flush.

A report is written here first, so a sink that is down (or a run that ends before the sender
is done) loses nothing: the next flush, from this run or the next, sends what waits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from db_backup.observe.jobtable.migrate import ensure_schema
from db_backup.observe.jobtable.rows import BACKUP, DRILL, Entry, row_of, send_batches
from db_backup.observe.jobtable.settings import SinkSettings, connect
from db_backup.util.fsutil import write_atomically
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.observe.jobtable")

OUTBOX_DIR = "sink-outbox"  # under directories.state
REJECTED_DIR = "rejected"  # malformed outbox files, moved aside (under the outbox)


class Outbox:
    """Reports waiting to be sent: one JSON file per report id under the state directory."""

    def __init__(self, state: Path) -> None:
        self.directory = state / OUTBOX_DIR

    def put(self, entry: Entry) -> Path:
        """Writes `entry` atomically; its name comes from the report id, never from content."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        path = self.directory / f"{entry.kind}-{entry.id}.json"
        document = {"kind": entry.kind, "reportFile": entry.report_file, "report": entry.document}
        data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        write_atomically(path, data, 0o640)
        return path

    def pending(self) -> list[Path]:
        """Returns the waiting files, oldest first."""
        try:
            paths = [p for p in self.directory.glob("*.json") if not p.name.startswith(".")]
        except OSError:
            return []
        keyed = []
        for path in paths:
            with contextlib.suppress(OSError):
                keyed.append((path.stat().st_mtime_ns, path.name, path))
        return [path for _, _, path in sorted(keyed)]

    @staticmethod
    def load(path: Path) -> tuple[Entry, int]:
        """Returns the entry of an outbox file and its inode; ValueError when malformed."""
        with path.open("rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            raw = handle.read()
        try:
            wrapper = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not readable JSON ({exc})") from None
        if (
            not isinstance(wrapper, dict)
            or wrapper.get("kind") not in {BACKUP, DRILL}
            or not isinstance(wrapper.get("report"), dict)
            or not isinstance(wrapper.get("reportFile", ""), str)
        ):
            raise ValueError("not an outbox entry (kind, reportFile, report)")
        entry = Entry(wrapper["kind"], wrapper.get("reportFile", ""), wrapper["report"])
        row_of(entry)  # a document no row can be made of is malformed too
        return entry, inode

    def remove(self, path: Path, inode: int) -> None:
        """Removes a sent file, unless a newer version of the report replaced it meanwhile."""
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:
                path.unlink()

    def reject(self, path: Path, why: str) -> None:
        """Moves a malformed file aside (never retried) and says so."""
        rejected = self.directory / REJECTED_DIR
        try:
            rejected.mkdir(mode=0o750, exist_ok=True)
            os.replace(path, rejected / path.name)
        except OSError as exc:
            log.warning(
                "malformed sink outbox file not moved aside",
                file=str(path),
                error=f"{exc.strerror}",
            )
            return
        log.warning(
            "malformed sink outbox file moved aside",
            file=str(path),
            moved_to=str(rejected / path.name),
            problem=mask(why),
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the outbox lock: one sender at a time on this host (daemon and timer runs)."""
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield


@dataclass(frozen=True)
class FlushResult:
    """What one flush of the outbox did."""

    sent: int
    rejected: int
    target: str


def flush(settings: SinkSettings, outbox: Outbox) -> FlushResult:
    """Sends every waiting report, removing each once committed; raises SinkError when down."""
    with outbox.locked():
        pending = outbox.pending()
        if not pending:
            return FlushResult(0, 0, "")
        conn, target = connect(settings)
        sent = rejected = 0
        files: dict[int, tuple[Path, int]] = {}  # id(entry) -> its outbox file and inode

        def readable() -> Iterator[Entry]:
            nonlocal rejected
            for path in pending:
                try:
                    entry, inode = outbox.load(path)
                except FileNotFoundError:
                    continue  # sent by another process meanwhile
                except (OSError, ValueError) as exc:
                    outbox.reject(path, str(exc))
                    rejected += 1
                    continue
                files[id(entry)] = (path, inode)
                yield entry

        try:
            ensure_schema(conn, settings, target)
            for batch, refused in send_batches(conn, target, readable(), settings.batch_size):
                why = {id(entry): reason for entry, reason in refused}
                for entry in batch:
                    path, inode = files.pop(id(entry))
                    if id(entry) in why:
                        outbox.reject(path, why[id(entry)])
                        rejected += 1
                    else:
                        outbox.remove(path, inode)
                        sent += 1
        finally:
            conn.close()
    return FlushResult(sent, rejected, target)
