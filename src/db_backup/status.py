"""`db-backup status`: the reports directory seen from the host, like the platform sees it.

Which reports match comes from the report index (`report_index`); the rows shown are read from
their JSON files, the source of truth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from db_backup.report import parse_report
from db_backup.report_index import encode, micros, snapshot


class StatusError(Exception):
    """The reports directory cannot be read; the message names it and the cause."""


@dataclass(frozen=True)
class StatusQuery:
    """Filters and paging of `db-backup status`."""

    history: bool = False
    job: str | None = None
    database: str | None = None
    status: str | None = None
    since: datetime | None = None
    limit: int = 20
    page: int = 1


@dataclass(frozen=True)
class StatusPage:
    """One page of matching reports, newest first, plus warnings about skipped files."""

    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # about the index (rebuilt, not usable)


def query(reports_dir: Path, q: StatusQuery, index_path: Path | None = None) -> StatusPage:
    """Returns the page of reports matching `q`: latest per job and database unless `history`.

    `index_path` is the report index to use (None: read every report, in memory). Raises
    StatusError when the directory cannot be listed: "0 reports" would be a lie.
    """
    _check_readable(reports_dir)
    conditions: list[str] = []
    params: list[Any] = []
    for column, value in (("job", q.job), ("database", q.database)):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(encode(value))
    if q.status is not None:
        conditions.append("status = ?")
        params.append(encode(q.status.upper()))
    if q.since is not None:
        conditions.append("started_us >= ?")
        params.append(micros(q.since))
    notes: list[str] = []

    def note(event: str, fields: dict[str, str]) -> None:
        details = ", ".join(f"{key}={value}" for key, value in fields.items())
        notes.append(f"{event} ({details})")

    with snapshot(reports_dir, index_path, note) as snap:
        warnings = snap.warnings()
        total, names = snap.page(
            " AND ".join(conditions),
            tuple(params),
            latest=not q.history,
            limit=q.limit,
            offset=(q.page - 1) * q.limit,
        )
    rows = []
    for name in names:
        path = reports_dir / name
        try:
            document, problem = parse_report(path.read_bytes())
        except OSError as exc:
            document, problem = None, f"skipped, not readable JSON ({exc})"
        if document is None:  # changed since the index was read
            warnings.append(f"{path}: {problem}")
            continue
        rows.append({**document, "reportFile": str(path)})
    pages = max(1, -(-total // q.limit))
    return StatusPage(rows, total, q.page, pages, warnings, notes)


def _check_readable(reports_dir: Path) -> None:
    # Path.glob (used by load_reports) silently yields nothing for a directory it cannot read.
    try:
        with os.scandir(reports_dir) as entries:
            next(entries, None)
    except FileNotFoundError:
        raise StatusError(
            f"the reports directory {reports_dir} does not exist (directories.reports in the "
            "config; it is created by the first backup run)"
        ) from None
    except OSError as exc:
        raise StatusError(
            f"cannot read the reports directory {reports_dir}: {exc.strerror}"
        ) from None


def human_size(size: int) -> str:
    """Returns `size` bytes as e.g. '1.2 GiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def render_table(page: StatusPage) -> str:
    """Returns the page as an aligned text table with a footer, or says why there is none."""
    if page.total == 0:
        return "no matching reports"
    if not page.rows:
        return (
            f"page {page.page} is empty: the {page.total} matching report(s) fill "
            f"{page.pages} page(s) of this size"
        )
    header = ("STARTED (UTC)", "JOB", "DATABASE", "STATUS", "SIZE", "DURATION", "WHERE / ERROR")
    lines = [header]
    for row in page.rows:
        where = row["local"]["file"] or ", ".join(row["remote"]["urls"])
        detail = where if row["status"] == "SUCCESS" else row["errorMessage"][:120]
        lines.append(
            (
                row["startedAt"],
                row.get("job", ""),
                row["database"],
                row["status"],
                human_size(row["local"]["sizeBytes"]),
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
