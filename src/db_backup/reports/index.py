"""An index of the reports directory, so `status` and retention need not parse every report.

The JSON reports stay the source of truth; the index (SQLite, stdlib `sqlite3`, default
``/var/lib/db-backup/reports-index.sqlite3`` beside the state file) is a cache of what `status`,
retention and the metrics need from each report: job, database, status, start time and the file
names retention may delete. Every refresh lists the reports directory once (one stat per file:
inode, size, mtime, ctime); a report that appeared, changed or disappeared since the index last
saw it is re-read (or dropped) before any answer is given. Only the changed files are parsed,
and no writer of the reports directory has to tell the index anything.

- Missing, corrupt (not a database, malformed), of another index format or db-backup version, or
  built for another reports directory: the index is rebuilt from the reports.
- Deleted, overwritten or truncated while in use, or a write to it fails: the answer comes from
  the index rebuilt, or when that fails too from one built in memory; never a traceback.
- Concurrent users (a daemon run, a manual run, an operator's `status`) compare under a read
  lock and take SQLite's write lock only to write what changed, in one transaction: a process
  killed at any line leaves the old index or the new one (SQLite's rollback journal), never a
  mix. The index remembers when the listing it is in line with began, so a slower process with
  an older listing never takes it back in time.
- A report whose ctime is under `RACY_SECONDS` old may still change within the file system's
  timestamp granularity without changing its stat; it is indexed but re-read next time (git's
  "racily clean" rule).
- Who cannot write the index reads it while it is up to date; otherwise (or without access to
  the state directory at all, or when it stays locked) the answers come from an index built in
  memory: the same answers, only as slow as a full read.
- Written without fsync (`synchronous=OFF`): a killed process loses nothing the OS has, and an
  OS crash means a new boot, after which the index is rebuilt (the boot id is in its metadata).
- Malformed reports are remembered with the reason they are skipped, and give the same warnings
  as `model.load_reports`; an unreadable file (permissions) is not remembered, since another
  user may read it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from db_backup.reports import index_db
from db_backup.reports.index_db import Listing, decode, encode, from_micros, micros
from db_backup.reports.model import SUCCESS
from db_backup.reports.retention import Backup

Warn = Callable[[str, dict[str, str]], None]  # event, fields
T = TypeVar("T")


def log_warning(event: str, fields: dict[str, str]) -> None:
    """Logs a warning through structlog, imported only now: `status` does not otherwise need it
    (its import is about a third of the command's start-up CPU) and passes its own `warn`."""
    import structlog

    structlog.get_logger(__name__).warning(event, **fields)


INDEX_NAME = "reports-index.sqlite3"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def default_path(state_dir: Path) -> Path:
    """Returns where the index of the reports lives, given the state directory."""
    return state_dir / INDEX_NAME


@dataclass(frozen=True)
class Entry:
    """What the index knows of one report: the retention view plus status' filter columns."""

    name: str
    job: str
    database: str
    status: str
    started: datetime
    files: tuple[str, ...]

    def backup(self) -> Backup:
        """Returns retention's view of this report."""
        return Backup(
            key=self.name,
            database=self.database,
            started=self.started,
            successful=self.status == SUCCESS,
            files=self.files,
        )


@dataclass(frozen=True)
class Match:
    """Which reports a query wants: each given field must be equal (`since`: started at or after)."""

    job: str | None = None
    database: str | None = None
    status: str | None = None
    since: datetime | None = None
    exclude: tuple[tuple[str, str], ...] = ()  # (job, database) pairs left out

    def sql(self) -> tuple[str, tuple[object, ...]]:
        """Returns the condition on the `reports` table (" AND ..." or "") and its parameters."""
        conditions: list[str] = []
        params: list[object] = []
        if self.exclude:
            pairs = ", ".join("(?, ?)" for _ in self.exclude)
            conditions.append(f"(job, database) NOT IN (VALUES {pairs})")
            params.extend(encode(text) for pair in self.exclude for text in pair)
        for column, value in (("job", self.job), ("database", self.database)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(encode(value))
        if self.status is not None:
            conditions.append("status = ?")
            params.append(encode(self.status))
        if self.since is not None:
            conditions.append("started_us >= ?")
            params.append(micros(self.since))
        return "".join(f" AND {c}" for c in conditions), tuple(params)


@dataclass(frozen=True)
class Newest:
    """The newest report and the newest SUCCESS of one job and database."""

    job: str
    database: str
    started: datetime
    success: datetime | None


class ReportIndex:
    """The reports directory as of the last `refresh`, answered from the index.

    Every query runs against the index file; when that breaks (deleted, overwritten, locked for
    longer than `BUSY_TIMEOUT_S`, not writable and out of date), the index is rebuilt, or built
    in memory, and the query answered from there. `warn` is told when that happens.
    """

    def __init__(self, reports_dir: Path, index_path: Path | None, warn: Warn = log_warning):
        self.reports_dir = reports_dir
        self.index_path = index_path
        self._warn = warn
        self._conn: sqlite3.Connection | None = None
        self._memory = index_path is None  # no file, or given up on it for this object's life
        self._writable = True
        self._identity: tuple[int, int] | None = None  # the index file's device and inode
        self._listing: Listing | None = None
        self._listed_ns = 0  # when that listing began (time.monotonic_ns)
        self._synced = False
        self._transient: dict[bytes, str] = {}  # unreadable now: name -> why
        self._listing_error = ""

    def refresh(self) -> None:
        """Lists the reports directory once and brings the index in line with it."""
        listed_ns = time.monotonic_ns()  # before the listing: what it can show is from then on
        try:
            listing = index_db.list_reports(self.reports_dir)
        except FileNotFoundError:
            listing = {}  # not created yet: no reports, as a full read finds
        except OSError as exc:
            self._unlistable(f"{self.reports_dir}: cannot list: {exc.strerror}")
            return
        if self._listing_error or (self._conn is not None and self._file_replaced()):
            self._close()  # back from an unlistable directory, or the file is another now
        self._listing_error = ""
        self._listing, self._listed_ns = listing, listed_ns
        self._synced = False
        self._use(lambda _conn: None)

    def _unlistable(self, message: str) -> None:
        """Answers "nothing" with `message` as the one warning ("0 reports" would be a lie).

        The index file is left as it is: the directory's reports are still there.
        """
        self._close()
        self._listing_error = message
        self._listing = {}
        self._conn = index_db.memory_connection()
        self._transient = index_db.sync(self._conn, self.reports_dir, {}, 0, writable=True)
        self._synced = True

    def _file_replaced(self) -> bool:
        """Returns whether the index file was deleted or replaced since it was opened."""
        if self._memory or self.index_path is None:
            return False
        return self._identity is None or self._identity != index_db.identity(self.index_path)

    def close(self) -> None:
        """Closes the index (the object is not to be used afterwards)."""
        self._close()

    def warnings(self) -> list[str]:
        """Returns a warning per skipped file, in file name order, as `load_reports` gives."""
        if self._listing_error:
            return [self._listing_error]
        skipped = dict(self._transient)
        skipped.update(self._use(_problems))
        return [
            f"{self.reports_dir / os.fsdecode(name)}: {skipped[name]}"
            for name in sorted(skipped, key=os.fsdecode)
        ]

    def entries(self, match: Match = Match(), limit: int = -1) -> list[Entry]:
        """Returns the valid reports that `match` wants, newest first (at most `limit`)."""
        where, params = match.sql()
        return self._use(lambda conn: _entries(conn, where, params, limit))

    def page(
        self, match: Match = Match(), *, latest: bool, limit: int, offset: int
    ) -> tuple[int, list[str]]:
        """Returns (how many match, the file names of one page), newest first.

        `latest` keeps only the newest matching report per job and database.
        """
        where, params = match.sql()
        return self._use(lambda conn: _page(conn, where, params, latest, limit, offset))

    def newest(self) -> list[Newest]:
        """Returns, per job and database, when its newest report and newest SUCCESS started."""
        return self._use(_newest)

    def newest_success(self, job: str, database: str) -> datetime | None:
        """Returns when the newest SUCCESS of `job` and `database` started, or None."""
        found = self.entries(Match(job=job, database=database, status=SUCCESS), limit=1)
        return found[0].started if found else None

    def backups(self, job: str, database: str) -> list[Backup]:
        """Returns retention's view of every report of `job` and `database`, newest first."""
        where, params = Match(job=job, database=database).sql()
        return self._use(lambda conn: _backups(conn, database, where, params))

    # --- keeping a usable connection -----------------------------------------------------------

    def _use(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Returns `query` run on an index in step with the last listing, repairing it first."""
        if self._listing is None:
            raise RuntimeError("ReportIndex.refresh() must come before its first query")
        for attempt in range(3):
            opening = self._conn is None
            try:
                conn = self._connection()
                opening = False
                if not self._synced:
                    writable = self._writable or self._memory
                    self._transient = index_db.sync(
                        conn, self.reports_dir, self._listing, self._listed_ns, writable
                    )
                    self._synced = True
                return query(conn)
            except (sqlite3.Error, OSError, index_db.CannotUpdate) as exc:
                if self._memory or self._listing_error:
                    raise  # an index in memory does not break: a bug, with its traceback
                self._recover(exc, opening=opening, last=attempt > 0)
        raise AssertionError("unreachable")  # pragma: no cover: the third try is in memory

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open() if not self._memory else index_db.memory_connection()
            self._synced = False
        return self._conn

    def _open(self) -> sqlite3.Connection:
        """Returns a connection to the index file, created (mode 0640) when missing."""
        assert self.index_path is not None
        with contextlib.suppress(OSError):
            index_db.create(self.index_path)
        # Writing needs the file and, for the rollback journal, its directory. Who may not
        # write still gets answers from the index while it is up to date.
        path = self.index_path
        self._writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        conn = index_db.connect(path, self._writable)
        self._identity = index_db.identity(path)
        return conn

    def _recover(self, exc: BaseException, *, opening: bool, last: bool) -> None:
        """Gives up the broken connection: the next use rebuilds the index, or builds it in
        memory (on the last try, when it stays locked, when this user cannot write it, or when
        the file cannot be opened at all)."""
        self._close()
        fields = {"index": str(self.index_path), "error": str(exc) or type(exc).__name__}
        code = getattr(exc, "sqlite_errorcode", None)
        if last or not self._writable or code in {_SQLITE_BUSY, _SQLITE_LOCKED}:
            self._warn("report index not usable, reading every report", fields)
            self._memory = True
        elif index_db.is_corrupt(exc):
            self._warn("report index corrupt, rebuilding it", fields)
            assert self.index_path is not None
            with contextlib.suppress(OSError):  # if it stays, the next try gives up on it
                index_db.remove(self.index_path)
        elif opening:
            self._warn("report index not usable, reading every report", fields)
            self._memory = True
        else:  # deleted or replaced under us, or a failed write: open whatever is there now
            self._warn("report index broke while in use, rebuilding it", fields)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.rollback()
            self._conn.close()
            self._conn = None
        self._synced = False


@contextlib.contextmanager
def snapshot(
    reports_dir: Path, index_path: Path | None, warn: Warn = log_warning
) -> Iterator[ReportIndex]:
    """Yields the reports as they are now (one listing), through the index at `index_path`.

    Without an index path, or when the index cannot be used, the answers come from an index
    built in memory from a full read: same answers, slower. `warn` is told when the index was
    rebuilt or not used.
    """
    index = ReportIndex(reports_dir, index_path, warn)
    try:
        index.refresh()
        yield index
    finally:
        index.close()


# --- queries -------------------------------------------------------------------------------------


def _problems(conn: sqlite3.Connection) -> dict[bytes, str]:
    rows = conn.execute("SELECT name, problem FROM reports WHERE problem IS NOT NULL")
    return {bytes(name): decode(problem) for name, problem in rows}


def _entries(
    conn: sqlite3.Connection, where: str, params: tuple[object, ...], limit: int = -1
) -> list[Entry]:
    """Returns the valid reports matching an SQL condition (" AND ..."), newest first."""
    rows = conn.execute(
        "SELECT name, job, database, status, started_us, files FROM reports "
        f"WHERE problem IS NULL{where} ORDER BY started_us DESC, name DESC LIMIT ?",
        (*params, limit),
    )
    return [_entry(row) for row in rows]


def _entry(row: tuple[bytes, bytes, bytes, bytes, int, bytes]) -> Entry:
    name, job, database, status, started_us, files = row
    return Entry(
        name=os.fsdecode(bytes(name)),
        job=decode(job),
        database=decode(database),
        status=decode(status),
        started=from_micros(started_us),
        files=_files(files),
    )


def _files(column: bytes) -> tuple[str, ...]:
    return tuple(decode(column).split("\0")) if column else ()


def _backups(
    conn: sqlite3.Connection, database: str, where: str, params: tuple[object, ...]
) -> list[Backup]:
    """Returns retention's view of the reports of one database matching `where`, newest first.

    Built straight from the rows: a run reads every report of its databases this way, tens of
    thousands on a host that keeps its history.
    """
    rows = conn.execute(
        "SELECT name, status = ?, started_us, files FROM reports "
        f"WHERE problem IS NULL{where} ORDER BY started_us DESC, name DESC",
        (encode(SUCCESS), *params),
    )
    return [
        Backup(os.fsdecode(name), database, from_micros(started_us), bool(ok), _files(files))
        for name, ok, started_us, files in rows
    ]


def _page(
    conn: sqlite3.Connection,
    where: str,
    params: tuple[object, ...],
    latest: bool,
    limit: int,
    offset: int,
) -> tuple[int, list[str]]:
    """Returns `ReportIndex.page`'s answer, counted and paged in one read transaction."""
    matching = f"SELECT name, started_us FROM reports WHERE problem IS NULL{where}"
    counted, params_twice = matching, params
    if latest:
        # Per (job, database), the newest matching report, found through reports_by_job;
        # in the inner query the unqualified columns of `where` are those of `s`.
        counted = f"SELECT DISTINCT job, database FROM reports WHERE problem IS NULL{where}"
        newest = (
            "SELECT (SELECT s.name FROM reports AS s WHERE s.job = g.job AND s.database = "
            f"g.database AND s.problem IS NULL{where} ORDER BY s.started_us DESC, "
            f"s.name DESC LIMIT 1) FROM ({counted}) AS g"
        )
        matching = f"SELECT name, started_us FROM reports WHERE name IN ({newest})"
        params_twice = (*params, *params)
    with index_db.transaction(conn, "BEGIN"):
        (total,) = conn.execute(f"SELECT count(*) FROM ({counted})", params).fetchone()
        names = conn.execute(
            f"{matching} ORDER BY started_us DESC, name DESC LIMIT ? OFFSET ?",
            (*params_twice, limit, offset),
        ).fetchall()
    return total, [os.fsdecode(name) for name, _ in names]


def _newest(conn: sqlite3.Connection) -> list[Newest]:
    rows = conn.execute(
        "SELECT job, database, max(started_us), max(CASE WHEN status = ? THEN started_us END) "
        "FROM reports WHERE problem IS NULL GROUP BY job, database",
        (encode(SUCCESS),),
    )
    return [
        Newest(
            job=decode(job),
            database=decode(database),
            started=from_micros(newest_us),
            success=from_micros(success_us) if success_us is not None else None,
        )
        for job, database, newest_us, success_us in rows
    ]
