"""`db-backup report --html FILE`: one self-contained page of the backups' history.

Drawn from the reports directory (the report index says which reports there are; each one's
size and duration come from its JSON file, the source of truth) and the drill reports: the last
result of every job and database, per database charts of backup size and duration over the
history (inline SVG), what retention keeps now and why, and the recent drills. The page has
its CSS inline and no script, image, font or link to anything outside it, so it can be mailed
or archived as it is.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db_backup.observe import svg_chart
from db_backup.observe.staleness import format_age
from db_backup.reports.calendar import Plan, Policy, plan, policy_for
from db_backup.reports.drills import load_drills
from db_backup.reports.index import Entry, default_path, encode, snapshot
from db_backup.reports.model import SUCCESS, parse_report
from db_backup.util.clock import format_utc, parse_utc, utc_now
from db_backup.util.fsutil import describe_os_error, write_atomically
from db_backup.util.units import format_size

if TYPE_CHECKING:
    from db_backup.config import Config

MAX_POINTS = 1000  # newest runs charted per database: a year of hourly backups stays readable
RECENT_RUNS = 10
RECENT_DRILLS = 5
ERROR_CHARS = 300
FILE_MODE = 0o640  # like the reports it is drawn from


class HtmlReportError(Exception):
    """The page cannot be written; the message names the file and the cause."""


@dataclass(frozen=True)
class Run:
    """One backup report as the page shows it."""

    name: str
    started: datetime
    status: str
    size_bytes: int
    duration_seconds: float
    error: str
    retention: dict[str, Any]


@dataclass
class History:
    """One job and database: its charted runs (oldest first) and what retention keeps."""

    job: str
    database: str
    runs: list[Run]
    total: int  # reports of this job and database, charted or not
    policy: Policy | None  # None: the job is no longer in the config
    retention: Plan | None
    drills: list[dict[str, Any]] = field(default_factory=list)  # newest first


@dataclass
class Page:
    """Everything the page shows."""

    host: str
    generated: datetime
    job: str | None
    histories: list[History]
    warnings: list[str]

    @property
    def runs(self) -> int:
        """Returns how many backup reports the page draws."""
        return sum(len(history.runs) for history in self.histories)


def _run(reports_dir: Path, entry: Entry) -> Run | None:
    """Returns the run of a report file, None when it went away or is no report any more."""
    try:
        document, _ = parse_report((reports_dir / entry.name).read_bytes())
    except OSError:
        return None
    if document is None:
        return None
    retention = document.get("retention")
    return Run(
        name=entry.name,
        started=entry.started,
        status=str(document["status"]),
        size_bytes=int(document["local"].get("sizeBytes") or 0),
        duration_seconds=float(document.get("durationSeconds") or 0),
        error=str(document.get("errorMessage") or ""),
        retention=retention if isinstance(retention, dict) else {},
    )


def _quiet(_event: str, _fields: dict[str, str]) -> None:
    """The index's notes (rebuilt, not usable) are not the page's to log."""


def collect(
    config: Config,
    job: str | None = None,
    now: datetime | None = None,
    max_points: int = MAX_POINTS,
) -> Page:
    """Returns what the page shows of `config`'s reports and drills (of `job` only, if given)."""
    now = now or utc_now()
    reports_dir = config.directories.reports
    where, params = ("job = ?", (encode(job),)) if job else ("", ())
    with snapshot(reports_dir, default_path(config.directories.state), _quiet) as snap:
        entries = snap.entries(where, params)
        warnings = snap.warnings()
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:  # newest first
        groups.setdefault((entry.job, entry.database), []).append(entry)
    drills: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for drill in load_drills(config):
        if job is None or drill.get("job") == job:
            key = (str(drill.get("job", "")), str(drill.get("database", "")))
            drills.setdefault(key, []).append(drill)
    jobs = {j.name: j for j in config.jobs}
    histories = []
    for (job_name, database), group in sorted(groups.items()):
        runs = [run for e in reversed(group[:max_points]) if (run := _run(reports_dir, e))]
        if not runs:
            continue  # every file went away since the listing
        job_config = jobs.get(job_name)
        policy = policy_for(job_config) if job_config else None
        kept = None
        if job_config is not None and policy is not None:
            kept = plan([entry.backup() for entry in group], policy, job_config.zone(), now)
        histories.append(
            History(
                job=job_name,
                database=database,
                runs=runs,
                total=len(group),
                policy=policy,
                retention=kept,
                drills=drills.get((job_name, database), []),
            )
        )
    return Page(socket.gethostname(), now, job, histories, warnings)


def write_html_report(
    config: Config, path: Path, job: str | None = None, now: datetime | None = None
) -> int:
    """Writes the page of `config`'s backups (of `job` only, if given) to `path` atomically and
    returns how many backup reports it draws; raises HtmlReportError naming the file."""
    page = collect(config, job, now)
    data = render(page).encode("utf-8")
    try:
        write_atomically(path, data, FILE_MODE)
    except OSError as exc:
        raise HtmlReportError(
            f"cannot write the HTML report {describe_os_error(exc, path)}"
        ) from None
    return page.runs


