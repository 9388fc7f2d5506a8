"""The `db-backup` command: check-config, run, status, next, daemon, reload, oss-lifecycle,
restore, verify, drill, sync-reports."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from db_backup import __version__
from db_backup.config import Config, ConfigError, SecretRef, config_path, load
from db_backup.util.clock import format_utc, parse_utc, to_the_second, utc_now
from db_backup.util.secrets import SecretError

if TYPE_CHECKING:
    from db_backup.util.cancel import CancelToken

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # what argparse uses for a wrong command line
EXIT_BUSY = 75  # EX_TEMPFAIL: another run of the job holds the lock
EXIT_CONFIG = 78  # EX_CONFIG: the config file is unusable
EVENTS_FINISH_SECONDS = 30.0  # at most this long after a run for alerts and the sink to finish

EXIT_STATUS_HELP = """exit status:
  0   success
  1   the command failed: a backup FAILED, status cannot read the reports directory, or
      sync-reports / status --from-db cannot reach the sink's database
  2   wrong command line: unknown option, command or job name
  75  the job is already running (another run holds its lock); try again later (EX_TEMPFAIL)
  78  the config is unusable: invalid, or check-config cannot read a secret it names (EX_CONFIG)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="db-backup",
        description="Scheduled PostgreSQL logical backups to local disk and Aliyun OSS.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"db-backup {__version__}")
    _global_options(parser, defaults=True)
    # The same options after the command (`db-backup check-config --config x.yaml`); SUPPRESS
    # keeps a subcommand from overwriting a value given before the command with its default.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_subparser_class(common),
    )

    check = sub.add_parser(
        "check-config",
        help="validate the config and resolve its secrets; list every mistake",
        description=(
            "Validates the config file and resolves every secret it names (env, file, "
            "credential) from where it runs; exit status 0 means the config is usable here."
        ),
    )
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
    status.add_argument(
        "--from-db",
        action="store_true",
        help="the fleet view: every host's results from the sink's database (sink: in the config)",
    )

    nxt = sub.add_parser("next", help="print the next run times of each job")
    nxt.add_argument("job", nargs="?", help="only this job")
    nxt.add_argument("-n", "--count", type=_positive, default=5, help="runs per job (default 5)")

    sub.add_parser("daemon", help="run the scheduler (what db-backup.service starts)")

    reload = sub.add_parser(
        "reload",
        help="validate the config, then tell a running daemon to reload it (SIGHUP); "
        "what `systemctl reload db-backup` runs",
    )
    reload.add_argument(
        "--pid", type=_positive, required=True, help="the daemon's process id ($MAINPID)"
    )

    lifecycle = sub.add_parser(
        "oss-lifecycle", help="show, or with --apply set, the OSS lifecycle rule on the prefix"
    )
    lifecycle.add_argument("--apply", action="store_true", help="set the rule on the bucket")
    lifecycle.add_argument("--ia-after-days", type=_positive, default=30)
    lifecycle.add_argument("--expire-after-days", type=_positive, default=90)
    _add_restore_parser(sub)
    verify = sub.add_parser(
        "verify", help="check stored backups against their reports (sha256, size, CRC-64)"
    )
    verify.add_argument("--job", help="only this job")
    verify.add_argument("--database", help="only this database")
    verify.add_argument("--latest", action="store_true", help="only the newest per job/database")
    verify.add_argument(
        "--remote", action="store_true", help="also check the OSS objects (HEAD, no download)"
    )
    verify.add_argument(
        "--deep",
        action="store_true",
        help="download the OSS objects and hash them (implies --remote)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    drill = sub.add_parser(
        "drill",
        help="restore the newest backups of a job into a throwaway cluster and check them",
    )
    drill.add_argument("job", help="job name from the config")
    drill.add_argument("--json", action="store_true", help="print the drill reports as JSON")
    sub.add_parser(
        "sync-reports",
        help="load every backup and drill report on disk into the sink's database (idempotent)",
    )
    sub.add_parser(
        "notify-test",
        help="send a test alert through every notification channel; exit 1 naming those that failed",
    )
    return parser


