"""The database sink: every backup and drill report upserted into the platform's PostgreSQL.

Path A of the seed's 方式二: after each report (an `events.BACKUP` or `events.DRILL` event) the
document is written to a small outbox under the state directory, then a background thread sends
the outbox (`INSERT ... ON CONFLICT (id) DO UPDATE`, the report id is the key) and removes what
was sent. A sink that is down is logged (masked), counted, and tried again with the next report:
it never blocks a backup for long and never changes its status. Path B is `db-backup
sync-reports` (every report of the reports directory, in batches); `db-backup status --from-db`
is the fleet view over every host that writes into the same table.

Tables: `db_backup_job` (V1, the seed's DDL, plus V2's columns) and `db_backup_drill` (V2).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from db_backup.config import SecretRef, schema
from db_backup.observe import events
from db_backup.reports.model import FAILED, REPORT_NAMESPACE, SUCCESS, load_reports, parse_report
from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.fsutil import write_atomically
from db_backup.util.secrets import SecretError, mask, register, resolve

if TYPE_CHECKING:
    from db_backup.config import Config
    from db_backup.observe.status import StatusPage, StatusQuery

log = structlog.get_logger("db_backup.observe.jobtable")

NAME = "sink"  # the consumer's name in logs and in consumer-failures.json
OUTBOX_DIR = "sink-outbox"  # under directories.state
REJECTED_DIR = "rejected"  # malformed outbox files, moved aside (under the outbox)
BACKUP = "backup"
DRILL = "drill"
STATEMENT_TIMEOUT_SECONDS = 120  # one batch or one migration; bounds a hung server too
PROGRESS_EVERY = 1000  # sync-reports prints a progress line when it loads at least this many
# pg_advisory_xact_lock key for the migrations: "dbbackup" in ASCII, so every host agrees.
MIGRATION_LOCK = int.from_bytes(b"dbbackup", "big") & 0x7FFF_FFFF_FFFF_FFFF
V2_COLUMNS = (
    "job",
    "hostname",
    "host",
    "port",
    "tool",
    "trigger",
    "report_file",
    "schema_version",
    "report",
)
MIGRATION_NAME = re.compile(r"^V(\d+)__[A-Za-z0-9_]+\.sql$")


class SinkError(Exception):
    """The sink cannot be used; the message names the server (never the password) and why."""


@dataclass(frozen=True)
class SinkSettings:
    """The `sink:` section of the config, defaults filled in."""

    dsn: SecretRef
    connect_timeout_seconds: int
    migrate: bool
    batch_size: int


def sink_settings(config: Config) -> SinkSettings | None:
    """Returns the sink settings of `config`, or None when it has no `sink:` section."""
    given = config.raw.get("sink")
    if not given:
        return None
    props = schema()["properties"]["sink"]["properties"]
    values = {k: given.get(k, p.get("default")) for k, p in props.items()}
    ((kind, name),) = values["dsn"].items()
    return SinkSettings(
        dsn=SecretRef(kind, name),
        connect_timeout_seconds=int(values["connect_timeout_seconds"]),
        migrate=bool(values["migrate"]),
        batch_size=int(values["batch_size"]),
    )


# --------------------------------------------------------------------------- connecting


def describe_dsn(dsn: str) -> str:
    """Returns `host:port/dbname` of a connection string, for messages (never the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a connection string that libpq cannot parse)"
    host = str(params.get("host") or params.get("hostaddr") or "the local socket")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def connect(settings: SinkSettings) -> tuple[psycopg.Connection[Any], str]:
    """Returns a connection to the sink's database and its description; raises SinkError."""
    try:
        dsn = resolve(settings.dsn, "sink.dsn")
    except SecretError as exc:
        raise SinkError(str(exc)) from None
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        # libpq's message quotes the string, password and all: say where it is, not what it is.
        raise SinkError(
            f"sink.dsn ({settings.dsn.describe()}) is not a libpq connection string "
            "(key=value pairs or a postgresql:// URI)"
        ) from None
    if password:
        register(str(password))
    target = describe_dsn(dsn)
    try:
        conn = psycopg.connect(
            dsn,
            connect_timeout=settings.connect_timeout_seconds,
            application_name="db-backup",
            # A server that vanishes mid-statement, or a table locked by the platform, must not
            # hold a run (or its end) for long: the report simply waits in the outbox.
            keepalives=1,
            keepalives_idle=30,
            tcp_user_timeout=STATEMENT_TIMEOUT_SECONDS * 1000,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_SECONDS}s",
        )
    except psycopg.Error as exc:
        raise SinkError(f"database sink {target}: cannot connect: {_first_line(exc)}") from None
    return conn, target


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return mask(text[0] if text else type(exc).__name__)


