"""The report index's SQLite database: its schema, opening it, and bringing it in line with a
listing of the reports directory (`sync`). `reports.index` answers the queries."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from db_backup import __version__
from db_backup.reports.model import NotAReport, parse_report
from db_backup.reports.retention import backup_of

INDEX_FORMAT = "2"
RACY_SECONDS = 2.0
BUSY_TIMEOUT_S = 30.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
_LISTED = "listed_ns"  # meta: when the listing the index is in line with began (monotonic)

Signature = bytes  # inode, size, mtime_ns, ctime_ns packed with _SIGNATURE
Listing = dict[bytes, Signature | None]  # file name -> its stat (None: the stat failed)
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
CREATE INDEX IF NOT EXISTS reports_racy ON reports (name) WHERE racy = 1;
"""
_COLUMNS = "name, sig, racy, problem, job, database, status, started_us, files"
Row = tuple[bytes, bytes, int, bytes | None, bytes, bytes, bytes, int, bytes]


def encode(text: str) -> bytes:
    """Returns text as stored in the index (UTF-8; JSON may carry lone surrogates)."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    """Returns the text of an index column written by `encode`."""
    return data.decode("utf-8", "surrogatepass")


def micros(moment: datetime) -> int:
    """Returns an aware datetime as integer microseconds since the epoch (exact)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """Returns the aware UTC datetime of `micros`' integer."""
    return EPOCH + timedelta(microseconds=value)


# --- the listing, and reading what changed -------------------------------------------------------


def _signature(st: os.stat_result) -> Signature:
    return _SIGNATURE.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def list_reports(reports_dir: Path) -> Listing:
    """Returns every `*.json` name in the directory with its stat: the one listing of a refresh.

    Each name is stat'ed relative to the open directory (one path component to resolve, not
    the whole path): at 20,000 reports these stats are most of a refresh.
    """
    fd = os.open(reports_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Bytes: names as stored, undecodable ones too (listdir of an fd would give str).
        names = [name for name in os.listdir(os.fsencode(reports_dir)) if name.endswith(b".json")]
        found: Listing = {}
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd)
            except OSError:
                found[name] = None
            else:
                found[name] = _SIGNATURE.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    finally:
        os.close(fd)
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
    try:
        report = parse_report(raw, path)
    except NotAReport as exc:
        return _Parsed((name, signature, racy, encode(str(exc)), b"", b"", b"", 0, b""))
    files = b"\0".join(encode(f) for f in backup_of(report).files)  # plain names: no NUL
    row = (
        name,
        signature,
        racy,
        None,
        encode(report.job),
        encode(report.database),
        encode(report.status),
        micros(report.started),
        files,
    )
    return _Parsed(row)


def _stored(conn: sqlite3.Connection) -> tuple[dict[bytes, Signature], set[bytes]]:
    """Returns what the index holds: name -> stat signature, and the names to re-read."""
    signatures: dict[bytes, Signature] = dict(conn.execute("SELECT name, sig FROM reports"))
    racy = {name for (name,) in conn.execute("SELECT name FROM reports WHERE racy = 1")}
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
    listing: Listing,
    stored: tuple[dict[bytes, Signature], set[bytes]],
) -> _Plan:
    """Returns the changes that bring the index (holding `stored`) in line with `listing`;
    reads the files that changed."""
    signatures, racy = stored
    plan = _Plan(delete=sorted(signatures.keys() - listing.keys()))
    changed = {name for name, _ in listing.items() - signatures.items()}
    for name in sorted(changed | (racy & listing.keys())):
        parsed = _read(reports_dir, name)
        if parsed.row is None:
            plan.transient[name] = parsed.transient
            if name in signatures:
                plan.delete.append(name)
            continue
        before = _stored_row(conn, name) if name in signatures else None
        if before is None or _content(before) != _content(parsed.row):
            plan.upsert.append(parsed.row)
        elif before != parsed.row:
            plan.settle.append(parsed.row)
    return plan


