"""An index of the reports directory, so `status` and retention need not parse every report.

The JSON reports stay the source of truth; the index (SQLite, stdlib `sqlite3`, default
``/var/lib/db-backup/reports-index.sqlite3`` beside the state file) is a cache of what `status`
and retention need from each report: job, database, status, start time and the file names
retention may delete. Every use begins with a listing of the reports directory with one stat per
file (inode, size, mtime, ctime): a report that appeared, changed or disappeared since the index
last saw it is re-read (or dropped) before the answer is given, so the index never answers from
a file that is not there as it is now. Only the changed files are parsed.

- Missing, corrupt (not a database, malformed), of another index format or db-backup version, or
  built for another reports directory: the index is rebuilt from the reports.
- Concurrent users (a daemon run, a manual run, an operator's `status`) are serialised by
  SQLite's own locking; changes go in one transaction, so a process killed at any line leaves the
  old index or the new one (SQLite's rollback journal), never a mix.
- A report whose ctime is under `RACY_SECONDS` old may still change within the file system's
  timestamp granularity without changing its stat; it is indexed but re-read next time (git's
  "racily clean" rule).
- Who cannot write the index reads it while it is up to date; otherwise (or without access to
  the state directory at all) the answers come from an in-memory index built for that one call:
  the same answers, only as slow as a full read.
- Written without fsync (`synchronous=OFF`): a killed process loses nothing the OS has, and an
  OS crash means a new boot, after which the index is rebuilt (the boot id is in its metadata).
- Malformed reports are remembered with the reason they are skipped, and give the same warnings
  as `report.load_reports`; an unreadable file (permissions) is not remembered, since another
  user may read it.

A retention step need not list the directory at all (`snapshot(..., quick=True)`): see
"Skipping the listing" below for when, and why it answers as a full read does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from db_backup import __version__
from db_backup.reports.model import SUCCESS, StoredReport, parse_report
from db_backup.reports.retention import Backup, backup_of
from db_backup.util.clock import parse_utc

Warn = Callable[[str, dict[str, str]], None]  # event, fields
T = TypeVar("T")


def log_warning(event: str, fields: dict[str, str]) -> None:
    """Logs a warning through structlog, imported only now: `status` does not otherwise need it
    (its import is about a third of the command's start-up CPU) and passes its own `warn`."""
    import structlog

    structlog.get_logger(__name__).warning(event, **fields)


INDEX_NAME = "reports-index.sqlite3"
INDEX_FORMAT = "1"
RACY_SECONDS = 2.0
BUSY_TIMEOUT_S = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The listing is skipped only while the last one is younger than this (see `_stamp_current`):
# a day, so an hourly job lists in one retention step of 24.
FULL_LISTING_EVERY_S = 86400.0
# How long an own change may wait for the directory's stamp to become trustworthy (one clock
# tick is enough: 4 ms at HZ=250).
SETTLE_WAIT_S = 0.05
# Linux's CLOCK_REALTIME_COARSE (not in Python's `time`): the clock that stamps files.
_COARSE_CLOCK = 5
# File systems whose directory stamps the kernel sets from that clock, to the nanosecond, and
# whose stat is never served from a cache (unlike NFS, FUSE, 9p, CIFS, overlay).
LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs"})
_STAMP = "dir_stamp"  # meta: the directory's stat at which the index holds exactly its names
_LISTED = "listed_ns"  # meta: wall time of the full listing that stamp descends from
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

Signature = bytes  # inode, size, mtime_ns, ctime_ns packed with _SIGNATURE
_SIGNATURE = struct.Struct("<Qqqq")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    name BLOB PRIMARY KEY,      -- file name, os.fsencode
    sig BLOB NOT NULL,          -- inode, size, mtime_ns, ctime_ns when it was read
    racy INTEGER NOT NULL,      -- 1: re-read on next use (changed too recently to trust its stat)
    problem BLOB,               -- why the file is skipped, NULL for a report
    job BLOB,
    database BLOB,
    status BLOB,
    started_us INTEGER,         -- startedAt, microseconds since the epoch (UTC)
    files BLOB                  -- retention's file names, NUL-separated
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_by_job ON reports (job, database, started_us, name);
CREATE TABLE IF NOT EXISTS report_files (
    name BLOB NOT NULL,         -- the report
    file BLOB NOT NULL,         -- a file name it names (retention's view)
    PRIMARY KEY (name, file)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS report_files_by_file ON report_files (file);
"""
_COLUMNS = "name, sig, racy, problem, job, database, status, started_us, files"
Row = tuple[bytes, bytes, int, bytes | None, bytes, bytes, bytes, int, bytes]


def default_path(state_dir: Path) -> Path:
    """Returns where the index of the reports lives, given the state directory."""
    return state_dir / INDEX_NAME


def encode(text: str) -> bytes:
    """Returns text as stored in the index (UTF-8; JSON may carry lone surrogates)."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    """Returns the text of an index column written by `encode`."""
    return data.decode("utf-8", "surrogatepass")


def micros(moment: datetime) -> int:
    """Returns an aware datetime as integer microseconds since the epoch (exact)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


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


@dataclass
class Snapshot:
    """The index as it matches the reports directory at one moment, inside one transaction."""

    reports_dir: Path
    conn: sqlite3.Connection
    transient: dict[bytes, str] = field(default_factory=dict)  # unreadable now: name -> why
    listing_error: str = ""
    unchecked: bool = False  # taken without a listing: rows are checked as they are used
    checked: set[bytes] = field(default_factory=set)

    def warnings(self) -> list[str]:
        """Returns a warning per skipped file, in file name order, as `load_reports` gives."""
        if self.listing_error:
            return [self.listing_error]
        skipped = dict(self.transient)
        for name, problem in self.conn.execute(
            "SELECT name, problem FROM reports WHERE problem IS NOT NULL"
        ):
            skipped[bytes(name)] = decode(problem)
        return [
            f"{self.reports_dir / os.fsdecode(name)}: {skipped[name]}"
            for name in sorted(skipped, key=os.fsdecode)
        ]

    def entries(
        self, where: str = "", params: tuple[Any, ...] = (), limit: int = -1
    ) -> list[Entry]:
        """Returns the valid reports matching an SQL condition, newest first (at most `limit`)."""
        condition = f"AND ({where})" if where else ""
        rows = self.conn.execute(
            "SELECT name, job, database, status, started_us, files FROM reports "
            f"WHERE problem IS NULL {condition} ORDER BY started_us DESC, name DESC LIMIT ?",
            (*params, limit),
        )
        return [
            Entry(
                name=os.fsdecode(bytes(name)),
                job=decode(job),
                database=decode(database),
                status=decode(status),
                started=EPOCH + timedelta(microseconds=started_us),
                files=tuple(decode(f) for f in files.split(b"\0") if f),
            )
            for name, job, database, status, started_us, files in rows
        ]

    def page(
        self, where: str, params: tuple[Any, ...], *, latest: bool, limit: int, offset: int
    ) -> tuple[int, list[str]]:
        """Returns (how many match, the file names of one page), newest first.

        `latest` keeps only the newest matching report per job and database.
        """
        condition = f"AND ({where})" if where else ""
        matching = f"SELECT name, started_us FROM reports WHERE problem IS NULL {condition}"
        counted, params_twice = matching, params
        if latest:
            # Per (job, database), the newest matching report, found through reports_by_job;
            # in the inner query the unqualified columns of `where` are those of `s`.
            counted = (
                f"SELECT DISTINCT job, database FROM reports WHERE problem IS NULL {condition}"
            )
            newest = (
                "SELECT (SELECT s.name FROM reports AS s WHERE s.job = g.job AND s.database = "
                f"g.database AND s.problem IS NULL {condition} ORDER BY s.started_us DESC, "
                f"s.name DESC LIMIT 1) FROM ({counted}) AS g"
            )
            matching = f"SELECT name, started_us FROM reports WHERE name IN ({newest})"
            params_twice = (*params, *params)
        (total,) = self.conn.execute(f"SELECT count(*) FROM ({counted})", params).fetchone()
        names = self.conn.execute(
            f"{matching} ORDER BY started_us DESC, name DESC LIMIT ? OFFSET ?",
            (*params_twice, limit, offset),
        )
        return total, [os.fsdecode(name) for name, _ in names]

    def backups(self, job: str, database: str) -> list[Backup]:
        """Returns retention's view of every report of `job` and `database`."""
        found = self.entries("job = ? AND database = ?", (encode(job), encode(database)))
        return [entry.backup() for entry in found]

    def retention_view(
        self, job: str, database: str, *, cutoff: datetime, keep_last: int
    ) -> list[Backup]:
        """Returns the reports of `job` and `database` that retention's choice depends on.

        `retention.choose_expired` gives the same expired backups and, for their files, the
        same "still named" answer from this list as from every report of the database, as
        long as its `now - days` is not earlier than `cutoff`: the list holds every report
        started before `cutoff` (the only ones that can expire), the newest `keep_last`
        successful ones (which decide what is protected), and any newer report naming a file
        of an old one. So a retention step reads a handful of rows, not the whole history.

        In a snapshot taken without a listing (`quick`), the rows of the list, and of the
        reports that could name a file of an old one, are checked against their files first
        (re-read when changed, dropped when gone), until the list is made of checked rows
        only; see "Skipping the listing" for why the other rows need no check.
        """
        while True:
            found = self._retention_entries(job, database, cutoff=cutoff, keep_last=keep_last)
            if not self.unchecked:
                break
            names = {os.fsencode(entry.name) for entry in found}
            names |= self._possible_sharers([entry for entry in found if entry.started < cutoff])
            todo = names - self.checked
            if not todo:
                break
            self._check(todo)
        return [entry.backup() for entry in found]

    def _retention_entries(
        self, job: str, database: str, *, cutoff: datetime, keep_last: int
    ) -> list[Entry]:
        key = (encode(job), encode(database))
        limit = micros(cutoff)
        old = self.entries("job = ? AND database = ? AND started_us < ?", (*key, limit))
        newest = self.entries(
            "job = ? AND database = ? AND status = ? AND started_us >= ?",
            (*key, encode(SUCCESS), limit),
            limit=keep_last,
        )
        # From the old reports' files to the reports naming them ("+": not through
        # reports_by_job, which would visit every newer report of the database).
        sharing = self.entries(
            "+job = ? AND +database = ? AND +started_us >= ? AND name IN (SELECT f.name FROM "
            "report_files AS f JOIN report_files AS o ON o.file = f.file JOIN reports AS r ON "
            "r.name = o.name WHERE r.job = ? AND r.database = ? AND r.started_us < ? "
            "AND r.problem IS NULL)",
            (*key, limit, *key, limit),
        )
        found = {entry.name: entry for entry in (*old, *newest, *sharing)}
        # In the order of a full read: choose_expired breaks ties of startedAt by list order.
        return sorted(found.values(), key=lambda e: (e.started, e.name), reverse=True)

    def _possible_sharers(self, old: list[Entry]) -> set[bytes]:
        """Returns the names of the reports that may name a file of one of `old`, indexed or not.

        `retention.owned_by` lets a report name only files of its own stem, so two reports can
        share a file only when one's stem is the other's plus "_globals" (`A_globals.sql` is
        A's globals file and the plain dump of a report `A_globals.json`): the one report that
        an edit in place, or an addition not seen, could make name a file of an old report
        while outside the list. Checking a name that is no file costs one failed stat.
        """
        return {
            os.fsencode(entry.name.removesuffix(".json") + "_globals.json")
            for entry in old
            if entry.name.endswith(".json")
        }

    def _check(self, names: set[bytes]) -> None:
        """Brings the rows of `names` in line with their files (stat; re-read what changed)."""
        listing = _stat_names(self.reports_dir, names)
        plan = _plan(self.conn, self.reports_dir, listing, only=names)
        _apply(self.conn, plan)
        self.checked |= names
        if plan.transient:
            # Not remembered (another user may read it): list again next time, so the warning
            # is given then too, as a full read would.
            self.transient.update(plan.transient)
            _forget_stamp(self.conn)


def backups(reports_dir: Path, index_path: Path | None, job: str, database: str) -> list[Backup]:
    """Returns retention's view of every report of `job` and `database`, through the index."""
    with snapshot(reports_dir, index_path) as snap:
        return snap.backups(job, database)


def retention_backups(
    reports_dir: Path,
    index_path: Path | None,
    job: str,
    database: str,
    *,
    days: int,
    keep_last: int,
    now: datetime,
    quick: bool = False,
) -> list[Backup]:
    """Returns what `choose_expired(..., days, keep_last, now=later)` needs (see `retention_view`).

    `now` must not be later than the `now` given to `choose_expired`; `quick` as for `snapshot`.
    """
    with snapshot(reports_dir, index_path, quick=quick) as snap:
        return snap.retention_view(
            job, database, cutoff=now - timedelta(days=days), keep_last=keep_last
        )


# --- keeping the index in step with the directory -------------------------------------------


def _signature(st: os.stat_result) -> Signature:
    return _SIGNATURE.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _listing(reports_dir: Path) -> dict[bytes, Signature | None]:
    """Returns every `*.json` name in the directory with its stat (None: stat failed)."""
    found: dict[bytes, Signature | None] = {}
    with os.scandir(os.fsencode(reports_dir)) as entries:  # bytes: names as stored
        for entry in entries:
            if entry.name.endswith(b".json"):
                try:
                    found[entry.name] = _signature(entry.stat())
                except OSError:
                    found[entry.name] = None
    return found


def _stat_names(reports_dir: Path, names: set[bytes]) -> dict[bytes, Signature | None]:
    """Returns `_listing`'s answer for `names` alone (those that exist), without listing."""
    found: dict[bytes, Signature | None] = {}
    for name in names:
        try:
            found[name] = _signature(os.stat(reports_dir / os.fsdecode(name)))
        except FileNotFoundError:
            pass
        except OSError:
            found[name] = None
    return found


@dataclass(frozen=True)
class _Parsed:
    """One file read for the index: its row, or (row None) a reason it cannot be remembered."""

    row: Row | None
    transient: str = ""


def _read(reports_dir: Path, name: bytes) -> _Parsed:
    """Reads one report (stat taken before the read, so a later change shows as a new stat)."""
    path = reports_dir / os.fsdecode(name)
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            raw = handle.read()
    except OSError as exc:
        return _Parsed(None, f"skipped, not readable JSON ({exc})")
    signature = _signature(st)
    racy = int(time.time_ns() - st.st_ctime_ns < RACY_SECONDS * 1e9)
    document, problem = parse_report(raw)
    if document is None:
        row: Row = (name, signature, racy, encode(problem), b"", b"", b"", 0, b"")
        return _Parsed(row)
    backup = backup_of(StoredReport(path, document))
    files = b"\0".join(encode(f) for f in backup.files)  # plain names: no NUL
    row = (
        name,
        signature,
        racy,
        None,
        encode(str(document.get("job", ""))),
        encode(document["database"]),
        encode(document["status"]),
        micros(parse_utc(document["startedAt"])),
        files,
    )
    return _Parsed(row)


def _stored(
    conn: sqlite3.Connection, only: set[bytes] | None = None
) -> tuple[dict[bytes, Signature], set[bytes]]:
    """Returns what the index holds (of `only`): name -> stat signature, and the names to re-read."""
    if only is not None:
        rows = [
            row
            for name in only
            for row in conn.execute("SELECT name, sig, racy FROM reports WHERE name = ?", (name,))
        ]
        return {name: sig for name, sig, _ in rows}, {name for name, _, racy in rows if racy}
    signatures: dict[bytes, Signature] = dict(conn.execute("SELECT name, sig FROM reports"))
    racy = {name for (name,) in conn.execute("SELECT name FROM reports WHERE racy")}
    return signatures, racy


def _stored_row(conn: sqlite3.Connection, name: bytes) -> Row | None:
    found = conn.execute(f"SELECT {_COLUMNS} FROM reports WHERE name = ?", (name,)).fetchone()
    return None if found is None else tuple(found)


@dataclass
class _Plan:
    """What must change in the index to match a listing."""

    delete: list[bytes] = field(default_factory=list)
    upsert: list[Row] = field(default_factory=list)
    settle: list[Row] = field(default_factory=list)  # same content, no longer too recent
    transient: dict[bytes, str] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        """Returns whether the index differs from the directory in content."""
        return bool(self.delete or self.upsert)


def _content(row: Row) -> tuple[Any, ...]:
    return row[:2] + row[3:]  # all but the racy flag


def _plan(
    conn: sqlite3.Connection,
    reports_dir: Path,
    listing: dict[bytes, Signature | None],
    only: set[bytes] | None = None,
) -> _Plan:
    """Returns the changes that bring the index in line with `listing`; reads what changed.

    With `only`, the listing covers those names only, and so does the plan.
    """
    stored, racy = _stored(conn, only)
    if listing == stored and not racy:
        return _Plan()  # the common case, compared in C
    plan = _Plan(delete=sorted(stored.keys() - listing.keys()))
    changed = {name for name, _ in listing.items() - stored.items()}
    for name in sorted(changed | (racy & listing.keys())):
        parsed = _read(reports_dir, name)
        if parsed.row is None:
            plan.transient[name] = parsed.transient
            if name in stored:
                plan.delete.append(name)
            continue
        before = _stored_row(conn, name) if name in stored else None
        if before is None or _content(before) != _content(parsed.row):
            plan.upsert.append(parsed.row)
        elif before != parsed.row:
            plan.settle.append(parsed.row)
    return plan


def _apply(conn: sqlite3.Connection, plan: _Plan) -> None:
    rows = [*plan.upsert, *plan.settle]
    gone = [(name,) for name in plan.delete] + [(row[0],) for row in rows]
    conn.executemany("DELETE FROM reports WHERE name = ?", gone)
    conn.executemany("DELETE FROM report_files WHERE name = ?", gone)
    marks = ", ".join("?" * len(_COLUMNS.split(",")))
    conn.executemany(f"INSERT INTO reports ({_COLUMNS}) VALUES ({marks})", rows)
    conn.executemany(
        "INSERT OR IGNORE INTO report_files (name, file) VALUES (?, ?)",
        [
            (row[0], file)
            for row in rows
            if row[3] is None  # a report, not a skipped file
            for file in row[8].split(b"\0")  # files
            if file
        ],
    )


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _meta_wanted(reports_dir: Path) -> dict[str, str]:
    return {
        "format": INDEX_FORMAT,
        "version": __version__,
        "reports_dir": os.fsdecode(os.path.abspath(reports_dir)),
        # Written without fsync (synchronous=OFF): safe against a killed process, not against
        # an OS crash, which always means a new boot; so an index from another boot is rebuilt.
        "boot_id": _boot_id(),
    }


def _schema_of(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return sorted(conn.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))


@functools.cache
def _expected_schema() -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _create_tables(conn)
        return _schema_of(conn)
    finally:
        conn.close()


def _meta_matches(conn: sqlite3.Connection, reports_dir: Path) -> bool:
    """Returns whether the index has our tables, format and version, for this directory."""
    if _schema_of(conn) != _expected_schema():
        return False  # empty, an older layout, or altered by hand
    found = dict(conn.execute("SELECT key, value FROM meta WHERE key NOT IN (?, ?)", _STAMP_KEYS))
    return found == _meta_wanted(reports_dir)


def _create_tables(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):  # no ";" inside: execute() runs one statement
        if statement.strip():
            conn.execute(statement)


def _reset(conn: sqlite3.Connection, reports_dir: Path) -> None:
    """Empties the index and stamps it for this format, version and reports directory."""
    for kind, name, _ in _schema_of(conn):
        if kind in {"table", "view"} and not name.startswith("sqlite_"):
            quoted = name.replace('"', '""')
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{quoted}"')
    _create_tables(conn)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", _meta_wanted(reports_dir).items())


# --- skipping the listing ---------------------------------------------------------------------
#
# A retention step (`snapshot(..., quick=True)`) answers without listing the directory when the
# index knows it holds exactly the directory's names: the meta row `dir_stamp` holds the
# directory's stat (device, inode, mtime, ctime) at a moment the index held exactly its `*.json`
# names, and the directory still has that stat. Creating, removing or renaming a file changes
# the directory's mtime and ctime, so an unchanged stat means the same names, provided any
# later change gives a *different* stat. That is not so within the timestamps' granularity
# (a clock tick of a few ms): a stamp is only recorded once it is "settled" (`_settled_stat`):
# the file system stamps from the kernel's coarse clock to the nanosecond (local file systems
# only: NFS or FUSE stamps come from elsewhere, and NFS serves a stat from its cache), and that
# clock, read before the stat, is already past the directory's ctime, so every later change
# gets a later ctime (git's "racily clean" rule, with the tick as margin).
#
# The stamp is recorded by a full listing (any `snapshot`, status' too) and moved on by every
# change this program makes to the directory (`own_change`: a run's report, its rewrite with
# retention's result, retention's removals): holding the index's write lock, it checks that the
# stamp is current, makes the change, updates the rows of the names it changed and records the
# directory's settled stat after it. Other runs (another job at the same moment) take the same
# lock, so they queue and each finds the stamp its predecessor left. Any other change (by hand,
# by an older version, a failed write) leaves the stamp behind: the next step lists, as before.
# What `own_change` cannot tell apart is someone else's change made in the same few
# milliseconds as its own; so a stamp is trusted only while its last full listing is younger
# than `FULL_LISTING_EVERY_S`, and `status` always lists: such a change is seen within a day.
# Until then it can only make retention keep more: a report not seen is neither expired nor
# counted among those that protect others, and the one kind that could name a file retention
# deletes is looked for by name (the second point below).
#
# Without a listing, files are not stat'ed either, except those `retention_view` reads: each of
# its rows is compared with its file (inode, size, mtime, ctime), re-read when it differs (or is
# too young to trust), dropped when gone, and the view computed again until it holds checked
# rows only. A row outside the view can only be stale through an edit in place (anything else
# changes the directory). Such an edit cannot make retention delete what a full read keeps:
# - no expired report becomes kept: what protects a report is `keep_last` successful reports
#   newer than it, and the view's (checked) ones are in the full read too;
# - a kept report outside the view that names a file of an expired one: a report names only
#   files of its own stem (`retention.owned_by`), so only `A_globals.json` can name a file of
#   `A.json` (`A_globals.sql`); that name is checked too, indexed or not (`_possible_sharers`);
# - everything else an edit could do (an older start, a success, a new report left unseen)
#   adds reports to expire or to protect others: a full read deletes more, never less.
# Warnings (malformed files) come from the rows as last read: an edit in place outside the view
# is warned about at the next listing.


def _dir_stamp(st: os.stat_result) -> str:
    return f"{st.st_dev} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}"


_STAMP_KEYS = (_STAMP, _LISTED)


@functools.cache
def _file_system(device: int) -> str:
    """Returns the type of the file system mounted from `device` ("" when not found)."""
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return ""
    for line in mounts.splitlines():
        fields = line.split(" ")
        if len(fields) > 7 and fields[2] == wanted and "-" in fields[6:]:
            return fields[fields.index("-", 6) + 1]
    return ""


def _coarse_now() -> int:
    """Returns the time the kernel would stamp a file changed now, in ns (to the last tick)."""
    return time.clock_gettime_ns(_COARSE_CLOCK)


def _settled_stat(reports_dir: Path, wait_s: float = 0.0) -> os.stat_result | None:
    """Returns the directory's stat if every later change must change it, else None.

    Sleeps up to `wait_s` in all for the clock to pass the directory's ctime (one tick does).
    """
    slept = 0.0
    while True:
        try:
            before = _coarse_now()
            st = os.stat(reports_dir)
        except OSError:
            return None
        if _file_system(st.st_dev) not in LOCAL_FILE_SYSTEMS:
            return None  # not stamped by our clock, or its stat may come from a cache
        if st.st_ctime_ns % 1_000_000_000 == 0:
            return None  # whole seconds (ext4 with small inodes): a tick is not enough
        if st.st_ctime_ns < before:
            return st
        pause = (st.st_ctime_ns - before) / 1e9 + _coarse_tick()
        if slept + pause > wait_s:  # what was asked for, not the time passed: a busy machine
            return None  # may oversleep, and then the next stat settles
        time.sleep(pause)
        slept += pause


@functools.cache
def _coarse_tick() -> float:
    return time.clock_getres(_COARSE_CLOCK)


def _stamp_current(conn: sqlite3.Connection, reports_dir: Path) -> bool:
    """Returns whether the index holds exactly the directory's names (see above)."""
    found = dict(conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?)", _STAMP_KEYS))
    if len(found) != 2:
        return False
    age_ns = time.time_ns() - int(found[_LISTED])
    if not 0 <= age_ns <= FULL_LISTING_EVERY_S * 1e9:
        return False
    try:
        return _dir_stamp(os.stat(reports_dir)) == found[_STAMP]
    except OSError:
        return False


def _record_stamp(conn: sqlite3.Connection, st: os.stat_result, listed_ns: int | None) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_STAMP, _dir_stamp(st)))
    if listed_ns is not None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_LISTED, str(listed_ns)))