def migrations() -> list[tuple[int, str, str]]:
    """Returns the shipped migrations as (version, file name, SQL), in version order."""
    found = []
    for entry in resources.files("db_backup").joinpath("sql").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def schema_ready(conn: psycopg.Connection[Any]) -> bool:
    """Returns whether db_backup_job has V2's columns and db_backup_drill exists."""
    row = conn.execute(
        "SELECT to_regclass('db_backup_drill') IS NOT NULL AND "
        "(SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'db_backup_job' AND column_name = ANY(%s)) = %s",
        (list(V2_COLUMNS), len(V2_COLUMNS)),
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Applies every shipped migration in one transaction under an advisory lock.

    Every file is idempotent, so a second host (or a second run) applying them is harmless;
    the lock only keeps two hosts from running the same DDL at once. Returns the file names.
    """
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        for _, name, sql in migrations():
            conn.execute(sql.encode("utf-8"))
            applied.append(name)
    return applied


def ensure_schema(conn: psycopg.Connection[Any], settings: SinkSettings, target: str) -> None:
    """Makes sure the tables are there (applying the migrations if allowed); raises SinkError."""
    try:
        if schema_ready(conn):
            return
        if not settings.migrate:
            raise SinkError(
                f"database sink {target}: table db_backup_job lacks the V2 columns or "
                "db_backup_drill is missing; apply /usr/share/db-backup/sql/ with Flyway, "
                "or set sink.migrate: true"
            )
        applied = migrate(conn)
    except psycopg.Error as exc:
        raise SinkError(
            f"database sink {target}: cannot apply the migrations: {_first_line(exc)}"
        ) from None
    log.info("database sink migrated", target=target, migrations=", ".join(applied))


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Entry:
    """One report to send: which kind, its file name and its document."""

    kind: str  # BACKUP | DRILL
    report_file: str
    document: dict[str, Any]

    @property
    def id(self) -> str:
        """Returns the report's id: its own when it is a UUID, else a stable one derived."""
        given = self.document.get("id")
        if isinstance(given, str):
            with contextlib.suppress(ValueError):
                return str(uuid.UUID(given))
        # The seed's shell script wrote no id: derive it as Report.id does (job "", file stem).
        stem = self.report_file.removesuffix(".json")
        return str(uuid.uuid5(REPORT_NAMESPACE, f"{self.document.get('job', '')}/{stem}"))


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key, "")
    return value if isinstance(value, str) else str(value)


