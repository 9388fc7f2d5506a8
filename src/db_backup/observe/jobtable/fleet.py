"""The fleet view (`status --from-db`): every host's results, read back from the sink's tables.

The same filters and paging as `db-backup status`; the rows are report documents with the
host's name added, so one table renderer (`observe.status.render_table`) shows both views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from db_backup.observe.jobtable.migrate import schema_ready
from db_backup.observe.jobtable.settings import SinkError, SinkSettings, connect, first_line
from db_backup.observe.status import StatusPage, StatusQuery
from db_backup.reports.model import SUCCESS
from db_backup.util.clock import format_utc

_FLEET_COLUMNS = (
    "id, report, report_file, hostname, job, database, status, started_at, finished_at, "
    "duration_sec, mode, size_bytes, local_file, remote_urls, checksum, error_msg, host, port, tool"
)


@dataclass(frozen=True)
class Fleet:
    """One page of the fleet view: where it was read, the reports and the newest drills."""

    source: str  # host:port/dbname of the sink's database
    page: StatusPage
    drills: list[dict[str, Any]]


def read_fleet(settings: SinkSettings, q: StatusQuery) -> Fleet:
    """Returns the page of the fleet view matching `q`; raises SinkError naming the server."""
    conn, target = connect(settings)
    try:
        with conn:
            if not schema_ready(conn):
                raise SinkError(
                    f"database sink {target}: no db_backup_job table with the V2 columns yet "
                    "(nothing was sent; run `db-backup sync-reports`)"
                )
            return Fleet(target, fleet_page(conn, q), fleet_drills(conn, q.job))
    except psycopg.Error as exc:
        raise SinkError(f"database sink {target}: {first_line(exc)}") from None


def fleet_page(conn: psycopg.Connection[Any], q: StatusQuery) -> StatusPage:
    """Returns the page of db_backup_job rows matching `q`: newest per host, job and database
    unless `q.history`; the same filters and paging as `db-backup status`."""
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
            # A job-level record (database `*`, the run failed before it knew its databases)
            # is cleared by any later row of the same job on that host (observe.scope).
            " AND NOT (r.database = '*' AND EXISTS (SELECT 1 FROM db_backup_job AS o WHERE "
            "o.hostname = r.hostname AND o.job = r.job AND o.database <> '*' AND "
            "NOT coalesce(o.deleted, false) AND o.started_at > r.started_at))"
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
