"""`db-backup status`: the reports directory seen from the host, like the platform sees it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from db_backup.report import StoredReport, load_reports


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


def query(reports_dir: Path, q: StatusQuery) -> StatusPage:
    """Returns the page of reports matching `q`: latest per job and database unless `history`."""
    reports, warnings = load_reports(reports_dir)
    matching = [r for r in reports if _matches(r, q)]
    if not q.history:
        latest: dict[tuple[str, str], StoredReport] = {}
        for report in matching:  # newest first, so the first seen is the latest
            latest.setdefault((report.job, report.document["database"]), report)
        matching = list(latest.values())
    total = len(matching)
    pages = max(1, -(-total // q.limit))
    start = (q.page - 1) * q.limit
    rows = [_row(r) for r in matching[start : start + q.limit]]
    return StatusPage(rows, total, q.page, pages, warnings)


def _matches(report: StoredReport, q: StatusQuery) -> bool:
    doc = report.document
    return (
        (q.job is None or report.job == q.job)
        and (q.database is None or doc["database"] == q.database)
        and (q.status is None or doc["status"] == q.status.upper())
        and (q.since is None or report.started >= q.since)
    )


def _row(report: StoredReport) -> dict[str, Any]:
    doc = report.document
    return {**doc, "reportFile": str(report.path)}


def human_size(size: int) -> str:
    """Returns `size` bytes as e.g. '1.2 GiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def render_table(page: StatusPage) -> str:
    """Returns the page as an aligned text table with a footer."""
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