def _forget_stamp(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM meta WHERE key IN (?, ?)", _STAMP_KEYS)


class Unlistable(Exception):
    """The reports directory exists but cannot be listed; the message is the warning."""


def _sync(
    conn: sqlite3.Connection,
    reports_dir: Path,
    writable: bool,
    quick: bool = False,
    stamp: bool = True,
) -> Snapshot:
    """Brings the index in line with the directory and leaves its transaction open.

    A writer takes SQLite's write lock first (readers go on), so the changes apply to what
    the index holds at that moment and it matches the listing exactly. A read-only user gets
    an answer only when nothing needs writing. Raises `sqlite3.OperationalError` when a needed
    write is impossible (read-only, locked), `Unlistable` when the directory cannot be listed.
    `quick` skips the listing when the stamp allows it (see "Skipping the listing"); `stamp`
    records the directory's stamp for later quick uses.
    """
    conn.execute("BEGIN IMMEDIATE" if writable else "BEGIN")
    current = quick and writable and _meta_matches(conn, reports_dir)
    if current and _stamp_current(conn, reports_dir):
        return Snapshot(reports_dir, conn, unchecked=True)
    # Taken before the listing it vouches for, waiting (a tick at most) for a change just made,
    # such as the run's own report, to settle: else the next steps would list too.
    settled = _settled_stat(reports_dir, SETTLE_WAIT_S) if writable and stamp else None
    listed_ns = time.time_ns()
    try:
        listing = _listing(reports_dir)
    except FileNotFoundError:
        listing = {}  # not created yet: no reports, as a full read finds
    except OSError as exc:
        raise Unlistable(f"{reports_dir}: cannot list: {exc.strerror}") from None
    if not _meta_matches(conn, reports_dir):
        if not writable:
            raise sqlite3.OperationalError(
                "the index is out of date and this user cannot rebuild it"
            )
        _reset(conn, reports_dir)
    plan = _plan(conn, reports_dir, listing)
    if writable:
        _apply(conn, plan)
        if settled is not None and not plan.transient:  # unreadable files: warn again next time
            _record_stamp(conn, settled, listed_ns)
        else:
            _forget_stamp(conn)
    elif plan.writes:
        raise sqlite3.OperationalError("the index is out of date and this user cannot update it")
    return Snapshot(reports_dir, conn, plan.transient)


# --- opening ----------------------------------------------------------------------------------


def _create(path: Path) -> None:
    """Creates an empty index file, mode 0640, owned like its directory when we are root.

    The daemon (user postgres) and an operator's `status` (root) share the file: one root
    created must stay writable for the daemon.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return
    try:
        if os.geteuid() == 0:
            parent = path.parent.stat()
            os.fchown(fd, parent.st_uid, parent.st_gid)
    finally:
        os.close(fd)


def _connect(path: Path, writable: bool) -> sqlite3.Connection:
    mode = "rw" if writable else "ro"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}",
        uri=True,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # transactions are explicit
        check_same_thread=False,
    )
    conn.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm files whose owner could differ
    conn.execute("PRAGMA synchronous=OFF")  # a cache: see _meta_wanted for why this is safe
    return conn


def _remove(path: Path) -> None:
    for victim in (path, path.with_name(path.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in {_SQLITE_CORRUPT, _SQLITE_NOTADB} or "malformed" in str(exc)


def _open_synced(path: Path, reports_dir: Path, warn: Warn, quick: bool = False) -> Snapshot:
    """Returns a snapshot from the index file; rebuilds a corrupt file once."""
    for attempt in (1, 2):
        conn: sqlite3.Connection | None = None
        try:
            with contextlib.suppress(OSError):
                _create(path)
            # Writing needs the file and, for the rollback journal, its directory. Who may not
            # write still gets answers from the index while it is up to date.
            writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
            conn = _connect(path, writable)
            return _sync(conn, reports_dir, writable, quick)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if attempt == 1 and _is_corrupt(exc) and not isinstance(exc, sqlite3.OperationalError):
                warn("report index corrupt, rebuilding it", {"index": str(path), "error": str(exc)})
                _remove(path)
                continue
            raise
        except BaseException:
            if conn is not None:
                conn.close()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _in_memory(reports_dir: Path) -> Snapshot:
    """Returns a snapshot built in memory from a full read of the directory."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN")
    _reset(conn, reports_dir)
    conn.commit()
    return _sync(conn, reports_dir, writable=True, stamp=False)


