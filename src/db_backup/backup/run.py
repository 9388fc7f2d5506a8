"""Runs one backup job: lock, discover, dump each database to every target, report, prune.

`run_job` is the one code path behind `db-backup run`, the daemon and the timer units, so reports,
locks and retention are identical however a run was started. This module is the run's outline;
the steps live beside it: `database` (one database's dump: `stream`, `dirdump`), `finish` (its
report, then `prune`), `space`/`slots` (room and a slot before a dump), `leftovers` (what killed
runs left), `history` (the job's reports, read once per run), `usage` (alerts after the run).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from db_backup.backup import database as one_database
from db_backup.backup import rowcounts, usage
from db_backup.backup.claims import Claim, claim_stem, unclaimed
from db_backup.backup.context import (
    DUMP_DONE,
    EXPECTED_ERRORS,
    ProgressCallback,
    RunContext,
    RunResult,
    describe_error,
)
from db_backup.backup.finish import finish, remove_partial
from db_backup.backup.history import JobHistory
from db_backup.backup.leftovers import remove_leftovers, watch_uploads
from db_backup.backup.slots import dump_slot
from db_backup.backup.space import room_for_dump
from db_backup.config import Config, DumpSelection, JobConfig
from db_backup.observe import hooks
from db_backup.postgres import tools as pg
from db_backup.reports.model import FAILED, SUCCESS, Report
from db_backup.storage import crypto, make_targets
from db_backup.storage.local import LocalTarget
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.fsutil import describe_os_error
from db_backup.util.locks import JobSetupError, job_lock

__all__ = ["DUMP_DONE", "RunResult", "check_directories", "describe_error", "run_job"]

log = structlog.get_logger("db_backup.backup.run")


def check_directories(config: Config, job: JobConfig) -> None:
    """Raises JobSetupError unless every directory this job writes exists and is writable."""
    needed = [config.directories.reports, config.directories.state]
    if job.mode in {"local", "both"}:
        needed.append(config.directories.data)
    for directory in needed:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise JobSetupError(
                f"directory not writable: {describe_os_error(exc, directory)}"
            ) from None


def run_job(
    config: Config,
    job: JobConfig,
    *,
    cancel: CancelToken | None = None,
    progress: ProgressCallback | None = None,
    trigger: str = "manual",
    attempt: int = 1,
) -> RunResult:
    """Runs `job` once under its lock and returns its reports; raises JobBusy if it is running."""
    cancel = cancel or CancelToken()
    result = RunResult(job.name)
    started = time.monotonic()
    with job_lock(config.directories.state, job.name):
        ctx = RunContext(config, job, cancel, progress, trigger, attempt, result)
        _execute(ctx)
        usage.after_run(config, job)  # free space and OSS usage alerts; never raises
    statuses = [r["status"] for r in result.reports]
    (log.info if result.ok else log.error)(
        "run finished",
        job=job.name,
        status=SUCCESS if result.ok else FAILED,
        databases=len(result.reports),
        failed=statuses.count(FAILED),
        duration_s=round(time.monotonic() - started, 3),
        error=result.error or None,
    )
    return result


def _execute(ctx: RunContext) -> None:
    """Runs every database of the job; a failure to start gives a FAILED report each."""
    job = ctx.job
    planned = list(job.databases) if isinstance(job.databases, tuple) else []
    try:
        _prepare(ctx)
        with pg.connection_env(job, ctx.private) as env:
            ctx.env = env
            ctx.targets = make_targets(ctx.config, job)
            remove_leftovers(ctx.config, job.name, ctx.targets)
            watch_uploads(ctx.targets, ctx.claims)
            databases = pg.discover_databases(job, env) if job.discovers_databases else planned
            if not databases:
                raise JobSetupError(
                    "nothing to back up: every database of the server is excluded "
                    f"(exclude_databases: {', '.join(job.exclude_databases) or 'none'})"
                )
            refusal = hooks.before_backup(ctx.config, job.name, databases, ctx.trigger)
            if refusal is not None:  # nothing is dumped; each database's report names the hook
                planned = databases
                raise JobSetupError(refusal)
            ctx.versions = pg.versions(job, env, databases)
            # The one read of the job's reports: every decision of the run asks it from here on.
            ctx.history = JobHistory.read(ctx.config, job.name, databases)
            if job.globals:
                one_database.dump_globals(ctx)
            _run_databases(ctx, databases)
    except Exception as exc:
        message = describe_error(exc, ctx.config.directories.state)
        if not isinstance(exc, EXPECTED_ERRORS):
            log.error("run crashed", job=job.name, error=message)
        ctx.result.error = message
        ctx.targets = []
        log.error("run could not start", job=job.name, error=message)
        for database in planned or ["*"]:
            if database not in ctx.reported:
                _fail_database(ctx, database, message)
    finally:
        shutil.rmtree(ctx.staging, ignore_errors=True)


def _prepare(ctx: RunContext) -> None:
    """Checks the directories, clears what a killed run left locally, checks the age keys."""
    job = ctx.job
    check_directories(ctx.config, job)
    local = LocalTarget(ctx.config.directories.data, job.name)
    for path in local.remove_stale_temporaries():
        log.warning("removed temporary file of an interrupted run", job=job.name, file=path)
    shutil.rmtree(ctx.staging, ignore_errors=True)  # left by a killed run of this job
    ctx.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    if job.encryption is not None:
        # Before anything is dumped: a refused key must not leave a run half done.
        ctx.recipients = crypto.recipients_of(job.encryption)
        crypto.check_recipients(ctx.recipients)


def _run_databases(ctx: RunContext, databases: list[str]) -> None:
    """Dumps the databases, `parallel_databases` at a time; one failing never stops the rest.

    Each dump also holds one of the host's `daemon.max_dumps` slots. After a stop request,
    the databases not started yet get FAILED reports.
    """
    workers = min(ctx.job.parallel_databases, len(databases))
    if workers <= 1:
        for database in databases:
            _run_when_allowed(ctx, database)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=f"dump-{ctx.job.name}") as pool:
        for future in [pool.submit(_run_when_allowed, ctx, d) for d in databases]:
            future.result()


def _run_when_allowed(ctx: RunContext, database: str) -> None:
    """Runs one database unless the run was stopped (then it gets a FAILED report)."""
    if ctx.cancel.is_cancelled():
        _fail_database(ctx, database, f"stopped before the dump started: {ctx.cancel.reason}")
        return
    _run_database(ctx, database)


def _claim(ctx: RunContext, database: str) -> Claim:
    """Reserves the report name (stem) of `database` for this run."""
    directories = ctx.config.directories
    args = (ctx.job.name, database, ctx.machine_label)
    try:
        return ctx.claims.add(claim_stem(directories.state, directories.reports, *args))
    except OSError as exc:
        log.error(
            "cannot reserve the report name; going on without a claim",
            job=ctx.job.name,
            error=describe_os_error(exc, exc.filename or directories.state),
        )
        return unclaimed(directories.reports, *args)


def _new_report(ctx: RunContext, database: str, claim: Claim) -> Report:
    """Returns a FAILED report for `database` under its claimed stem, for the steps to fill."""
    job = ctx.job
    return Report(
        job=job.name,
        database=database,
        host=job.connection.host,
        port=job.connection.port,
        mode=job.mode,
        tool="local" if job.mode == "local" else ctx.config.storage.tool,
        stem=claim.stem,
        started=claim.started,
        dump_format=job.dump.format,
        compression=job.dump.compression,
        trigger=ctx.trigger,
        attempt=ctx.attempt,
        pg_dump_version=ctx.versions[0],
        server_version=ctx.versions[1],
        encryption=crypto.encryption_summary(ctx.recipients) if ctx.recipients else None,
        dump_options=dump_options_json(job.dump_selection(database)),
    )


def dump_options_json(selection: DumpSelection) -> dict[str, Any] | None:
    """Returns the report's `dumpOptions` of a dump selection, None for the whole database."""
    if selection.is_whole:
        return None
    timeout = selection.lock_wait_timeout
    return {
        "excludeTableData": list(selection.exclude_table_data),
        "schemas": list(selection.schemas),
        "excludeSchemas": list(selection.exclude_schemas),
        "tables": list(selection.tables),
        "excludeTables": list(selection.exclude_tables),
        "noOwner": selection.no_owner,
        "noPrivileges": selection.no_privileges,
        "noComments": selection.no_comments,
        "lockWaitTimeoutSeconds": round(timeout.total_seconds()) if timeout else None,
    }


