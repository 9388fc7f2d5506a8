"""The retention step after a good backup: delete this job's expired backups of the database.

Which backups expire is `reports.calendar.plan`'s choice, over the run's in-memory
view of the job's reports (`backup.history`) with the new report in it; `plan_deletions` turns
it into the files to delete (never one a kept report still names). The size guard
(`backup.sizeguard`) may hold the step: then nothing is deleted. A report goes last, and only
once every target deleted its files, so a failure leaves the report naming what may remain.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import structlog

from db_backup.backup.history import JobHistory, current_backup
from db_backup.backup.sizeguard import hold_retention
from db_backup.config import Config, JobConfig
from db_backup.reports.calendar import Plan, Policy, policy_for
from db_backup.reports.calendar import plan as calendar_plan
from db_backup.reports.model import Report
from db_backup.reports.retention import Backup
from db_backup.storage.base import StorageError, Target
from db_backup.util.clock import utc_now
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.prune")


@dataclass(frozen=True)
class Deletion:
    """One expired backup: its report's name and the files to delete (the report's among them
    when no kept report names it)."""

    key: str
    database: str
    names: list[str]


def plan_deletions(
    backups: list[Backup], policy: Policy, *, now: datetime, zone: tzinfo = UTC
) -> list[Deletion]:
    """Returns what retention deletes from `backups`: per expired backup, its unshared files.

    The calendar plan decides (`days` and `keep_last`, then the calendar rules in `zone`).
    """
    return deletions_of(calendar_plan(backups, policy, zone, now))


def deletions_of(found: Plan) -> list[Deletion]:
    """Returns the deletions of a retention plan: per expired backup, the files no kept one names."""
    return [
        Deletion(b.key, b.database, [n for n in b.files if n not in found.still_named])
        for b in found.expired
    ]


def apply_retention(
    config: Config,
    job: JobConfig,
    current: Report,
    targets: list[Target],
    history: JobHistory,
) -> list[str]:
    """Deletes this job's expired backups of `current.database`; returns what was removed."""
    if hold_retention(config, job, current, history):
        return []  # the newest backup looks too small: keep every old one (the report says so)
    for warning in history.warnings:
        log.warning("retention skipped a malformed report", job=job.name, reason=warning)
    # The current report is already written (report first, then prune): take it as it is now.
    current_key = f"{current.stem}.json"
    backups = [b for b in history.backups(current.database) if b.key != current_key]
    backups.append(current_backup(current))
    plan = plan_deletions(backups, policy_for(job), now=utc_now(), zone=job.zone())
    removed: list[str] = []
    for deletion in plan:
        removed.extend(_delete(config, job, targets, deletion, history))
    if removed:
        log.info(
            "retention removed old backups",
            job=job.name,
            database=current.database,
            removed=removed,
        )
    return removed


def _delete(
    config: Config,
    job: JobConfig,
    targets: list[Target],
    deletion: Deletion,
    history: JobHistory,
) -> list[str]:
    """Deletes one expired backup's files from every target, then its report; returns them."""
    removed: list[str] = []
    names = deletion.names
    for target in targets:
        try:
            removed.extend(target.delete([n for n in names if n != deletion.key]))
        except StorageError as exc:
            log.error(
                "retention could not delete",
                job=job.name,
                target=target.name,
                error=mask(str(exc)),
            )
            names = []  # keep the report while its files may still exist
    if names and deletion.key in names:
        for target in targets:
            if target.name != "local":
                with contextlib.suppress(StorageError):
                    removed.extend(target.delete([deletion.key]))
        report_file = config.directories.reports / deletion.key
        report_file.unlink(missing_ok=True)
        history.remove(deletion.database, deletion.key)
        removed.append(str(report_file))
    return removed