# --- the page ---------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
background:#f6f7f9;margin:0;padding:0 24px 40px}
header{padding:18px 0 6px}h1{font-size:22px;margin:0}h2{font-size:17px;margin:28px 0 8px}
h3{font-size:14px;margin:14px 0 6px;color:#4a5263}.muted{color:#6b7385}
table{border-collapse:collapse;background:#fff;margin:4px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:top}
th{font-weight:600;background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600;padding:1px 6px;border-radius:3px;color:#fff}
.status.ok{background:#2d8a4e}.status.failed{background:#c9372c}
section.database{background:#fff;border:1px solid #e3e6ec;border-radius:6px;padding:4px 16px 12px;
margin:18px 0}
.charts{display:flex;flex-wrap:wrap;gap:18px}figure{margin:0}
figcaption{font-weight:600;margin:6px 0 2px}
.chart-svg .grid{stroke:#e3e6ec;stroke-width:1}
.chart-svg .y-label{font-size:11px;fill:#6b7385;text-anchor:end}
.chart-svg .x-label{font-size:11px;fill:#6b7385}
.chart-svg .empty{font-size:13px;fill:#6b7385;text-anchor:middle}
.chart-svg .line{fill:none;stroke:#9bbcf2;stroke-width:1.5}
.chart-svg .point{fill:#1f5fd6;stroke:none}
.chart-svg .failure{fill:none;stroke:#c9372c;stroke-width:2}
.error{color:#8a2a22;max-width:60em;word-break:break-word}
"""


def _list(value: object) -> list[Any]:
    """Returns `value` if it is a list (a hand-edited report may hold anything), else []."""
    return value if isinstance(value, list) else []


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _status(status: str) -> str:
    kind = "ok" if status == SUCCESS else "failed"
    return f'<span class="status {kind}">{_e(status)}</span>'


def _ago(now: datetime, moment: datetime) -> str:
    return f"{format_age(now - moment)} ago"


def render(page: Page) -> str:
    """Returns the whole HTML document of `page`."""
    scope = f"job {page.job}" if page.job else "every job"
    title = f"db-backup on {page.host}"
    body = [
        f'<header><h1>{_e(title)}</h1><p class="muted">Generated {_e(format_utc(page.generated))}'
        f" from the reports of {_e(scope)}: {page.runs} backup reports drawn.</p></header>",
        _summary(page),
        *(_history(i, history, page.generated) for i, history in enumerate(page.histories)),
    ]
    if page.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in page.warnings[:50])
        body.append(f'<h2>Skipped files</h2><ul class="muted">{items}</ul>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def _summary(page: Page) -> str:
    """Returns the table of every job and database's newest report."""
    if not page.histories:
        return '<h2>Last results</h2><p class="muted">No backup reports yet.</p>'
    rows = []
    for index, history in enumerate(page.histories):
        last = history.runs[-1]
        good = [run for run in history.runs if run.status == SUCCESS]
        success = _ago(page.generated, good[-1].started) if good else "never"
        drill = history.drills[0] if history.drills else None
        drill_text = _status(str(drill.get("status"))) if drill else '<span class="muted">-</span>'
        rows.append(
            f'<tr><td>{_e(history.job)}</td><td><a href="#{_anchor(index)}">'
            f"{_e(history.database)}</a></td><td>{_status(last.status)}</td>"
            f"<td>{_e(format_utc(last.started))}</td><td>{_e(success)}</td>"
            f'<td class="num">{_e(svg_chart.format_seconds(last.duration_seconds))}</td>'
            f'<td class="num">{_e(format_size(good[-1].size_bytes)) if good else "-"}</td>'
            f'<td>{drill_text}</td><td class="error">{_e(last.error[:ERROR_CHARS])}</td></tr>'
        )
    head = (
        "<tr><th>Job</th><th>Database</th><th>Last result</th><th>Started</th>"
        "<th>Last success</th><th>Duration</th><th>Size</th><th>Last drill</th><th>Error</th></tr>"
    )
    return f'<h2>Last results</h2><table class="summary">{head}{"".join(rows)}</table>'


def _anchor(index: int) -> str:
    # A database name may hold anything: the section's position names it in links.
    return f"db-{index}"


def _history(index: int, history: History, now: datetime) -> str:
    """Returns the section of one job and database: charts, retention, drills, recent runs."""
    good = [run for run in history.runs if run.status == SUCCESS]
    failed = [run.started for run in history.runs if run.status != SUCCESS]
    charts = [
        svg_chart.Chart(
            "size",
            "Backup size",
            [(run.started, float(run.size_bytes)) for run in good],
            failed,
            lambda value: format_size(int(value)),
            svg_chart.SIZE_UNITS,
        ),
        svg_chart.Chart(
            "duration",
            "Backup duration",
            [(run.started, run.duration_seconds) for run in good],
            failed,
            svg_chart.format_seconds,
            svg_chart.DURATION_UNITS,
        ),
    ]
    figures = "".join(
        f'<figure class="chart" data-chart="{chart.kind}"><figcaption>{_e(chart.title)}'
        f"</figcaption>{svg_chart.render(chart)}</figure>"
        for chart in charts
    )
    shown = len(history.runs)
    note = (
        f"{shown} runs" if shown == history.total else f"the newest {shown} of {history.total} runs"
    )
    return (
        f'<section class="database" id="{_anchor(index)}" data-job="{_e(history.job)}" '
        f'data-database="{_e(history.database)}"><h2>{_e(history.job)} / {_e(history.database)}'
        f'</h2><p class="muted">{_e(note)}; {len(good)} successful, {len(failed)} failed.</p>'
        f'<div class="charts">{figures}</div>'
        + _retention(history)
        + _drills(history, now)
        + _recent(history)
        + "</section>"
    )


def _retention(history: History) -> str:
    """Returns what retention keeps of this database now, by rule, and what it did last."""
    if history.policy is None or history.retention is None:
        return '<h3>Retention</h3><p class="muted">The job is no longer in the config.</p>'
    policy = history.policy
    rules = [f"days {policy.days}", f"keep_last {policy.keep_last}"] + [
        f"{name} {getattr(policy, name)}"
        for name in ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
        if getattr(policy, name)
    ]
    by_rule: dict[str, int] = {}
    for why in history.retention.kept.values():
        for rule in why:
            by_rule[rule] = by_rule.get(rule, 0) + 1
    kept_text = ", ".join(f"{rule}: {count}" for rule, count in sorted(by_rule.items())) or "none"
    last = history.runs[-1].retention if history.runs else {}
    deleted = _list(last.get("deleted"))
    did = f"The newest run deleted {len(deleted)} files."
    if last.get("held"):
        did = f"The newest run deleted nothing: {last['held']}"
    if last.get("error"):
        did += f" Retention error: {last['error']}"
    return (
        f"<h3>Retention</h3><p>Rules: {_e(', '.join(rules))}. Kept now: "
        f"{len(history.retention.kept)} of {history.total} reports ({_e(kept_text)}); "
        f"{len(history.retention.expired)} would go. {_e(did)}</p>"
    )


def _drills(history: History, now: datetime) -> str:
    """Returns the newest drills of this database."""
    if not history.drills:
        return '<h3>Drills</h3><p class="muted">No restore drill yet.</p>'
    rows = []
    for drill in history.drills[:RECENT_DRILLS]:
        checks = _list(drill.get("checks"))
        passed = sum(1 for check in checks if isinstance(check, dict) and check.get("passed"))
        mismatches = _list(drill.get("mismatches"))
        try:
            when = _ago(now, parse_utc(str(drill.get("startedAt"))))
        except ValueError:
            when = "-"
        rows.append(
            f"<tr><td>{_e(drill.get('startedAt', ''))}</td><td>{_e(when)}</td>"
            f"<td>{_status(str(drill.get('status')))}</td>"
            f'<td class="num">{_e(drill.get("tablesChecked", 0))}</td>'
            f'<td class="num">{len(mismatches)}</td><td class="num">{passed}/{len(checks)}</td>'
            f'<td class="num">{_e(svg_chart.format_seconds(float(drill.get("restoreSeconds") or 0)))}</td>'
            f'<td class="error">{_e(str(drill.get("errorMessage") or "")[:ERROR_CHARS])}</td></tr>'
        )
    head = (
        "<tr><th>Started</th><th></th><th>Result</th><th>Tables</th><th>Mismatches</th>"
        "<th>Checks</th><th>Restore</th><th>Error</th></tr>"
    )
    return f'<h3>Drills</h3><table class="drills">{head}{"".join(rows)}</table>'


def _recent(history: History) -> str:
    """Returns the newest runs of this database, newest first."""
    rows = []
    for run in reversed(history.runs[-RECENT_RUNS:]):
        size = format_size(run.size_bytes) if run.status == SUCCESS else "-"
        rows.append(
            f"<tr><td>{_e(format_utc(run.started))}</td><td>{_status(run.status)}</td>"
            f'<td class="num">{_e(svg_chart.format_seconds(run.duration_seconds))}</td>'
            f'<td class="num">{_e(size)}</td>'
            f'<td class="error">{_e(run.error[:ERROR_CHARS])}</td></tr>'
        )
    head = "<tr><th>Started</th><th>Result</th><th>Duration</th><th>Size</th><th>Error</th></tr>"
    return f'<h3>Recent runs</h3><table class="runs">{head}{"".join(rows)}</table>'