def _number(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_utc(value)
    except (ValueError, OverflowError):
        return None


def backup_row(entry: Entry) -> dict[str, Any]:
    """Returns the db_backup_job row of a backup report; ValueError when it is not one."""
    # NotAReport (a ValueError) says why it is not one.
    document = parse_report(json.dumps(entry.document).encode(), Path(entry.report_file)).document
    started = parse_utc(document["startedAt"])
    local = document["local"]
    hostname = _text(document, "hostname")
    if not hostname:  # the seed's report: the stem ends with the host label
        hostname = entry.report_file.removesuffix(".json").rpartition("_")[2]
    return {
        "id": entry.id,
        "started_at": started,
        "finished_at": _time(document["finishedAt"]) or started,
        "duration_sec": document["durationSeconds"],
        "database": document["database"],
        "mode": document["mode"],
        "status": document["status"],
        "size_bytes": local["sizeBytes"],
        "local_file": local["file"] or None,
        "remote_urls": json.dumps(document["remote"]["urls"]),
        "checksum": local["checksumSha256"] or None,
        "error_msg": document["errorMessage"] or None,
        "job": _text(document, "job"),
        "hostname": hostname,
        "host": document["host"],
        "port": document["port"],
        "tool": document["tool"],
        "trigger": _text(document, "trigger") or None,
        "report_file": entry.report_file or None,
        "schema_version": _number(document.get("schemaVersion"), int),
        "report": Jsonb(document),
    }


def drill_row(entry: Entry) -> dict[str, Any]:
    """Returns the db_backup_drill row of a drill report; ValueError when it is not one."""
    document = entry.document
    if document.get("kind") != DRILL:
        raise ValueError("not a drill report (kind is not 'drill')")
    if not isinstance(document.get("id"), str):
        raise ValueError("not a drill report (no id)")
    if not isinstance(document.get("database"), str):
        raise ValueError("not a drill report (no database)")
    if document.get("status") not in {SUCCESS, FAILED}:
        raise ValueError(f"status {document.get('status')!r} is not SUCCESS or FAILED")
    started = _time(document.get("startedAt"))
    if started is None:
        raise ValueError("startedAt is not a time")
    mismatches = document.get("mismatches")
    return {
        "id": entry.id,
        "backup_id": _text(document, "backupReportId") or None,
        "hostname": _text(document, "hostname"),
        "job": _text(document, "job"),
        "database": document["database"],
        "status": document["status"],
        "error_msg": _text(document, "errorMessage") or None,
        "started_at": started,
        "finished_at": _time(document.get("finishedAt")),
        "duration_sec": _number(document.get("durationSeconds"), float),
        "restore_sec": _number(document.get("restoreSeconds"), float),
        "tables_checked": _number(document.get("tablesChecked"), int),
        "mismatches": len(mismatches) if isinstance(mismatches, list) else None,
        "report_file": entry.report_file or None,
        "report": Jsonb(document),
    }


def _upsert_sql(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "id")
    # `deleted` is the platform's own mark: sending a report again does not undo it.
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates}, update_time = now()"
    )


_JOB_COLUMNS = (
    "id", "started_at", "finished_at", "duration_sec", "database", "mode", "status",
    "size_bytes", "local_file", "remote_urls", "checksum", "error_msg", *V2_COLUMNS,
)  # fmt: skip
_DRILL_COLUMNS = (
    "id", "backup_id", "hostname", "job", "database", "status", "error_msg", "started_at",
    "finished_at", "duration_sec", "restore_sec", "tables_checked", "mismatches",
    "report_file", "report",
)  # fmt: skip
UPSERT_JOB = _upsert_sql("db_backup_job", _JOB_COLUMNS)
UPSERT_DRILL = _upsert_sql("db_backup_drill", _DRILL_COLUMNS)


def row_of(entry: Entry) -> tuple[str, dict[str, Any]]:
    """Returns (the upsert statement, the row) of `entry`; ValueError when it is malformed."""
    if entry.kind == BACKUP:
        return UPSERT_JOB, backup_row(entry)
    if entry.kind == DRILL:
        return UPSERT_DRILL, drill_row(entry)
    raise ValueError(f"unknown kind {entry.kind!r}")


def send(conn: psycopg.Connection[Any], entries: Sequence[Entry]) -> list[tuple[Entry, str]]:
    """Upserts `entries` in one transaction; returns those refused, each with why.

    A row the server refuses (e.g. a NUL character) is found by sending one by one, so one bad
    report does not hold back the others. A lost connection raises psycopg.OperationalError.
    """
    refused: list[tuple[Entry, str]] = []
    rows: list[tuple[Entry, str, dict[str, Any]]] = []
    for entry in entries:
        try:
            statement, row = row_of(entry)
        except ValueError as exc:
            refused.append((entry, str(exc)))
            continue
        rows.append((entry, statement, row))
    try:
        with conn.transaction(), conn.cursor() as cur:
            for statement in (UPSERT_JOB, UPSERT_DRILL):
                batch = [row for _, s, row in rows if s == statement]
                if batch:
                    cur.executemany(statement, batch)
        return refused
    except psycopg.OperationalError:
        raise
    except psycopg.Error:
        pass  # find the row at fault
    for entry, statement, row in rows:
        try:
            with conn.transaction():
                conn.execute(statement, row)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            refused.append((entry, f"refused by the server: {_first_line(exc)}"))
    return refused


