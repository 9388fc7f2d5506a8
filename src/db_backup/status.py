"""`db-backup status`: the reports directory seen from the host, like the platform sees it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from db_backup.report import StoredReport, load_reports


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


def query(reports_dir: Path, q: StatusQuery) -> StatusPage:
    """Returns the page of reports matching `q`: latest per job and database unless `history`.

    Raises StatusError when the directory cannot be listed: "0 reports" would be a lie.
    """
    _check_readable(reports_dir)
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