def _apply(conn: sqlite3.Connection, plan: _Plan) -> None:
    rows = [*plan.upsert, *plan.settle]
    gone = [(name,) for name in plan.delete] + [(row[0],) for row in rows]
    conn.executemany("DELETE FROM reports WHERE name = ?", gone)
    marks = ", ".join("?" * len(_COLUMNS.split(",")))
    conn.executemany(f"INSERT INTO reports ({_COLUMNS}) VALUES ({marks})", rows)


class CannotUpdate(Exception):
    """The index is out of date and this user may not write it."""


def sync(
    conn: sqlite3.Connection,
    reports_dir: Path,
    listing: Listing,
    listed_ns: int,
    writable: bool,
) -> dict[bytes, str]:
    """Brings the index in line with `listing` (begun at `listed_ns`, `time.monotonic_ns`);
    returns the unreadable files (name -> why).

    The comparison, and the reading of what changed, run under a read lock: only the writing
    takes the write lock, and when another process wrote in between, the changes are planned
    again from what the index holds then. An index already in line with a listing begun later
    than this one is newer: it is left as it is (a slow listing never takes it back in time).
    Raises CannotUpdate when a needed write is not allowed, `sqlite3.Error` when the index
    cannot be read or written.
    """
    with transaction(conn, "BEGIN"):
        current = _meta_matches(conn, reports_dir)
        stored = _stored(conn) if current else ({}, set())
        if current and listing == stored[0] and not stored[1]:
            return {}  # the common case, compared in C
        if current and _listed_ns(conn) > listed_ns:
            return {}
        version = _data_version(conn)
        plan = _plan(conn, reports_dir, listing, stored)
    if not writable and (not current or plan.writes):
        raise CannotUpdate("the index is out of date and this user cannot rebuild or update it")
    if not writable or (current and not plan.writes and not plan.settle):
        return plan.transient
    with transaction(conn, "BEGIN IMMEDIATE"):
        if _data_version(conn) != version:  # another process wrote first: plan from its result
            current = _meta_matches(conn, reports_dir)
            if current and _listed_ns(conn) > listed_ns:
                return plan.transient
            plan = _plan(conn, reports_dir, listing, _stored(conn) if current else ({}, set()))
        if not current:
            _reset(conn, reports_dir)
        _apply(conn, plan)
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_LISTED, str(listed_ns)))
    return plan.transient


def _listed_ns(conn: sqlite3.Connection) -> int:
    """Returns when the listing the index is in line with began (0: not known)."""
    found = conn.execute("SELECT value FROM meta WHERE key = ?", (_LISTED,)).fetchone()
    return int(found[0]) if found is not None else 0


def _data_version(conn: sqlite3.Connection) -> int:
    """Returns SQLite's counter of the changes other connections committed to the file."""
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(version)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    """Runs the block in a transaction: committed at the end, rolled back on an exception."""
    conn.execute(begin)
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        raise
    conn.commit()


# --- the schema and what the index is for ------------------------------------------------------


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
    found = dict(conn.execute("SELECT key, value FROM meta WHERE key != ?", (_LISTED,)))
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


# --- the file ------------------------------------------------------------------------------------


def create(path: Path) -> None:
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


def connect(path: Path, writable: bool) -> sqlite3.Connection:
    """Returns a connection to the index file (transactions explicit, no fsync)."""
    mode = "rw" if writable else "ro"
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode={mode}",
        uri=True,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # transactions are explicit
        check_same_thread=False,
    )
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm files whose owner could differ
        conn.execute("PRAGMA synchronous=OFF")  # a cache: see _meta_wanted for why this is safe
    except BaseException:
        conn.close()
        raise
    return conn


def memory_connection() -> sqlite3.Connection:
    """Returns a connection to a new, empty index in memory."""
    return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)


def identity(path: Path) -> tuple[int, int] | None:
    """Returns the device and inode of the file at `path`, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove(path: Path) -> None:
    """Removes the index file and its rollback journal."""
    for victim in (path, path.with_name(path.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            victim.unlink()


def is_corrupt(exc: BaseException) -> bool:
    """Returns whether `exc` says the index file is damaged (not a database, malformed)."""
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code in {_SQLITE_CORRUPT, _SQLITE_NOTADB} or "malformed" in str(exc)
