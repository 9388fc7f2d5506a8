"""The commands that run or schedule jobs: run, next, daemon, drill."""

from __future__ import annotations

import argparse
import json

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_BUSY, EXIT_CONFIG, EXIT_FAILED, EXIT_OK, CommandError, tell
from db_backup.cli.parser import positive
from db_backup.util.clock import format_utc, to_the_second, utc_now


def run(context: Context) -> int:
    """`db-backup run JOB|--all`: runs the jobs one after another; prints each report's path."""
    import structlog

    from db_backup.backup.run import run_job
    from db_backup.config.preflight import job_secret_problems
    from db_backup.util.cancel import CancelToken
    from db_backup.util.locks import JobBusy, JobSetupError

    log = structlog.get_logger("db_backup.cli")
    code = EXIT_OK
    for job in context.jobs:
        # By hand, a secret that cannot be had is the operator's to fix now: said here, and no
        # FAILED report that would pose as the schedule's result (status, sink, alerts).
        if problems := job_secret_problems(context.config, job.name):
            log.error("job not run: a secret cannot be resolved", job=job.name, errors=problems)
            tell(f"{job.name}: not run, no report written: " + "; ".join(problems))
            code = EXIT_CONFIG
            continue
        try:
            if context.cancel is not None and context.cancel.is_cancelled():
                break
            token = CancelToken.for_job(job.timeout_seconds, parent=context.cancel)
            result = run_job(context.config, job, cancel=token)
        except JobBusy as exc:
            log.error("job already running", job=job.name, error=str(exc))
            tell(str(exc))
            code = code or EXIT_BUSY
            continue
        except JobSetupError as exc:  # e.g. the lock file cannot be created
            log.error("job could not start", job=job.name, error=str(exc))
            tell(str(exc))
            code = EXIT_FAILED
            continue
        for path in result.report_paths:
            print(path)
        if not result.ok:
            code = EXIT_FAILED
    return code


def next_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `next`."""
    parser.add_argument("-n", "--count", type=positive, default=5, help="runs per job (default 5)")


def next_runs(context: Context) -> int:
    """`db-backup next [JOB]`: prints the next run times of each job, local and UTC."""
    from db_backup.config.schedule import next_runs as upcoming

    now = utc_now()
    for job in context.jobs:
        zone = job.zone()
        print(f"{job.name}  {job.schedule!r}  ({zone.key})")
        for moment in upcoming(job.schedule, zone, now, context.args.count):
            print(f"  {moment:%Y-%m-%d %H:%M %Z (%z)}  =  {format_utc(to_the_second(moment))}")
    return EXIT_OK


def daemon(context: Context) -> int:
    """`db-backup daemon`: runs the scheduler until SIGTERM (what db-backup.service starts)."""
    from db_backup.daemon.loop import run_daemon
    from db_backup.util.locks import JobSetupError

    try:  # a config the daemon refuses is a ConfigError: exit status 78, the unit stays down
        return run_daemon(context.path)
    except JobSetupError as exc:
        raise CommandError(str(exc)) from None


def drill_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `drill`."""
    parser.add_argument("--json", action="store_true", help="print the drill reports as JSON")


def drill(context: Context) -> int:
    """`db-backup drill JOB`: restores the job's newest backups into a throwaway cluster."""
    from db_backup.reports.drills import render_drills
    from db_backup.restore.drill import run_drill
    from db_backup.util.locks import JobBusy, JobSetupError

    (job,) = context.jobs
    try:
        result = run_drill(context.config, job, cancel=context.cancel)
    except JobBusy as exc:
        raise CommandError(str(exc), EXIT_BUSY) from None
    except JobSetupError as exc:
        raise CommandError(str(exc)) from None
    if context.args.json:
        print(json.dumps(result.reports, indent=2, ensure_ascii=False))
    else:
        print(render_drills(result.reports))
        for path in result.paths:
            print(path)
    return EXIT_OK if result.ok else EXIT_FAILED