def _global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Adds --config, --log-format and --log-level, with defaults or with SUPPRESS."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        default=default(None),
        help="config file (default: $DB_BACKUP_CONFIG or /etc/db-backup/config.yaml)",
    )
    parser.add_argument(
        "--log-format",
        choices=["journal", "console", "json"],
        default=default(None),
        help="override log output",
    )
    parser.add_argument("--log-level", default=default("info"), help="debug, info, warning, error")


def _subparser_class(common: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """Returns a parser class whose instances take the global options and list exit codes."""

    class SubParser(argparse.ArgumentParser):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("parents", [common])
            kwargs.setdefault("epilog", EXIT_STATUS_HELP)
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
            super().__init__(**kwargs)

    return SubParser


def _add_restore_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    restore = sub.add_parser(
        "restore",
        help="restore a backup (checksum verified first)",
        description="Restores one backup: SOURCE is a report file (.json), a report id, a dump "
        "path or an oss://bucket/key URL; without SOURCE, the newest successful backup of "
        "--job and --database.",
    )
    restore.add_argument("source", nargs="?", help="report file, report id, dump path, oss:// URL")
    restore.add_argument("--job", help="job of the backup (and whose connection to restore to)")
    restore.add_argument("--database", help="database of the backup (with --job, no SOURCE)")
    restore.add_argument("--to-database", help="restore under this name (default: the original)")
    restore.add_argument(
        "--clean", action="store_true", help="restore over an existing database (drop its objects)"
    )
    restore.add_argument(
        "--globals", action="store_true", help="restore roles and tablespaces first"
    )
    restore.add_argument(
        "--no-tablespaces", action="store_true", help="leave tablespaces out (all objects default)"
    )
    restore.add_argument(
        "-j", "--jobs", type=_positive, default=2, help="pg_restore parallel jobs (default 2)"
    )
    restore.add_argument("--from-oss", action="store_true", help="use the OSS copy, not local")
    restore.add_argument(
        "--identity",
        metavar="FILE",
        help="age identity (private key) file for an encrypted backup "
        "(default: the job's encryption.age.identity)",
    )
    restore.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    restore.add_argument("--host", help="target server (default: the job's connection)")
    restore.add_argument("--port", type=_positive, help="target port")
    restore.add_argument("--username", help="target role (a superuser for --globals)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parse_since(text: str) -> datetime:
    try:
        return parse_utc(text, naive_is_utc=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line and returns the process exit status."""
    args = _parser().parse_args(argv)
    path = config_path(args.config)
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    refusal = become_run_as_user(config)
    if refusal is not None:
        print(f"db-backup: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        from db_backup.storage.crypto import check_config as check_encryption

        try:  # beyond the schema: age itself checks every recipient (checksum, key)
            check_encryption(config)
        except ConfigError as exc:
            print(f"db-backup: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        from db_backup.observe.metrics import MetricsError
        from db_backup.observe.metrics import check_config as check_metrics

        try:  # a metrics.listen that is not loopback (without allow_remote) is refused
            check_metrics(config)
        except MetricsError as exc:
            print(f"db-backup: {config.source}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return _cmd_check_config(config, path, args)
    if args.command == "status":
        return _cmd_status(config, args)  # logs nothing: no structlog to import and set up
    from db_backup.observe import logs

    log_dir = config.directories.logs if args.command in {"run", "daemon", "drill"} else None
    logs.setup(args.log_level, log_dir, args.log_format)
    if args.command in {"run", "daemon", "drill"}:
        from db_backup.observe import events

        try:
            return _dispatch(config, path, args)
        finally:  # alerts still being sent, the sink's outbox: finished, within a bound
            events.shutdown(timeout=EVENTS_FINISH_SECONDS)
    return _dispatch(config, path, args)


def _dispatch(config: Config, path: str, args: argparse.Namespace) -> int:
    if args.command == "run":
        return _cmd_run(config, args)
    if args.command == "next":
        return _cmd_next(config, args)
    if args.command == "daemon":
        from db_backup.daemon.loop import run_daemon

        return run_daemon(path)
    if args.command == "reload":
        return _cmd_reload(args)
    if args.command == "oss-lifecycle":
        return _cmd_lifecycle(config, args)
    if args.command == "restore":
        return _cmd_restore(config, args)
    if args.command == "verify":
        return _cmd_verify(config, args)
    if args.command == "drill":
        return _cmd_drill(config, args)
    if args.command == "sync-reports":
        from db_backup.observe.jobtable import sync_reports

        return sync_reports(config)
    if args.command == "notify-test":
        return _cmd_notify_test(config)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects others


def become_run_as_user(config: Config) -> str | None:
    """Makes a root process the config's `run_as` user; returns why it cannot, or None.

    Like `runuser -u USER`: supplementary groups, gid, then uid (the order that keeps the right
    to change the next one), HOME/USER/LOGNAME, and the service's umask, so that a manual
    `sudo db-backup run` uses the same peer authentication and ~/.pgpass as the service and
    leaves only files the service (User=postgres) can use. Any other user, and root with
    `run_as: null`, stays as it is.
    """
    if os.geteuid() != 0 or config.run_as is None:
        return None
    try:
        account = pwd.getpwnam(config.run_as)
    except KeyError:
        return (
            f"run_as: there is no user {config.run_as!r} on this host. Create it, run db-backup "
            f"as the user that owns the backups (runuser -u <user> -- db-backup ...), or set "
            f"run_as: null in {config.source} to run as root"
        )
    if account.pw_uid == 0:
        return None
    try:
        os.initgroups(account.pw_name, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    except OSError as exc:
        return f"run_as: cannot become user {account.pw_name!r}: {exc.strerror}"
    if os.getuid() != account.pw_uid or os.geteuid() != account.pw_uid:  # pragma: no cover
        return f"run_as: still running as uid {os.geteuid()} after switching to {account.pw_name!r}"
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    os.umask(0o077)  # UMask= of the units: files made by hand match those the service makes
    # pg_dumpall finds pg_dump through the working directory, which must stay reachable
    # (sudo from /root leaves one the new user cannot enter).
    if not os.access(".", os.R_OK | os.X_OK):
        for directory in (account.pw_dir, "/"):
            try:
                os.chdir(directory)
                break
            except OSError:
                continue
    return None


def _cmd_reload(args: argparse.Namespace) -> int:
    """Sends SIGHUP to the daemon `args.pid` (the config was validated by `main` already)."""
    try:
        with open(f"/proc/{args.pid}/cmdline", "rb") as handle:
            words = [w.decode(errors="replace") for w in handle.read().split(b"\0") if w]
    except OSError:
        print(f"db-backup: reload: no process {args.pid} (is the daemon running?)", file=sys.stderr)
        return EXIT_FAILED
    if "daemon" not in words or not any(os.path.basename(w) == "db-backup" for w in words):
        # Its command line is not shown: another program's arguments may hold a secret.
        print(
            f"db-backup: reload: process {args.pid} is not a db-backup daemon; nothing sent",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        os.kill(args.pid, signal.SIGHUP)
    except OSError as exc:
        print(
            f"db-backup: reload: cannot signal process {args.pid}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_FAILED
    return EXIT_OK


def _cancel_on_signals() -> CancelToken:
    """Returns a token that SIGTERM and SIGINT cancel, naming the signal as the reason."""
    from db_backup.util.cancel import CancelToken

    cancel = CancelToken()

    def stop(signum: int, _frame: object) -> None:
        cancel.cancel(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return cancel


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    import structlog

    from db_backup.backup.run import run_job
    from db_backup.util.cancel import CancelToken
    from db_backup.util.locks import JobBusy, JobSetupError

    log = structlog.get_logger("db_backup.cli")
    cancel = _cancel_on_signals()
    if args.all:
        jobs = list(config.jobs)
    else:
        try:
            jobs = [config.job(args.job)]
        except KeyError as exc:
            print(f"db-backup: {exc.args[0]}", file=sys.stderr)
            return EXIT_USAGE
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


def _cmd_check_config(config: Config, path: str, args: argparse.Namespace) -> int:
    from db_backup.config.preflight import RESOLVED, UNCHECKED, check_secrets

    checks = check_secrets(config)
    failed = [c for c in checks if c.outcome != RESOLVED]
    if failed:
        unchecked = sum(c.outcome == UNCHECKED for c in failed)
        broken = len(failed) - unchecked
        summary = ", ".join(
            part
            for part in (
                f"{broken} secret(s) cannot be resolved" if broken else "",
                f"{unchecked} secret(s) cannot be checked here" if unchecked else "",
            )
            if part
        )
        lines = "\n".join(f"  {c.message}" for c in failed)
        print(
            f"db-backup: {path}: valid, but not usable here: {summary}:\n{lines}", file=sys.stderr
        )
        return EXIT_CONFIG
    if not args.quiet:
        names = ", ".join(j.name for j in config.jobs)
        print(f"{path}: OK ({len(config.jobs)} job(s): {names}; {len(checks)} secret(s) resolved)")
    return EXIT_OK


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    from db_backup.observe.status import StatusError, StatusQuery, query, render_table
    from db_backup.reports.drills import latest_drills, render_drills
    from db_backup.reports.index import default_path

    status_query = StatusQuery(
        history=args.history,
        job=args.job,
        database=args.database,
        status=args.status,
        since=args.since,
        limit=args.limit,
        page=args.page,
    )
    if args.from_db:
        from db_backup.observe.jobtable import status_from_db

        return status_from_db(config, status_query, args.json)
    drills = latest_drills(config, args.job)
    try:
        page = query(
            config.directories.reports,
            status_query,
            default_path(config.directories.state),
            config.directories.state,
            drills=drills,
        )
    except StatusError as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for warning in [*page.notes, *page.warnings]:
        print(f"db-backup: warning: {warning}", file=sys.stderr)
    if args.json:
        document = {
            "page": page.page,
            "pages": page.pages,
            "total": page.total,
            "reports": page.rows,
            "drills": drills,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(render_table(page))
        if drills:
            print(render_drills(drills))
    return EXIT_OK


def _cmd_next(config: Config, args: argparse.Namespace) -> int:
    from db_backup.config.schedule import next_runs

    try:
        jobs = [config.job(args.job)] if args.job else list(config.jobs)
    except KeyError as exc:
        print(f"db-backup: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    now = utc_now()
    for job in jobs:
        zone = job.zone()
        print(f"{job.name}  {job.schedule!r}  ({zone.key})")
        for moment in next_runs(job.schedule, zone, now, args.count):
            print(f"  {moment:%Y-%m-%d %H:%M %Z (%z)}  =  {format_utc(to_the_second(moment))}")
    return EXIT_OK


def _cmd_notify_test(config: Config) -> int:
    from db_backup.observe.alerts import send_test

    results = send_test(config)
    if not results:
        print(
            f"db-backup: {config.source}: no channel under notifications.channels", file=sys.stderr
        )
        return EXIT_CONFIG
    for name, error in results:
        print(f"{name}: {'sent' if error is None else f'FAILED: {error}'}")
    failed = [name for name, error in results if error is not None]
    if failed:
        print(f"db-backup: test alert not delivered to: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cmd_lifecycle(config: Config, args: argparse.Namespace) -> int:
    from db_backup.storage import oss_settings
    from db_backup.storage.base import StorageError
    from db_backup.storage.oss import apply_lifecycle, describe_lifecycle, get_lifecycle

    if config.storage.oss is None:
        print("db-backup: oss-lifecycle needs a storage.oss section in the config", file=sys.stderr)
        return EXIT_CONFIG
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


def _cmd_restore(config: Config, args: argparse.Namespace) -> int:
    import dataclasses

    import structlog

    from db_backup.restore.run import (
        DEFAULT_CONNECTION,
        RestoreError,
        RestoreOptions,
        resolve_source,
        restore,
        server_env,
    )

    log = structlog.get_logger("db_backup.cli")
    cancel = _cancel_on_signals()
    options = RestoreOptions(
        target_database=args.to_database,
        clean=args.clean,
        globals=args.globals,
        jobs=args.jobs,
        dry_run=args.dry_run,
        skip_tablespaces=args.no_tablespaces,
        prefer_remote=args.from_oss,
        identity=SecretRef("file", args.identity) if args.identity else None,
    )
    try:
        source = resolve_source(
            config,
            args.source,
            job=args.job,
            database=args.database,
            prefer_remote=args.from_oss,
        )
        job_name = args.job or str((source.report or {}).get("job", ""))
        job = next((j for j in config.jobs if j.name == job_name), None)
        if job is None and not job_name and len(config.jobs) == 1:
            job = config.jobs[0]  # one job: its server is the one meant
        connection = job.connection if job is not None else DEFAULT_CONNECTION
        if args.host is not None or args.port is not None or args.username is not None:
            moved = args.host is not None or args.port is not None
            # The job's password belongs to the job's server: never offer it to another one.
            connection = dataclasses.replace(
                connection,
                host=args.host or connection.host,
                port=args.port or connection.port,
                user=args.username or connection.user,
                password=None if moved else connection.password,
            )
        with server_env(config, connection, job) as server:
            result = restore(config, source, server, options, cancel=cancel, say=print)
    except RestoreError as exc:
        log.error("restore failed", source=args.source, error=str(exc))
        print(f"db-backup: restore failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except SecretError as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if options.dry_run:
        print("plan (nothing was changed):")
        for number, step in enumerate(result.steps, 1):
            print(f"  {number}. {step}")
        return EXIT_OK
    log.info(
        "restore finished",
        source=result.source,
        database=result.database,
        sha256=result.sha256,
        duration_s=round(result.seconds, 3),
    )
    return EXIT_OK


def _cmd_verify(config: Config, args: argparse.Namespace) -> int:
    import structlog

    from db_backup.restore.verify import render, verify

    log = structlog.get_logger("db_backup.cli")
    results = verify(
        config,
        job=args.job,
        database=args.database,
        latest=args.latest,
        remote=args.remote or args.deep,
        deep=args.deep,
    )
    bad = [r for r in results if not r.ok]
    if args.json:
        document = {
            "ok": bool(results) and not bad,
            "checked": len(results),
            "problems": len(bad),
            "results": [r.to_json() for r in results],
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    elif results:
        print(render(results))
    if not results:
        print(
            "db-backup: no stored successful backup matches; nothing was verified", file=sys.stderr
        )
        return EXIT_FAILED
    for result in bad:
        log.error(
            "verify found a problem",
            job=result.job,
            database=result.database,
            target=result.target,
            location=result.location,
            error="; ".join(result.problems),
        )
    return EXIT_FAILED if bad else EXIT_OK


def _cmd_drill(config: Config, args: argparse.Namespace) -> int:
    from db_backup.reports.drills import render_drills
    from db_backup.restore.drill import run_drill
    from db_backup.util.locks import JobBusy, JobSetupError

    cancel = _cancel_on_signals()
    try:
        job = config.job(args.job)
    except KeyError as exc:
        print(f"db-backup: {exc.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    try:
        result = run_drill(config, job, cancel=cancel)
    except JobBusy as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except JobSetupError as exc:
        print(f"db-backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result.reports, indent=2, ensure_ascii=False))
    else:
        print(render_drills(result.reports))
        for path in result.paths:
            print(path)
    return EXIT_OK if result.ok else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
