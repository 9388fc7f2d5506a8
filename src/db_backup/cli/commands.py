"""The command table: every command of `db-backup`, declared once, in the order help lists them.

The parser (`parser.build_parser`), what runs before a command (`Command.prepare`, logging,
waiting for alerts and the sink) and the dispatch (`db_backup.cli.main`) are derived from it.
Handlers import what they use when they run, so `status` loads no more than it needs.
"""

from __future__ import annotations

from db_backup.cli import admin, check, jobs, restore, retention, sink, status, timers
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
        description=(
            "Runs JOB now, as the schedule would: dumps each database to the job's storage, "
            "writes a JSON report per database, then applies retention. Exit status 1 when any "
            "database FAILED, 75 when the job is already running. Example: "
            "sudo db-backup run nightly"
        ),
        handler=jobs.run,
        jobs=JobChoice.ONE_OR_ALL,
        logs=Logs.FILE,
        cancellable=True,
        finishes_events=True,
    ),
    Command(
        "status",
        help="show backup results from the reports directory",
        description=(
            "Shows the newest result per job and database (or every report with --history), "
            "read from the reports directory; --from-db reads the sink's table instead. "
            "Example: sudo db-backup status --history --job nightly --since 2026-12-01"
        ),
        handler=status.status,
        arguments=status.status_arguments,
        logs=Logs.NONE,  # no structlog to import and set up: status stays quick
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
        description=(
            "Prints the next run times of each job (or of JOB) in the job's time zone, as the "
            "daemon will start them. Example: sudo db-backup next nightly -n 5"
        ),
        handler=jobs.next_runs,
        arguments=jobs.next_arguments,
        jobs=JobChoice.ONE_OR_EVERY,
    ),
    Command(
        "daemon",
        help="run the scheduler (what db-backup.service starts)",
        description=(
            "Runs the scheduler in the foreground: each job at its schedule, drills, "
            "staleness checks, metrics; tells systemd READY, STATUS and the watchdog. "
            "Started by db-backup.service; not meant to be run by hand."
        ),
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
        "timers",
        help="print, or with --apply write, the timer units' drop-ins that keep each job's "
        "schedule, time zone and credentials",
        description=(
            "For the timer variant (db-backup@JOB.timer, db-backup-drill@JOB.timer instead of "
            "the daemon): writes db-backup@JOB.timer.d/schedule.conf with the job's cron "
            "schedule as OnCalendar= in its time zone, the same for the drill's schedule, and "
            "the credentials db-backup.service loads for the template services. A schedule a "
            "timer cannot keep is refused, naming why, and nothing is written. Runs as root. "
            "Example: sudo db-backup timers --apply"
        ),
        handler=timers.timers,
        arguments=timers.timers_arguments,
        keeps_root=True,
    ),
    Command(
        "oss-lifecycle",
        help="show, or with --apply set, the OSS lifecycle rule on the prefix",
        handler=admin.lifecycle,
        arguments=admin.lifecycle_arguments,
    ),
    Command(
        "retention",
        help="show (--dry-run) or apply now what retention keeps and deletes, per rule",
        description=(
            "Prints, per job and database, every backup with the retention rules that keep it "
            "(days, keep_last, keep_hourly ... keep_yearly, the newest success) or that no rule "
            "does, and the size guard's hold; --dry-run changes nothing, without it the plan "
            "is applied now, as each successful backup's retention step would. "
            "Example: sudo db-backup retention --dry-run --job nightly"
        ),
        handler=retention.retention,
        arguments=retention.retention_arguments,
    ),
    Command(
        "restore",
        help="restore a backup (checksum verified first)",
        description=(
            "Restores one backup: SOURCE is a report file (.json), a report id, a dump path or "
            "an oss://bucket/key URL; without SOURCE, the newest successful backup of --job and "
            "--database (with --before TIME: the newest that started before TIME). --table, "
            "--schema and --data-only restore part of it; --list prints its table of contents."
        ),
        handler=restore.restore,
        arguments=restore.restore_arguments,
        cancellable=True,
    ),
    Command(
        "verify",
        help="check stored backups against their reports (sha256, size, CRC-64)",
        description=(
            "Checks stored backups against their reports: local copies by sha256 and size; "
            "--remote the remote copies by size and the backend's checksum; --deep reads "
            "every remote byte and checks the sha256. Example: sudo db-backup verify --job "
            "nightly --remote"
        ),
        handler=restore.verify,
        arguments=restore.verify_arguments,
    ),
    Command(
        "drill",
        help="restore the newest backups of a job into a throwaway cluster and check them",
        description=(
            "Proves that JOB's newest backups restore: restores each into a throwaway cluster "
            "(or the job's drill target), compares row counts with those recorded at dump "
            "time, runs the drill checks, and writes a drill report. Example: sudo db-backup "
            "drill nightly"
        ),
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