def _fail_database(ctx: RunContext, database: str, message: str) -> None:
    """Writes a FAILED report for a database that was never dumped."""
    claim = _claim(ctx, database)
    try:
        report = _new_report(ctx, database, claim)
        report.error_message = message
        finish(ctx, report)
    finally:
        claim.release()


def _run_database(ctx: RunContext, database: str) -> None:
    """Dumps one database (globals first on the run's first) and writes its report."""
    claim = _claim(ctx, database)
    try:
        report = _new_report(ctx, database, claim)
        report.stored = {t.name: [] for t in ctx.targets}
        try:
            ctx.cancel.raise_if_cancelled()
            if ctx.globals_error:
                raise JobSetupError(ctx.globals_error)
            with (
                dump_slot(ctx.config, ctx.job.name, ctx.cancel),
                room_for_dump(ctx.config, ctx.job, ctx.env, report, ctx.staging, ctx.history),
                rowcounts.snapshot_for_dump(ctx.job, ctx.env, database) as snap,
            ):
                one_database.dump(ctx, database, report, claim, snap)
        except Cancelled as exc:
            report.error_message = f"stopped during the dump: {exc}"
            remove_partial(ctx.targets, report)
        except Exception as exc:
            report.error_message = pg.explain_dump_error(
                describe_error(exc, ctx.staging), ctx.job.dump_selection(database)
            )
            if not isinstance(exc, EXPECTED_ERRORS):
                log.error("dump crashed", job=ctx.job.name, error=report.error_message)
            remove_partial(ctx.targets, report)
        finish(ctx, report)
    finally:
        claim.release()
        if ctx.progress is not None:
            ctx.progress(ctx.job.name, database, DUMP_DONE)
