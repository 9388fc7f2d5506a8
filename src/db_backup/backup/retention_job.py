"""Retention of a whole job on demand: what it would do now (`preview`), and doing it (`apply`).

`db-backup retention --dry-run` prints the preview; `db-backup retention` applies the same plan
at once (after a policy change, say, instead of waiting for each database's next backup). The
decision is the one the run's retention step makes (`reports.calendar.plan` through
`prune.deletions_of`, over the same reports index), with the size guard's verdict on the newest
successful backup (`sizeguard.check_size`): when it holds, nothing goes. A preview only reads
(the index and the two newest successful reports); `apply` holds the job's lock, so no run of
the job writes or prunes meanwhile, and deletes through the run's own deletion step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from db_backup.backup.prune import Deletion, deletions_of
from db_backup.backup.sizeguard import check_size
from db_backup.config import Config, JobConfig
from db_backup.reports import index as report_index
from db_backup.reports.calendar import Plan, Policy, plan, policy_for
from db_backup.reports.model import NotAReport, read_report
from db_backup.reports.retention import Backup
from db_backup.storage.base import StorageError
from db_backup.util.secrets import mask
from db_backup.util.units import format_size

log = structlog.get_logger("db_backup.backup.retention_job")


@dataclass(frozen=True)
class DatabasePreview:
    """Retention's plan for one database of a job, and whether the size guard holds it."""

    job: str
    database: str
    policy: Policy
    zone: str
    backups: list[Backup]
    plan: Plan
    held: str = ""  # why nothing would be deleted now ("": not held)
    deletions: list[Deletion] = field(default_factory=list)  # what would go (none when held)


@dataclass(frozen=True)
class JobPreview:
    """Every database a job has reports of, with the index's warnings (malformed reports)."""

    job: str
    databases: list[DatabasePreview]
    warnings: list[str]


def preview(config: Config, job: JobConfig, now: datetime) -> JobPreview:
    """Returns what retention would keep and delete of `job`'s backups at `now`, per database
    it has reports of (one index snapshot; nothing is changed)."""
    directories = config.directories
    index_path = report_index.default_path(directories.state)
    with report_index.snapshot(directories.reports, index_path) as snap:
        names = sorted({n.database for n in snap.newest() if n.job == job.name})
        groups = {name: snap.backups(job.name, name) for name in names}
        warnings = snap.warnings()
    policy, zone = policy_for(job), job.zone()
    found = []
    for name, backups in groups.items():
        decided = plan(backups, policy, zone, now)
        held = _held(config, job, backups)
        found.append(
            DatabasePreview(
                job=job.name,
                database=name,
                policy=policy,
                zone=zone.key,
                backups=backups,
                plan=decided,
                held=held,
                deletions=[] if held else deletions_of(decided),
            )
        )
    return JobPreview(job.name, found, warnings)


def _held(config: Config, job: JobConfig, backups: list[Backup]) -> str:
    """Returns the size guard's reason to hold retention for the newest successful backup
    against the one before it (as the run's step would), or ""."""
    threshold = job.capacity.suspicious_ratio
    if threshold <= 0:
        return ""
    documents: list[dict[str, Any]] = []
    for backup in sorted(backups, key=lambda b: b.started, reverse=True):
        if len(documents) == 2:
            break
        if backup.successful:
            try:
                documents.append(read_report(config.directories.reports / backup.key).document)
            except NotAReport:
                continue
    if len(documents) < 2:
        return ""
    check = check_size(documents[0], documents[1], threshold=threshold)
    if check is None or not check.hold:
        return ""
    return (
        f"the newest successful backup is suspiciously small: {format_size(check.size)}, "
        f"{check.ratio:.0%} of the one before it ({format_size(check.previous_size)}), under "
        f"capacity.suspicious_ratio {threshold:g}; retention keeps everything until a backup "
        "of normal size is made"
    )


@dataclass(frozen=True)
class Applied:
    """What `apply` did: the plan it applied, what was removed, and what could not be."""

    preview: JobPreview
    removed: list[str]  # files, objects and reports deleted
    left: list[str]  # reports of expired backups kept because a target could not delete


def apply(config: Config, job: JobConfig, now: datetime) -> Applied:
    """Deletes what `preview` says would go, under the job's lock (JobBusy while a run holds it).

    One listing and batched deletes per target for the whole job (a policy change can expire
    thousands of backups at once; the run's step deletes one backup at a time). As in the
    run's step, the reports go last and only when every target deleted its files: a target
    that fails is logged and every report stays, naming what may remain.
    """
    from db_backup.storage import make_targets
    from db_backup.util.locks import JobSetupError, job_lock
    from db_backup.util.secrets import SecretError

    with job_lock(config.directories.state, job.name):
        found = preview(config, job, now)
        deletions = [d for database in found.databases for d in database.deletions]
        if not deletions:
            return Applied(found, [], [])
        try:
            targets = make_targets(config, job)
        except (StorageError, SecretError) as exc:
            raise JobSetupError(f"retention of job {job.name!r}: {mask(str(exc))}") from None
        files = [n for d in deletions for n in d.names if n != d.key]
        removed: list[str] = []
        for target in targets:
            try:
                removed.extend(target.delete(files))
            except StorageError as exc:
                log.error(
                    "retention could not delete",
                    job=job.name,
                    target=target.name,
                    error=mask(str(exc)),
                )
                return Applied(found, removed, [d.key for d in deletions])
        reports = [d.key for d in deletions if d.key in d.names]
        for target in targets:
            if target.name != "local":
                with contextlib.suppress(StorageError):
                    removed.extend(target.delete(reports))
        for key in reports:
            (config.directories.reports / key).unlink(missing_ok=True)
            removed.append(str(config.directories.reports / key))
    log.info("retention applied", job=job.name, deleted=len(deletions), removed=len(removed))
    return Applied(found, removed, [])
