"""The commands that read backups back: restore and verify."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandError
from db_backup.cli.parser import positive
from db_backup.config import SecretRef
from db_backup.util.secrets import SecretError

if TYPE_CHECKING:
    from db_backup.config import Config, Connection, JobConfig
    from db_backup.restore.source import BackupSource


def restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the source, target and options of `restore`."""
    parser.add_argument("source", nargs="?", help="report file, report id, dump path, oss:// URL")
    parser.add_argument("--job", help="job of the backup (and whose connection to restore to)")
    parser.add_argument("--database", help="database of the backup (with --job, no SOURCE)")
    parser.add_argument("--to-database", help="restore under this name (default: the original)")
    parser.add_argument(
        "--clean", action="store_true", help="restore over an existing database (drop its objects)"
    )
    parser.add_argument(
        "--globals", action="store_true", help="restore roles and tablespaces first"
    )
    parser.add_argument(
        "--reset-roles",
        action="store_true",
        help="with --globals: also give existing roles the backup's attributes, passwords and "
        "memberships (default: only missing roles are created)",
    )
    parser.add_argument(
        "--no-tablespaces", action="store_true", help="leave tablespaces out (all objects default)"
    )
    parser.add_argument(
        "-j", "--jobs", type=positive, default=2, help="pg_restore parallel jobs (default 2)"
    )
    parser.add_argument(
        "--from-oss",
        action="store_true",
        help="use the remote copy (OSS or rclone), not the local one",
    )
    parser.add_argument(
        "--identity",
        metavar="FILE",
        help="age identity (private key) file for an encrypted backup "
        "(default: the job's encryption.age.identity)",
    )
    parser.add_argument(
        "--owner",
        metavar="ROLE",
        help="the database and its objects belong to ROLE instead of the recorded owner",
    )
    parser.add_argument(
        "--locale",
        metavar="LOCALE",
        help="create the database with LOCALE instead of the recorded collation and ctype",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="SCHEMA.TABLE",
        help="restore only this table, with its indexes, constraints and grants (repeatable)",
    )
    parser.add_argument(
        "--schema", action="append", default=[], help="restore only this schema (repeatable)"
    )
    parser.add_argument(
        "--data-only", action="store_true", help="restore only rows, into tables that exist"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the archive's table of contents (what --table/--schema would take); "
        "change nothing",
    )
    parser.add_argument(
        "--before",
        metavar="TIME",
        help="the newest successful backup of --job/--database that started before TIME "
        "('2026-11-30 14:05', in the job's time zone unless an offset or zone is given)",
    )
    parser.add_argument("--host", help="target server (default: the job's connection)")
    parser.add_argument("--port", type=positive, help="target port")
    parser.add_argument("--username", help="target role (a superuser for --globals)")


def restore(context: Context) -> int:
    """Restores one backup (checksums first), or with --dry-run prints the plan."""
    import structlog

    from db_backup.postgres.server import server_env
    from db_backup.restore.run import restore as run_restore
    from db_backup.restore.select import parse_schema, parse_table
    from db_backup.restore.source import RestoreError, resolve_source
    from db_backup.restore.steps import RestoreOptions

    log = structlog.get_logger("db_backup.cli")
    args, config = context.args, context.config
    try:
        tables = tuple(dict.fromkeys(parse_table(t) for t in args.table))
        schemas = tuple(dict.fromkeys(parse_schema(s) for s in args.schema))
    except RestoreError as exc:
        raise CommandError(f"restore: {exc}", EXIT_USAGE) from None
    options = RestoreOptions(
        tables=tables,
        schemas=schemas,
        data_only=args.data_only,
        list_only=args.list,
        target_database=args.to_database,
        clean=args.clean,
        globals=args.globals,
        jobs=args.jobs,
        dry_run=args.dry_run,
        skip_tablespaces=args.no_tablespaces,
        prefer_remote=args.from_oss,
        identity=SecretRef("file", args.identity) if args.identity else None,
        owner=args.owner,
        locale=args.locale,
        reset_roles=args.reset_roles,
    )
    if args.reset_roles and not args.globals:
        raise CommandError("--reset-roles resets the roles of --globals; give both", EXIT_USAGE)
    try:
        before = _before(config, args)
        source = resolve_source(
            config,
            args.source,
            job=args.job,
            database=args.database,
            prefer_remote=args.from_oss,
            before=before,
        )
        job = _job_of(config, args.job or str((source.report or {}).get("job", "")))
        if before is not None:
            print(_picked(source, job))
        connection = _target(args, job)
        with server_env(config, connection, job) as server:
            result = run_restore(config, source, server, options, cancel=context.cancel, say=print)
    except RestoreError as exc:
        log.error("restore failed", source=args.source, error=str(exc))
        raise CommandError(f"restore failed: {exc}") from None
    except SecretError as exc:
        raise CommandError(str(exc)) from None
    if options.dry_run or options.list_only:
        if options.list_only and not options.dry_run:
            return EXIT_OK  # the entries were printed as the step ran
        print("plan (nothing was changed):")
        for number, step in enumerate(result.steps, 1):
            print(f"  {number}. {step}")
        if result.refusal:  # the real run would stop there: say so, and fail like it would
            raise CommandError(
                f"restore would be refused at step {result.refused_step}: {result.refusal}"
            )
        return EXIT_OK
    log.info(
        "restore finished",
        source=result.source,
        database=result.database,
        sha256=result.sha256,
        duration_s=round(result.seconds, 3),
    )
    return EXIT_OK


