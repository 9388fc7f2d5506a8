"""Reports as table rows, and sending them: one upsert per report id, in batches.

`db_backup_job` holds backup reports (V1, the seed's DDL, plus V2's columns) and
`db_backup_drill` drill reports (V2). The report id is the key, so sending a report again
updates its row and never duplicates it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from db_backup.observe.jobtable.migrate import V2_COLUMNS
from db_backup.observe.jobtable.settings import SinkError, first_line
from db_backup.reports.model import FAILED, REPORT_NAMESPACE, SUCCESS, parse_report
from db_backup.util.clock import parse_utc

BACKUP = "backup"
DRILL = "drill"


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
    document, problem = parse_report(json.dumps(entry.document).encode())
    if document is None:
        raise ValueError(problem)
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
            refused.append((entry, f"refused by the server: {first_line(exc)}"))
    return refused


def send_batches(
    conn: psycopg.Connection[Any], target: str, entries: Iterable[Entry], batch_size: int
) -> Iterator[tuple[list[Entry], list[tuple[Entry, str]]]]:
    """Sends `entries` in transactions of `batch_size`; yields each batch with those refused.

    `entries` is read one batch at a time, so a long outbox is never all in memory. Raises
    SinkError naming `target` when the server fails (a lost connection, a timeout).
    """
    waiting = iter(entries)
    while batch := list(itertools.islice(waiting, batch_size)):
        try:
            refused = send(conn, batch)
        except psycopg.Error as exc:
            raise SinkError(f"database sink {target}: {first_line(exc)}") from None
        yield batch, refused
