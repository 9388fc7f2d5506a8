"""`db-backup status`: the reports directory seen from this host, or with --from-db the fleet."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CommandError, warn
from db_backup.cli.parser import positive, since

if TYPE_CHECKING:
    from db_backup.config import Config, SinkSettings
    from db_backup.observe.status import StatusPage, StatusQuery


def status_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the filters, paging and output options of `status`."""
    parser.add_argument("--history", action="store_true", help="every report, not the latest")
    parser.add_argument("--job", help="only this job")
    parser.add_argument("--database", help="only this database")
    parser.add_argument("--status", choices=["SUCCESS", "FAILED", "success", "failed"])
    parser.add_argument("--since", type=since, help="only runs started at/after (ISO 8601)")
    parser.add_argument("--limit", type=positive, default=20, help="rows per page (default 20)")
    parser.add_argument("--page", type=positive, default=1, help="page number (default 1)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--from-db",
        action="store_true",
        help="the fleet view: every host's results from the sink's database (sink: in the config)",
    )


def status(context: Context) -> int:
    """Prints one page of results (latest per job and database unless --history)."""
    from db_backup.observe.status import StatusQuery

    args = context.args
    query = StatusQuery(
        history=args.history,
        job=args.job,
        database=args.database,
        status=args.status,
        since=args.since,
        limit=args.limit,
        page=args.page,
    )
    if args.from_db:
        return _fleet(context.config, query, args.json)
    return _local(context.config, query, args.json)


def _local(config: Config, query: StatusQuery, as_json: bool) -> int:
    """Prints the page of this host's reports directory, with the newest drills."""
    from db_backup.observe.status import StatusError, render_table
    from db_backup.observe.status import query as run_query
    from db_backup.reports.drills import latest_drills, render_drills
    from db_backup.reports.index import default_path

    drills = latest_drills(config, query.job)
    try:
        page = run_query(
            config.directories.reports,
            query,
            default_path(config.directories.state),
            config.directories.state,
            drills=drills,
        )
    except StatusError as exc:
        raise CommandError(str(exc)) from None
    for warning in [*page.notes, *page.warnings]:
        warn(warning)
    if as_json:
        print(json.dumps(_document(page, drills), indent=2, ensure_ascii=False))
    else:
        print(render_table(page))
        if drills:
            print(render_drills(drills))
    return EXIT_OK


def _fleet(config: Config, query: StatusQuery, as_json: bool) -> int:
    """Prints the page of every host's results from the sink's database."""
    from db_backup.observe.jobtable.fleet import read_fleet, render_fleet_drills
    from db_backup.observe.jobtable.settings import SinkError
    from db_backup.observe.status import render_table

    settings = sink_settings_for("status --from-db", config)
    try:
        fleet = read_fleet(settings, query)
    except SinkError as exc:
        raise CommandError(str(exc)) from None
    if as_json:
        document = {"source": fleet.source, **_document(fleet.page, fleet.drills)}
        print(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_table(fleet.page, hosts=True, empty="no matching reports in the database"))
        if fleet.drills:
            print(render_fleet_drills(fleet.drills))
    return EXIT_OK


def _document(page: StatusPage, drills: list[dict[str, Any]]) -> dict[str, Any]:
    """Returns the `--json` document of a page: paging, the reports and the newest drills."""
    return {
        "page": page.page,
        "pages": page.pages,
        "total": page.total,
        "reports": page.rows,
        "drills": drills,
    }


def sink_settings_for(command: str, config: Config) -> SinkSettings:
    """Returns the sink's settings; CommandError saying that `command` needs them when absent."""

    settings = config.sink
    if settings is None:
        # 78 like a missing `oss:` section or channel: the config lacks what the command needs
        raise CommandError(
            f"{command} needs a `sink:` section with `dsn:` in the config", EXIT_CONFIG
        )
    return settings


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `report`."""
    parser.add_argument(
        "--html", metavar="FILE", required=True, help="write a self-contained HTML page here"
    )
    parser.add_argument("--job", help="only this job's backups")


def report(context: Context) -> int:
    """Writes the HTML page of the backups' history (sizes, durations, results, drills)."""
    from pathlib import Path

    from db_backup.observe.html_report import HtmlReportError, write_html_report

    args, config = context.args, context.config
    if args.job is not None and args.job not in {job.name for job in config.jobs}:
        raise CommandError(f"report: no job named {args.job!r} in {config.source}", EXIT_USAGE)
    try:
        drawn = write_html_report(config, Path(args.html), args.job)
    except HtmlReportError as exc:
        raise CommandError(str(exc)) from None
    print(f"{args.html}: {drawn} backup reports drawn")
    return EXIT_OK
