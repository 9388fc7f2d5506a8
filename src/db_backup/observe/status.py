"""`db-backup status`: the reports directory seen from the host, like the platform sees it.

Which reports match comes from the report index (`report_index`); the rows shown are read from
their JSON files, the source of truth. The latest view also says, per job and database, when the
newest SUCCESS started and how long ago, whether the daemon found it stale (`stale.json`, see
`staleness`), and the newest restore drill. Nothing here imports structlog, oss2 or croniter:
`status` stays quick however many reports there are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from db_backup.observe.scope import Scope, hidden
from db_backup.observe.staleness import load_state, still_stale
from db_backup.reports.index import Match, snapshot
from db_backup.reports.model import SUCCESS, read_reports
from db_backup.util.clock import format_utc, utc_now
from db_backup.util.units import format_age, format_size


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


def query(
    reports_dir: Path,
    q: StatusQuery,
    index_path: Path | None = None,
    state_dir: Path | None = None,
    now: datetime | None = None,
    drills: list[dict[str, Any]] | None = None,
    scope: Scope | None = None,
) -> StatusPage:
    """Returns the page of reports matching `q`: latest per job and database unless `history`.

    `index_path` is the report index to use (None: read every report, in memory). In the
    latest view each row also gets `lastSuccessAt`, `lastSuccessAgeSeconds`, `stale` (from the
    daemon's `stale.json` under `state_dir`) and `lastDrill` (the newest of `drills`, as
    `drill_reports.latest_drills` gives them). The latest view leaves out what `scope.hidden`
    hides: a job-level record the job cleared since, and, given the configured `scope`, jobs
    and listed databases no longer configured. Raises StatusError when the directory cannot
    be listed: "0 reports" would be a lie.
    """
    _check_readable(reports_dir)
    match = Match(
        job=q.job,
        database=q.database,
        status=q.status.upper() if q.status is not None else None,
        since=q.since,
    )
    notes: list[str] = []

    def note(event: str, fields: dict[str, str]) -> None:
        details = ", ".join(f"{key}={value}" for key, value in fields.items())
        notes.append(f"{event} ({details})")

    with snapshot(reports_dir, index_path, note) as snap:
        warnings = snap.warnings()
        if not q.history:  # what the latest view no longer shows (history keeps it)
            newest = {(n.job, n.database): n.started for n in snap.newest()}
            match = replace(match, exclude=tuple(sorted(hidden(newest, scope))))
        total, names = snap.page(
            match, latest=not q.history, limit=q.limit, offset=(q.page - 1) * q.limit
        )
        reports, changed = read_reports(reports_dir / name for name in names)
        warnings += changed  # changed since the index was read
        newest_success = {
            (r.job, r.database): snap.newest_success(r.job, r.database)
            for r in (reports if not q.history else [])
        }
    rows = [{**r.document, "reportFile": str(r.path)} for r in reports]
    if not q.history:
        _add_summary(rows, newest_success, state_dir, drills or [], now or utc_now())
    pages = max(1, -(-total // q.limit))
    return StatusPage(rows, total, q.page, pages, warnings, notes)


def _add_summary(
    rows: list[dict[str, Any]],
    newest_success: dict[tuple[str, str], datetime | None],
    state_dir: Path | None,
    documents: list[dict[str, Any]],
    now: datetime,
) -> None:
    """Adds the last success, its age, the stale marker and the newest drill to each row."""
    stale = load_state(state_dir) if state_dir is not None else {}
    drills: dict[tuple[str, str], dict[str, Any]] = {}
    for document in sorted(documents, key=lambda d: str(d.get("startedAt", "")), reverse=True):
        drills.setdefault((str(document.get("job")), str(document.get("database"))), document)
    for row in rows:
        key = (str(row.get("job", "")), str(row["database"]))
        last = newest_success.get(key)
        row["lastSuccessAt"] = format_utc(last) if last else None
        row["lastSuccessAgeSeconds"] = int((now - last).total_seconds()) if last else None
        row["stale"] = key in stale and still_stale(stale[key], last)
        drill = drills.get(key)
        row["lastDrill"] = (
            {k: drill.get(k) for k in ("status", "startedAt", "errorMessage", "reportFile")}
            if drill
            else None
        )


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


def _last_success(row: dict[str, Any]) -> str:
    """Returns e.g. `7h ago`, `3d ago STALE`, or `never`."""
    age = row.get("lastSuccessAgeSeconds")
    text = "never" if age is None else f"{format_age(timedelta(seconds=age))} ago"
    return f"{text} STALE" if row.get("stale") else text


def _last_drill(row: dict[str, Any]) -> str:
    drill = row.get("lastDrill")
    if not drill:
        return "-"
    return f"{drill.get('status')} {str(drill.get('startedAt') or '')[:10]}".strip()


def render_table(
    page: StatusPage, *, hosts: bool = False, empty: str = "no matching reports"
) -> str:
    """Returns the page as an aligned text table with a footer, or says why there is none.

    `hosts` adds a HOST column (the fleet view); `empty` is what to say when nothing matches.
    """
    if page.total == 0:
        return empty
    if not page.rows:
        return (
            f"page {page.page} is empty: the {page.total} matching report(s) fill "
            f"{page.pages} page(s) of this size"
        )
    summary = "stale" in page.rows[0]  # the latest view of the reports directory
    header: tuple[str, ...] = ("STARTED (UTC)", *(("HOST",) if hosts else ()), "JOB", "DATABASE")
    header += ("STATUS", "SIZE", "DURATION")
    if summary:
        header += ("LAST SUCCESS", "LAST DRILL")
    lines = [(*header, "WHERE / ERROR")]
    for row in page.rows:
        where = row["local"]["file"] or ", ".join(row["remote"]["urls"])
        detail = where if row["status"] == SUCCESS else str(row["errorMessage"])[:120]
        line: tuple[str, ...] = (row["startedAt"], *((row["hostname"],) if hosts else ()))
        line += (row.get("job", ""), row["database"], row["status"])
        line += (format_size(int(row["local"]["sizeBytes"] or 0)), f"{row['durationSeconds']} s")
        if summary:
            line += (_last_success(row), _last_drill(row))
        lines.append((*line, detail))
    # A name or message is shown with its control characters escaped: a newline in a database
    # name must not start a row of its own (one that could pose as another backup's).
    lines = [tuple(printable(str(cell)) for cell in line) for line in lines]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)]
        out.append("  ".join([*cells, str(line[-1])]).rstrip())
    out.append(f"page {page.page} of {page.pages}, {page.total} matching report(s)")
    return "\n".join(out)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """Returns `text` with every character that is not printable escaped (\\n, \\x1b, \\u202e).

    Control characters, line and paragraph separators and format characters (bidi overrides)
    cannot then break a table row, move the cursor or reorder what follows.
    """
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " ":
            out.append(char)
        elif char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return "".join(out)