# --------------------------------------------------------------------------- outbox


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
        try:
            ensure_schema(conn, settings, target)
            for start in range(0, len(pending), settings.batch_size):
                batch: list[tuple[Path, Entry, int]] = []
                for path in pending[start : start + settings.batch_size]:
                    try:
                        entry, inode = outbox.load(path)
                    except FileNotFoundError:
                        continue  # sent by another process meanwhile
                    except (OSError, ValueError) as exc:
                        outbox.reject(path, str(exc))
                        rejected += 1
                        continue
                    batch.append((path, entry, inode))
                try:
                    refused = send(conn, [entry for _, entry, _ in batch])
                except psycopg.Error as exc:
                    raise SinkError(f"database sink {target}: {_first_line(exc)}") from None
                refused_ids = {id(entry): why for entry, why in refused}
                for path, entry, inode in batch:
                    if id(entry) in refused_ids:
                        outbox.reject(path, refused_ids[id(entry)])
                        rejected += 1
                    else:
                        outbox.remove(path, inode)
                        sent += 1
        finally:
            conn.close()
    return FlushResult(sent, rejected, target)


# --------------------------------------------------------------------------- the consumer


class SinkConsumer:
    """Puts each report into the outbox and sends the outbox from one background thread."""

    name = NAME

    def __init__(self, settings: SinkSettings, state: Path) -> None:
        self.settings = settings
        self.state = state
        self.outbox = Outbox(state)
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def handle(self, event: events.Event) -> None:
        """Queues a backup or drill report and wakes the sender; other events are not ours."""
        if event.kind not in {events.BACKUP, events.DRILL} or event.report is None:
            return
        kind = BACKUP if event.kind == events.BACKUP else DRILL
        name = event.report_path.name if event.report_path is not None else ""
        self.outbox.put(Entry(kind, name, dict(event.report)))
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="db-backup-sink", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def close(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the sending under way; the rest waits on disk."""
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "database sink still sending; the rest waits in the outbox for the next run",
                waited_s=timeout,
                outbox=str(self.outbox.directory),
            )

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.flush_once()
            if self._closing and not self._wake.is_set():
                return

    def flush_once(self) -> None:
        """Sends the outbox once; logs and counts a failure, never raises."""
        try:
            result = flush(self.settings, self.outbox)
        except SinkError as exc:
            log.warning(
                "database sink down; the reports wait in the outbox for the next run",
                error=mask(str(exc)),
                waiting=len(self.outbox.pending()),
                outbox=str(self.outbox.directory),
            )
            events.count_failure(self.state, NAME)
            return
        except Exception as exc:  # a bug must not kill the thread silently
            log.error("database sink failed", error=mask(f"{type(exc).__name__}: {exc}"))
            events.count_failure(self.state, NAME)
            return
        if result.rejected:
            events.count_failure(self.state, NAME, result.rejected)
        if result.sent:
            log.info("database sink updated", target=result.target, reports=result.sent)


def consumer(config: Config) -> SinkConsumer | None:
    """Returns the sink consumer of `config`, or None when there is no `sink:` section."""
    settings = sink_settings(config)
    if settings is None:
        return None
    return SinkConsumer(settings, config.directories.state)


# --------------------------------------------------------------------------- sync-reports


def report_entries(config: Config) -> tuple[list[Entry], list[str]]:
    """Returns every backup and drill report on disk as entries, and a warning per skipped file."""
    stored, warnings = load_reports(config.directories.reports)
    entries = [Entry(BACKUP, s.path.name, s.document) for s in reversed(stored)]
    from db_backup.reports.drills import drills_dir

    directory = drills_dir(config)
    try:
        drill_paths = sorted(directory.glob("*.json"))
    except OSError as exc:
        drill_paths = []
        warnings.append(f"{directory}: cannot list: {exc.strerror}")
    for path in drill_paths:
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.append(f"{path}: skipped, not readable JSON ({exc})")
            continue
        if not isinstance(document, dict):
            warnings.append(f"{path}: skipped, not a drill report (top level is not an object)")
            continue
        entry = Entry(DRILL, path.name, document)
        try:
            drill_row(entry)
        except ValueError as exc:
            warnings.append(f"{path}: skipped, {exc}")
            continue
        entries.append(entry)
    return entries, warnings


def _settings_for(command: str, config: Config, err: TextIO) -> SinkSettings | None:
    """Returns the sink's settings, or says on `err` that `command` needs them and returns None."""
    settings = sink_settings(config)
    if settings is None:
        print(f"db-backup: {command} needs a `sink:` section with `dsn:` in the config", file=err)
    return settings


def _connect_for(settings: SinkSettings, err: TextIO) -> tuple[psycopg.Connection[Any], str] | None:
    """Connects to the sink's database, or says on `err` why not and returns None."""
    try:
        return connect(settings)
    except SinkError as exc:
        print(f"db-backup: {exc}", file=err)
        return None


def sync_reports(config: Config, err: TextIO = sys.stderr, out: TextIO = sys.stdout) -> int:
    """Loads every report on disk into the sink's tables (path B); returns the exit status."""
    settings = _settings_for("sync-reports", config, err)
    if settings is None:
        return 1
    entries, warnings = report_entries(config)
    for warning in warnings:
        print(f"db-backup: warning: {warning}", file=err)
    loaded = refused_count = 0
    connected = _connect_for(settings, err)
    if connected is None:
        return 1
    conn, target = connected
    try:
        ensure_schema(conn, settings, target)
        for start in range(0, len(entries), settings.batch_size):
            batch = entries[start : start + settings.batch_size]
            try:
                refused = send(conn, batch)
            except psycopg.Error as exc:
                raise SinkError(f"database sink {target}: {_first_line(exc)}") from None
            for entry, why in refused:
                print(f"db-backup: warning: {entry.report_file}: skipped, {why}", file=err)
            refused_count += len(refused)
            loaded += len(batch) - len(refused)
            if len(entries) >= PROGRESS_EVERY:
                done = start + len(batch)
                print(f"db-backup: sync-reports: {done}/{len(entries)} report(s) sent", file=err)
    except SinkError as exc:
        print(f"db-backup: {exc}", file=err)
        return 1
    finally:
        conn.close()
    drills = sum(1 for e in entries if e.kind == DRILL)
    print(
        f"{target}: {loaded} report(s) loaded ({len(entries) - drills} backup, {drills} drill "
        f"in all), {len(warnings) + refused_count} file(s) skipped",
        file=out,
    )
    return 0


# --------------------------------------------------------------------------- status --from-db


_FLEET_COLUMNS = (
    "id, report, report_file, hostname, job, database, status, started_at, finished_at, "
    "duration_sec, mode, size_bytes, local_file, remote_urls, checksum, error_msg, host, port, tool"
)


def fleet_page(conn: psycopg.Connection[Any], q: StatusQuery) -> StatusPage:
    """Returns the page of db_backup_job rows matching `q`: newest per host, job and database
    unless `q.history`; the same filters and paging as `db-backup status`."""
    from db_backup.observe.status import StatusPage

    conditions = ["NOT coalesce(deleted, false)"]
    params: list[Any] = []
    for column, value in (("job", q.job), ("database", q.database)):
        if value is not None:
            conditions.append(f"{column} = %s")
            params.append(value)
    if q.status is not None:
        conditions.append("status = %s")
        params.append(q.status.upper())
    if q.since is not None:
        conditions.append("started_at >= %s")
        params.append(q.since)
    matching = f"SELECT * FROM db_backup_job WHERE {' AND '.join(conditions)}"
    if not q.history:  # the newest matching row per machine, job and database
        matching = (
            "SELECT * FROM (SELECT m.*, row_number() OVER (PARTITION BY hostname, job, database "
            f"ORDER BY started_at DESC, id DESC) AS newest FROM ({matching}) AS m) AS r "
            "WHERE newest = 1"
        )
    row = conn.execute(f"SELECT count(*) FROM ({matching}) AS c", params).fetchone()
    total = int(row[0]) if row else 0
    cursor = conn.execute(
        f"SELECT {_FLEET_COLUMNS} FROM ({matching}) AS p "
        "ORDER BY started_at DESC, hostname, job, database, id DESC LIMIT %s OFFSET %s",
        [*params, q.limit, (q.page - 1) * q.limit],
    )
    names = [d.name for d in cursor.description or ()]
    rows = [_fleet_document(dict(zip(names, values, strict=True))) for values in cursor]
    pages = max(1, -(-total // q.limit))
    return StatusPage(rows, total, q.page, pages, [])


def _fleet_document(row: dict[str, Any]) -> dict[str, Any]:
    """Returns the report document of a row (rebuilt from the columns when none is stored)."""
    document = row["report"]
    if not isinstance(document, dict):  # written by something else than db-backup's sink
        try:
            urls = json.loads(row["remote_urls"] or "[]")
        except ValueError:
            urls = []
        document = {
            "database": row["database"],
            "host": row["host"] or "",
            "port": row["port"] or "",
            "startedAt": format_utc(row["started_at"]),
            "finishedAt": format_utc(row["finished_at"]),
            "durationSeconds": row["duration_sec"],
            "mode": row["mode"],
            "tool": row["tool"] or "",
            "status": row["status"],
            "errorMessage": row["error_msg"] or "",
            "local": {
                "file": row["local_file"] or "",
                "globalsFile": "",
                "checksumSha256": row["checksum"] or "",
                "sizeBytes": row["size_bytes"] or 0,
            },
            "remote": {"urls": urls if isinstance(urls, list) else []},
            "id": row["id"],
            "job": row["job"],
        }
    return {**document, "hostname": row["hostname"], "reportFile": row["report_file"] or ""}


def fleet_drills(conn: psycopg.Connection[Any], job: str | None) -> list[dict[str, Any]]:
    """Returns the newest drill report per host, job and database (of `job` if given)."""
    condition, params = ("AND job = %s", [job]) if job is not None else ("", [])
    cursor = conn.execute(
        "SELECT DISTINCT ON (hostname, job, database) hostname, report_file, report "
        f"FROM db_backup_drill WHERE NOT coalesce(deleted, false) {condition} "
        "ORDER BY hostname, job, database, started_at DESC, id DESC",
        params,
    )
    return [
        {**(report or {}), "hostname": hostname, "reportFile": report_file or ""}
        for hostname, report_file, report in cursor
    ]


def render_fleet(page: StatusPage) -> str:
    """Returns the fleet page as the status table with a HOST column, and a footer."""
    from db_backup.observe.status import human_size

    if page.total == 0:
        return "no matching reports in the database"
    if not page.rows:
        return (
            f"page {page.page} is empty: the {page.total} matching report(s) fill "
            f"{page.pages} page(s) of this size"
        )
    header = (
        "STARTED (UTC)", "HOST", "JOB", "DATABASE", "STATUS", "SIZE", "DURATION",
        "WHERE / ERROR",
    )  # fmt: skip
    lines = [header]
    for row in page.rows:
        where = row["local"]["file"] or ", ".join(row["remote"]["urls"])
        detail = where if row["status"] == SUCCESS else str(row["errorMessage"])[:120]
        lines.append(
            (
                row["startedAt"],
                row["hostname"],
                row.get("job", ""),
                row["database"],
                row["status"],
                human_size(int(row["local"]["sizeBytes"] or 0)),
                f"{row['durationSeconds']} s",
                detail,
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)]
        out.append("  ".join([*cells, str(line[-1])]).rstrip())
    out.append(f"page {page.page} of {page.pages}, {page.total} matching report(s)")
    return "\n".join(out)


def render_fleet_drills(drills: list[dict[str, Any]]) -> str:
    """Returns one line per drill: when, host, job/database, status, and the error if any."""
    lines = []
    for d in drills:
        detail = (
            f"{d.get('tablesChecked', 0)} tables, {len(d.get('mismatches') or [])} mismatches"
            if d.get("status") == SUCCESS
            else str(d.get("errorMessage", ""))[:160]
        )
        lines.append(
            f"drill {d.get('startedAt')}  {d.get('hostname')}  {d.get('job')}/"
            f"{d.get('database')}  {d.get('status')}  {detail}"
        )
    return "\n".join(lines)


def status_from_db(
    config: Config,
    q: StatusQuery,
    as_json: bool,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """`db-backup status --from-db`: the fleet view; returns the exit status."""
    settings = _settings_for("status --from-db", config, err)
    if settings is None:
        return 1
    connected = _connect_for(settings, err)
    if connected is None:
        return 1
    conn, target = connected
    try:
        with conn:
            if not schema_ready(conn):
                print(
                    f"db-backup: database sink {target}: no db_backup_job table with the V2 "
                    "columns yet (nothing was sent; run `db-backup sync-reports`)",
                    file=err,
                )
                return 1
            page = fleet_page(conn, q)
            drills = fleet_drills(conn, q.job)
    except psycopg.Error as exc:
        print(f"db-backup: database sink {target}: {_first_line(exc)}", file=err)
        return 1
    if as_json:
        document = {
            "source": target,
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
            "reports": page.rows,
            "drills": drills,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str), file=out)
    else:
        print(render_fleet(page), file=out)
        if drills:
            print(render_fleet_drills(drills), file=out)
    return 0
