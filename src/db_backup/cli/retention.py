"""`db-backup retention [--dry-run] [--job J]`: what each retention rule keeps and what goes."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import TYPE_CHECKING

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_BUSY, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError, warn

if TYPE_CHECKING:
    from db_backup.backup.retention_job import DatabasePreview, JobPreview
    from db_backup.config import JobConfig


def retention_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `retention`."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="only print what each rule keeps and what would be deleted, and why",
    )
    parser.add_argument("--job", metavar="J", help="only this job (default: every job)")


def retention(context: Context) -> int:
    """Prints, per job and database, what retention keeps (by which rules) and what goes; without
    --dry-run deletes it too, as the run's retention step would."""
    from db_backup.backup.retention_job import apply, preview
    from db_backup.util.clock import utc_now
    from db_backup.util.locks import JobBusy, JobSetupError

    code = EXIT_OK
    for job in _jobs(context):
        now = utc_now()
        if context.args.dry_run:
            _print_job(preview(context.config, job, now), dry_run=True)
            continue
        try:
            applied = apply(context.config, job, now)
        except JobBusy as exc:
            raise CommandError(str(exc), EXIT_BUSY) from None
        except JobSetupError as exc:
            raise CommandError(str(exc)) from None
        _print_job(applied.preview, dry_run=False)
        print(f"{job.name}: removed {len(applied.removed)} files, objects and reports")
        if applied.left:
            warn(
                f"{job.name}: {len(applied.left)} expired backup(s) could not be deleted "
                f"everywhere (see the log); their reports stay: {', '.join(applied.left)}"
            )
            code = EXIT_FAILED
    return code


def _jobs(context: Context) -> list[JobConfig]:
    """Returns the job --job names, else every job; CommandError (usage) for an unknown one."""
    if context.args.job is None:
        return list(context.config.jobs)
    try:
        return [context.config.job(context.args.job)]
    except KeyError as exc:
        raise CommandError(exc.args[0], EXIT_USAGE) from None


def _print_job(found: JobPreview, *, dry_run: bool) -> None:
    """Prints a job's plan: a heading per database, a line per backup, what each rule keeps."""
    for warning in found.warnings:
        warn(f"{found.job}: {warning}")
    if not found.databases:
        print(f"{found.job}: no reports")
    for database in found.databases:
        _print_database(database, dry_run=dry_run)


def _print_database(database: DatabasePreview, *, dry_run: bool) -> None:
    """Prints one database's plan (see `_print_job`)."""
    from db_backup.reports.calendar import describe, rule_counts

    policy = database.policy
    rules = ", ".join(f"{f.name} {getattr(policy, f.name)}" for f in fields(policy))
    print(f"{database.job}/{database.database}  ({rules}; periods in {database.zone})")
    for line in describe(database.backups, database.plan):
        print(f"  {line}")
    kept = ", ".join(f"{rule} {count}" for rule, count in rule_counts(database.plan))
    print(f"  kept by rule: {kept}")
    verb = "would delete" if dry_run else "deleting"
    if database.held:
        print(f"  held, nothing {'would be' if dry_run else 'is'} deleted: {database.held}")
    else:
        files = sum(len(d.names) for d in database.deletions)
        print(
            f"  {len(database.plan.kept)} of {len(database.backups)} backups kept; "
            f"{verb} {len(database.deletions)} ({files} files)"
        )
