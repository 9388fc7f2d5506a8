"""The `db-backup` command: check-config, run, status, next, daemon, oss-lifecycle."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from db_backup import __version__, logs
from db_backup.config import Config, ConfigError, config_path, load
from db_backup.secrets import SecretError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 1
EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the job holds the lock


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="db-backup",
        description="Scheduled PostgreSQL logical backups to local disk and Aliyun OSS.",
    )
    parser.add_argument("--version", action="version", version=f"db-backup {__version__}")
    parser.add_argument(
        "--config",
        help="config file (default: $DB_BACKUP_CONFIG or /etc/db-backup/config.yaml)",
    )
    parser.add_argument(
        "--log-format", choices=["journal", "console", "json"], help="override log output"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check-config", help="validate the config; list every mistake")
    check.add_argument("--quiet", action="store_true", help="print nothing when it is valid")

    run = sub.add_parser("run", help="run a job now (or every job with --all)")
    target = run.add_mutually_exclusive_group(required=True)
    target.add_argument("job", nargs="?", help="job name from the config")
    target.add_argument("--all", action="store_true", help="run every job, one after another")

    status = sub.add_parser("status", help="show backup results from the reports directory")
    status.add_argument("--history", action="store_true", help="every report, not the latest")
    status.add_argument("--job", help="only this job")
    status.add_argument("--database", help="only this database")
    status.add_argument("--status", choices=["SUCCESS", "FAILED", "success", "failed"])
    status.add_argument("--since", type=_parse_since, help="only runs started at/after (ISO 8601)")
    status.add_argument("--limit", type=_positive, default=20, help="rows per page (default 20)")
    status.add_argument("--page", type=_positive, default=1, help="page number (default 1)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    nxt = sub.add_parser("next", help="print the next run times of each job")
    nxt.add_argument("job", nargs="?", help="only this job")
    nxt.add_argument("-n", "--count", type=_positive, default=5, help="runs per job (default 5)")

    sub.add_parser("daemon", help="run the scheduler (what db-backup.service starts)")

    lifecycle = sub.add_parser(
        "oss-lifecycle", help="show, or with --apply set, the OSS lifecycle rule on the prefix"
    )
    lifecycle.add_argument("--apply", action="store_true", help="set the rule on the bucket")
    lifecycle.add_argument("--ia-after-days", type=_positive, default=30)
    lifecycle.add_argument("--expire-after-days", type=_positive, default=90)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parse_since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns the process exit status."""
    args = _parser().parse_args(argv)
    path = config_path(args.config)
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        from db_backup.crypto import check_config

        try:  # beyond the schema: age itself checks every recipient (checksum, key)
            check_config(config)
        except ConfigError as exc:
            print(f"db-backup: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if not args.quiet:
            names = ", ".join(j.name for j in config.jobs)
            print(f"{path}: OK ({len(config.jobs)} job(s): {names})")
        return EXIT_OK
    log_dir = config.directories.logs if args.command in {"run", "daemon"} else None
    logs.setup(args.log_level, log_dir, args.log_format)
    if args.command == "run":
        return _cmd_run(config, args)
    if args.command == "status":
        return _cmd_status(config, args)
    if args.command == "next":
        return _cmd_next(config, args)
    if args.command == "daemon":
        from db_backup.daemon import run_daemon

        return run_daemon(path)
    if args.command == "oss-lifecycle":
        return _cmd_lifecycle(config, args)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects others


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    from db_backup.execute import CancelToken
    from db_backup.job import JobBusy, JobSetupError, run_job

    log = structlog.get_logger("db_backup.cli")
    cancel = CancelToken()

    def stop(signum: int, _frame: object) -> None:
        cancel.cancel(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.all:
        jobs = list(config.jobs)
    else:
        try:
            jobs = [config.job(args.job)]
        except KeyError as exc:
            print(f"db-backup: {exc.args[0]}", file=sys.stderr)
            return EXIT_FAILED
    code = EXIT_OK
    for job in jobs:
        try:
            if cancel.is_cancelled():
                break
            token = CancelToken.for_job(job.timeout_seconds, parent=cancel)
            result = run_job(config, job, cancel=token)
        except JobBusy as exc:
            log.error("job already running", job=job.name, error=str(exc))
            print(f"db-backup: {exc}", file=sys.stderr)
            code = code or EXIT_BUSY
            continue
        except JobSetupError as exc:  # e.g. the lock file cannot be created
            log.error("job could not start", job=job.name, error=str(exc))
            print(f"db-backup: {exc}", file=sys.stderr)
            code = EXIT_FAILED
            continue
        for path in result.report_paths:
            print(path)
        if not result.ok:
            code = EXIT_FAILED
    return code


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    from db_backup.status import StatusQuery, query, render_table

    page = query(
        config.directories.reports,
        StatusQuery(
            history=args.history,
            job=args.job,
            database=args.database,
            status=args.status,
            since=args.since,
            limit=args.limit,
            page=args.page,
        ),
    )
    for warning in page.warnings:
        print(f"db-backup: warning: {warning}", file=sys.stderr)
    if args.json:
        document = {
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
            "reports": page.rows,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(render_table(page))
    return EXIT_OK


def _cmd_next(config: Config, args: argparse.Namespace) -> int:
    from db_backup.schedule import next_runs

    try:
        jobs = [config.job(args.job)] if args.job else list(config.jobs)
    except KeyError as exc:
        print(f"db-backup: {exc.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    now = datetime.now(UTC)
    for job in jobs:
        zone = job.zone()
        print(f"{job.name}  {job.schedule!r}  ({zone.key})")
        for moment in next_runs(job.schedule, zone, now, args.count):
            print(
                f"  {moment:%Y-%m-%d %H:%M %Z (%z)}  =  {moment.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"
            )
    return EXIT_OK


def _cmd_lifecycle(config: Config, args: argparse.Namespace) -> int:
    from db_backup.storage import oss_settings
    from db_backup.storage.base import StorageError
    from db_backup.storage.oss import apply_lifecycle, describe_lifecycle, get_lifecycle

    if config.storage.oss is None:
        print("db-backup: oss-lifecycle needs a storage.oss section in the config", file=sys.stderr)
        return EXIT_FAILED
    try:
        settings = oss_settings(config)
        if args.apply:
            rules = apply_lifecycle(
                settings, ia_after_days=args.ia_after_days, expire_after_days=args.expire_after_days
            )
            print(f"lifecycle rule set on oss://{settings.bucket}/{settings.prefix}")
        else:
            rules = get_lifecycle(settings)
    except (StorageError, SecretError, ValueError) as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(describe_lifecycle(rules))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