@contextlib.contextmanager
def snapshot(
    reports_dir: Path, index_path: Path | None, warn: Warn = log_warning, *, quick: bool = False
) -> Iterator[Snapshot]:
    """Yields the reports as they are now, through the index at `index_path` when usable.

    Without an index path, or when the index cannot be used (no access, locked for longer than
    `BUSY_TIMEOUT_S`), the snapshot is built in memory from a full read: same answers, slower.
    `warn` is told when the index was rebuilt or not used. `quick` (for a retention step, which
    asks only `retention_view`) skips listing the directory when the index knows it holds its
    names; `warnings` then come from the index as last listed (see "Skipping the listing").
    """
    snap: Snapshot | None = None
    try:
        if index_path is not None:
            try:
                snap = _open_synced(index_path, reports_dir, warn, quick)
            except (OSError, sqlite3.Error) as exc:
                warn(
                    "report index not usable, reading every report",
                    {"index": str(index_path), "error": str(exc)},
                )
        if snap is None:
            snap = _in_memory(reports_dir)
    except Unlistable as exc:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        _reset(conn, reports_dir)
        snap = Snapshot(reports_dir, conn, listing_error=str(exc))
    try:
        yield snap
        if snap.conn.in_transaction:
            snap.conn.commit()
    finally:
        if snap.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                snap.conn.rollback()
        snap.conn.close()


