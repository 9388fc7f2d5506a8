"""The end of one database's backup: its report written, retention applied, consumers told.

Report first, then prune: a good backup is on record before anything old is deleted, and a
report that cannot be written takes its dump away again, so nothing looks like a good backup
without one. After the report, the one seam to its consumers (`events.publish`: the database
sink, alerts, metrics) hears of it; they never change the backup's status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from db_backup.backup.context import RunContext, describe_error
from db_backup.backup.history import current_backup
from db_backup.backup.prune import apply_retention
from db_backup.config import Config
from db_backup.observe import events
from db_backup.reports.model import FAILED, SUCCESS, Report, write_report
from db_backup.storage import delete_quietly
from db_backup.storage.base import StorageError, Target
from db_backup.util.clock import utc_now
from db_backup.util.fsutil import describe_os_error
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.finish")


def remove_partial(targets: list[Target], report: Report) -> None:
    """Deletes what a failed database's run had already stored, so nothing looks like a backup.

    Each target's list in `report.stored` is emptied as its files go: the report then names
    none of them (its `local`, `remote`, `targets` and `artefacts` all derive from those lists).
    """
    report.status = FAILED
    for target in targets:
        delete_quietly(target, report.stored.get(target.name, []))


def finish(ctx: RunContext, report: Report) -> None:
    """Writes the report, then (after a success) applies retention and records what it did."""
    ctx.reported.add(report.database)
    report.finished = utc_now()
    reports_dir = ctx.config.directories.reports
    try:
        path = write_report(reports_dir, report)
    except OSError as exc:
        _unwritten(ctx, report, exc)
        return
    ctx.history.add(current_backup(report))
    if report.status == SUCCESS:
        _prune(ctx, report, path)
    document = report.to_json()
    for target in ctx.targets:
        if target.name == "local":
            continue
        try:
            target.put_file(path, path.name)
        except StorageError as exc:
            log.warning("report not copied to the remote", target=target.name, error=mask(str(exc)))
    ctx.result.reports.append(document)
    ctx.result.report_paths.append(path)
    level = log.info if report.status == SUCCESS else log.error
    level(
        "backup finished",
        job=ctx.job.name,
        database=report.database,
        status=report.status,
        bytes=report.size_bytes,
        duration_s=document["durationSeconds"],
        report=str(path),
        file=report.local_file or None,
        urls=report.remote_urls or None,
        sha256=report.sha256 or None,
        deleted=len(report.retention_deleted),
        error=document["errorMessage"] or None,
    )
    after_report(ctx.config, document, path)


def _unwritten(ctx: RunContext, report: Report, exc: OSError) -> None:
    """Records a report that could not be written as FAILED and takes its dump away again."""
    reports_dir = ctx.config.directories.reports
    message = f"cannot write the report: {describe_os_error(exc, exc.filename or reports_dir)}"
    log.error("report not written", job=ctx.job.name, database=report.database, error=message)
    document = report.to_json()  # what the report would have said, as the consumers hear it
    # A dump without a report must not look like a good backup: take it away again.
    for target in ctx.targets:
        delete_quietly(target, report.stored.get(target.name, []))
    document["status"] = FAILED
    document["errorMessage"] = message
    ctx.result.reports.append(document)
    ctx.result.error = message
    after_report(ctx.config, document, None)


def _prune(ctx: RunContext, report: Report, path: Path) -> None:
    """Applies retention after a good backup and writes its result into the report."""
    reports_dir = ctx.config.directories.reports
    try:
        report.retention_deleted = apply_retention(
            ctx.config, ctx.job, report, ctx.targets, ctx.history
        )
    except Exception as exc:  # pruning never turns a written good backup into a failure
        report.retention_error = describe_error(exc, reports_dir)
        log.error("retention failed", job=ctx.job.name, error=report.retention_error)
    try:
        write_report(reports_dir, report, replace=True)
    except OSError as exc:
        log.warning(
            "report not updated with the retention result",
            job=ctx.job.name,
            error=describe_os_error(exc, path),
        )


def after_report(config: Config, document: dict[str, Any], path: Path | None) -> None:
    """The one seam after a report is written: its consumers (sink, alerts, metrics) hear of it.

    They never change the backup's status: `events.publish` logs and counts their failures.
    """
    events.publish(
        config,
        events.Event(
            kind=events.BACKUP,
            job=document["job"],
            database=document["database"],
            ok=document["status"] == SUCCESS,
            message=document["errorMessage"] or "",
            report=document,
            report_path=path,
        ),
    )
