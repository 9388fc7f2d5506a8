"""The command table: every command of `db-backup`, declared once, in the order help lists them.

The parser (`parser.build_parser`), what runs before a command (`Command.prepare`, logging,
waiting for alerts and the sink) and the dispatch (`db_backup.cli.main`) are derived from it.
Handlers import what they use when they run, so `status` loads no more than it needs.
"""

from __future__ import annotations

from db_backup.cli import admin, check, jobs, restore, sink, status
from db_backup.cli.command import Command, JobChoice, Logs

COMMANDS: tuple[Command, ...] = (
    Command(
        "check-config",
        help="validate the config and resolve its secrets; list every mistake",
        description=(
            "Validates the config file and resolves every secret it names (env, file, "
            "credential) from where it runs; exit status 0 means the config is usable here."
        ),
        handler=check.check_config,
        arguments=check.check_config_arguments,
        logs=Logs.NONE,
    ),
    Command(
        "run",
        help="run a job now (or every job with --all)",
        handler=jobs.run,
        jobs=JobChoice.ONE_OR_ALL,
        logs=Logs.FILE,
        cancellable=True,
        finishes_events=True,
    ),
    Command(
        "status",
        help="show backup results from the reports directory",
        handler=status.status,
        arguments=status.status_arguments,
        logs=Logs.NONE,  # no structlog to import and set up: status stays quick
        secrets=status.needs_secrets,  # only --from-db (the sink's DSN)
    ),
    Command(
        "report",
        help="write the backups' history as a self-contained HTML page (--html FILE)",
        handler=status.report,
        arguments=status.report_arguments,
    ),
    Command(
        "next",
        help="print the next run times of each job",
        handler=jobs.next_runs,
        arguments=jobs.next_arguments,
        jobs=JobChoice.ONE_OR_EVERY,
        secrets=lambda _args: False,
    ),
    Command(
        "daemon",
        help="run the scheduler (what db-backup.service starts)",
        handler=jobs.daemon,
        logs=Logs.FILE,
        finishes_events=True,
    ),
    Command(
        "reload",
        help="validate the config, then tell a running daemon to reload it (SIGHUP); "
        "what `systemctl reload db-backup` runs",
        handler=admin.reload,
        arguments=admin.reload_arguments,
    ),
    Command(
        "oss-lifecycle",
        help="show, or with --apply set, the OSS lifecycle rule on the prefix",
        handler=admin.lifecycle,
        arguments=admin.lifecycle_arguments,
    ),
    Command(
        "restore",
        help="restore a backup (checksum verified first)",
        description=(
            "Restores one backup: SOURCE is a report file (.json), a report id, a dump path or "
            "an oss://bucket/key URL; without SOURCE, the newest successful backup of --job and "
            "--database."
        ),
        handler=restore.restore,
        arguments=restore.restore_arguments,
        cancellable=True,
    ),
    Command(
        "verify",
        help="check stored backups against their reports (sha256, size, CRC-64)",
        handler=restore.verify,
        arguments=restore.verify_arguments,
    ),
    Command(
        "drill",
        help="restore the newest backups of a job into a throwaway cluster and check them",
        handler=jobs.drill,
        arguments=jobs.drill_arguments,
        jobs=JobChoice.ONE,
        logs=Logs.FILE,
        cancellable=True,
        finishes_events=True,
    ),
    Command(
        "sync-reports",
        help="load every backup and drill report on disk into the sink's database (idempotent)",
        handler=sink.sync_reports,
    ),
    Command(
        "notify-test",
        help="send a test alert through every notification channel; exit 1 naming those that failed",
        handler=admin.notify_test,
    ),
)

BY_NAME = {command.name: command for command in COMMANDS}