def _before(config: Config, args: argparse.Namespace) -> datetime | None:
    """Returns the UTC moment of --before (in the job's zone unless it names one), or None."""
    from db_backup.restore.select import parse_before
    from db_backup.restore.source import RestoreError

    if args.before is None:
        return None
    job = next((j for j in config.jobs if j.name == args.job), None)
    if job is None or args.database is None or args.source is not None:
        raise RestoreError(
            "--before picks a backup of one job and database: give --job JOB --database DB "
            "and no SOURCE"
        )
    return parse_before(args.before, job.zone())


def _picked(source: BackupSource, job: JobConfig | None) -> str:
    """Returns the line naming the backup --before picked, its start in the job's zone."""
    from pathlib import Path

    from db_backup.restore.select import Candidate, describe_pick
    from db_backup.util.clock import parse_utc

    document = source.report or {}
    candidate = Candidate(
        Path(source.report_file), parse_utc(str(document["startedAt"])), dict(document)
    )
    zone = job.zone() if job is not None else ZoneInfo("UTC")
    return describe_pick(candidate, zone)


def _job_of(config: Config, name: str) -> JobConfig | None:
    """Returns the job called `name`, the only job when none is named, or None."""
    job = next((j for j in config.jobs if j.name == name), None)
    if job is None and not name and len(config.jobs) == 1:
        job = config.jobs[0]  # one job: its server is the one meant
    return job


def _target(args: argparse.Namespace, job: JobConfig | None) -> Connection:
    """Returns the server to restore to: the job's, with --host/--port/--username applied."""
    from db_backup.postgres.server import DEFAULT_CONNECTION

    connection = job.connection if job is not None else DEFAULT_CONNECTION
    if args.host is None and args.port is None and args.username is None:
        return connection
    moved = args.host is not None or args.port is not None
    # The job's password belongs to the job's server: never offer it to another one.
    return dataclasses.replace(
        connection,
        host=args.host or connection.host,
        port=args.port or connection.port,
        user=args.username or connection.user,
        password=None if moved else connection.password,
    )


NOT_CHECKED = "not checked: "  # restore.verify's problem for a copy it could not reach


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the filters and options of `verify`."""
    parser.add_argument("--job", help="only this job")
    parser.add_argument("--database", help="only this database")
    parser.add_argument("--latest", action="store_true", help="only the newest per job/database")
    parser.add_argument(
        "--remote",
        action="store_true",
        help="also check the remote copies (OSS, rclone) by size and checksum, no download",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        help="download the remote copies and hash them (implies --remote)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def verify(context: Context) -> int:
    """Checks every stored copy of the matching backups; fails when one is wrong or none match."""
    import structlog

    from db_backup.restore.verify import remote_only, render
    from db_backup.restore.verify import verify as run_verify

    log = structlog.get_logger("db_backup.cli")
    args = context.args
    results = run_verify(
        context.config,
        job=args.job,
        database=args.database,
        latest=args.latest,
        remote=args.remote or args.deep,
        deep=args.deep,
    )
    bad = [r for r in results if not r.ok]
    skipped = 0
    if not (args.remote or args.deep):
        skipped = remote_only(
            context.config, job=args.job, database=args.database, latest=args.latest
        )
    hint = (
        f"{skipped} backup{'s' if skipped != 1 else ''} stored only on OSS "
        f"{'were' if skipped != 1 else 'was'} skipped; check {'them' if skipped != 1 else 'it'} "
        "with --remote"
        if skipped
        else ""
    )
    if args.json:
        document: dict[str, Any] = {
            "ok": bool(results) and not bad,
            "checked": len(results),
            "problems": len(bad),
            "results": [r.to_json() for r in results],
            "skippedRemoteOnly": skipped,
        }
        print(json.dumps(document, indent=2, ensure_ascii=False))
    elif results:
        print(render(results))
        if hint:
            print(hint)
    if not results:
        raise CommandError(
            "no stored successful backup matches; nothing was verified"
            + (f" ({hint})" if hint else "")
        )
    unchecked = [p for r in bad for p in r.problems if p.startswith(NOT_CHECKED)]
    for result in bad:
        log.error(
            "verify found a problem",
            job=result.job,
            database=result.database,
            target=result.target,
            location=result.location,
            error="; ".join(result.problems),
        )
    if unchecked:  # a remote not reachable from this config (a secret, no section): the config's
        holders = sorted({r.target for r in bad if any(p in unchecked for p in r.problems)})
        kinds = "/".join("OSS" if h == "oss" else h for h in holders)
        raise CommandError(
            f"{len(unchecked)} {kinds} copy(ies) not checked: {unchecked[0][len(NOT_CHECKED) :]}",
            EXIT_CONFIG,
        )
    return EXIT_FAILED if bad else EXIT_OK