def own_change(
    reports_dir: Path,
    index_path: Path | None,
    names: Iterable[str],
    change: Callable[[], T],
    warn: Warn = log_warning,
) -> T:
    """Returns `change()`, which creates, replaces or removes the reports `names` (and no other
    `*.json` file), having kept the index in step with it so the next retention step need not
    list the directory (see "Skipping the listing").

    The index's write lock is held across the change. If the index's stamp was current just
    before, the rows of `names` are updated and the stamp moves on to the directory's settled
    stat after the change; otherwise the index is left as it is, to be brought in step by the
    next listing. Trouble with the index never fails the change.
    """
    conn = _locked(index_path)
    if conn is None:
        return change()
    try:
        try:
            known = _meta_matches(conn, reports_dir) and _stamp_current(conn, reports_dir)
        except sqlite3.Error:
            known = False  # corrupt: the next snapshot rebuilds it
        result = change()
        if known:
            try:
                _note(conn, reports_dir, {os.fsencode(name) for name in names})
                conn.commit()
            except sqlite3.Error as exc:
                warn("report index not updated", {"index": str(index_path), "error": str(exc)})
        return result
    finally:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
        conn.close()


def _locked(index_path: Path | None) -> sqlite3.Connection | None:
    """Returns a connection to an existing index holding its write lock, or None."""
    if index_path is None or not index_path.is_file():
        return None  # no index yet: the first snapshot lists anyway
    if not (os.access(index_path, os.W_OK) and os.access(index_path.parent, os.W_OK)):
        return None
    try:
        conn = _connect(index_path, writable=True)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error:
        conn.close()
        return None
    return conn


def _note(conn: sqlite3.Connection, reports_dir: Path, names: set[bytes]) -> None:
    """Updates the rows of `names` and moves the stamp on, after an own change of those names."""
    settled = _settled_stat(reports_dir, SETTLE_WAIT_S)  # first: a later change shows in it
    plan = _plan(conn, reports_dir, _stat_names(reports_dir, names), only=names)
    _apply(conn, plan)
    if settled is not None and not plan.transient:
        _record_stamp(conn, settled, listed_ns=None)
    else:
        _forget_stamp(conn)
