"""Runs one backup job: lock, discover, dump each database to every target, report, prune.

`run_job` is the one code path behind `db-backup run`, the daemon and the timer units, so reports,
locks and retention are identical however a run was started.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from db_backup import pg
from db_backup.config import Config, JobConfig
from db_backup.execute import Cancelled, CancelToken, CommandError
from db_backup.report import FAILED, SUCCESS, Report, load_reports, utc_now, write_report
from db_backup.report import stem as make_stem
from db_backup.retention import Backup, backup_of, choose_expired
from db_backup.secrets import SecretError, mask
from db_backup.storage import make_targets
from db_backup.storage.base import StorageError, StoredObject, Target
from db_backup.storage.local import LocalTarget, describe_os_error

log = structlog.get_logger("db_backup.job")

CHUNK_SIZE = 1024 * 1024
ProgressCallback = Callable[[str, str, int], None]  # job, database, bytes so far


class JobBusy(Exception):
    """Another run of the same job holds its lock."""


class JobSetupError(Exception):
    """A run could not start (directories, secrets, server unreachable); the message says why."""


@dataclass
class RunResult:
    """What one run produced: a report per database and whether they all succeeded."""

    job: str
    reports: list[dict[str, Any]] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Returns True when every database's report says SUCCESS."""
        return (
            not self.error
            and bool(self.reports)
            and all(r["status"] == SUCCESS for r in self.reports)
        )


def lock_path(config: Config, job_name: str) -> Path:
    """Returns the lock file of `job_name`."""
    return config.directories.state / "locks" / f"{job_name}.lock"


@contextlib.contextmanager
def job_lock(config: Config, job_name: str) -> Iterator[None]:
    """Holds the job's flock for the duration; raises JobBusy if another run holds it."""
    path = lock_path(config, job_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise JobSetupError(f"cannot open lock file {describe_os_error(exc, path)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise JobBusy(
                f"job {job_name!r} is already running (pid {holder}, lock {path}); "
                "this run was not started"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


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
    with job_lock(config, job.name):
        _run_locked(config, job, cancel, progress, trigger, attempt, result)
    statuses = [r["status"] for r in result.reports]
    log.info(
        "run finished",
        job=job.name,
        status=SUCCESS if result.ok else FAILED,
        databases=len(result.reports),
        failed=statuses.count(FAILED),
        duration_s=round(time.monotonic() - started, 3),
        error=result.error or None,
    )
    return result


def _run_locked(
    config: Config,
    job: JobConfig,
    cancel: CancelToken,
    progress: ProgressCallback | None,
    trigger: str,
    attempt: int,
    result: RunResult,
) -> None:
    host = pg.host_label()
    staging = config.directories.state / "staging" / job.name
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run of this job
    local = LocalTarget(config.directories.data, job.name)
    for path in local.remove_stale_temporaries():
        log.warning("removed temporary file of an interrupted run", job=job.name, file=path)
    planned = list(job.databases) if isinstance(job.databases, tuple) else []
    try:
        check_directories(config, job)
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        with pg.connection_env(job) as env:
            targets = make_targets(config, job)
            databases = pg.discover_databases(job, env) if job.discovers_databases else planned
            versions = pg.versions(job, env, databases[0] if databases else "postgres")
            _run_databases(
                config,
                job,
                env,
                targets,
                databases,
                versions,
                staging,
                host,
                cancel,
                progress,
                trigger,
                attempt,
                result,
            )
    except (JobSetupError, SecretError, CommandError, StorageError, Cancelled) as exc:
        message = _setup_message(exc)
        result.error = message
        log.error("run could not start", job=job.name, error=message)
        for database in planned or ["*"]:
            report = _new_report(config, job, database, utc_now(), host, trigger, attempt)
            report.error_message = message
            _finish(config, job, report, [], result)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _setup_message(exc: Exception) -> str:
    if isinstance(exc, Cancelled):
        return f"stopped before the dump started: {exc}"
    return mask(str(exc))


def _new_report(
    config: Config,
    job: JobConfig,
    database: str,
    started: Any,
    host: str,
    trigger: str,
    attempt: int,
) -> Report:
    tool = "local" if job.mode == "local" else config.storage.tool
    return Report(
        job=job.name,
        database=database,
        host=job.connection.host,
        port=job.connection.port,
        mode=job.mode,
        tool=tool,
        stem=make_stem(database if database != "*" else "all", started, host),
        started=started,
        dump_format=job.dump.format,
        compression=job.dump.compression,
        trigger=trigger,
        attempt=attempt,
    )


def _run_databases(
    config: Config,
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    databases: list[str],
    versions: tuple[str, str],
    staging: Path,
    host: str,
    cancel: CancelToken,
    progress: ProgressCallback | None,
    trigger: str,
    attempt: int,
    result: RunResult,
) -> None:
    globals_name = ""
    globals_error = ""
    for index, database in enumerate(databases):
        started = utc_now()
        report = _new_report(config, job, database, started, host, trigger, attempt)
        report.pg_dump_version, report.server_version = versions
        stored: dict[str, list[str]] = {t.name: [] for t in targets}
        try:
            cancel.raise_if_cancelled()
            if job.globals and index == 0:
                globals_name = f"{report.stem}_globals.sql"
                try:
                    globals_path = staging / globals_name
                    pg.dump_globals(job, env, globals_path)
                except CommandError as exc:
                    globals_error = f"globals (pg_dumpall --globals-only) failed: {exc}"
                    globals_name = ""
                else:
                    for target in targets:
                        obj = target.put_file(globals_path, globals_name)
                        stored[target.name].append(globals_name)
                        if target.name == "local":
                            report.globals_file = obj.location
            if globals_error:
                raise JobSetupError(globals_error)
            if globals_name and index > 0 and any(t.name == "local" for t in targets):
                report.globals_file = str(config.directories.data / globals_name)
            if globals_name:
                report.artefacts.append(globals_name)
            _dump_one(
                config, job, env, targets, database, report, stored, staging, cancel, progress
            )
        except Cancelled as exc:
            report.error_message = f"stopped during the dump: {exc}"
            _remove_partial(targets, stored, report)
        except (CommandError, StorageError, JobSetupError) as exc:
            report.error_message = mask(str(exc))
            _remove_partial(targets, stored, report)
        except OSError as exc:
            report.error_message = describe_os_error(exc, exc.filename or staging)
            _remove_partial(targets, stored, report)
        _finish(config, job, report, targets, result)
        if cancel.is_cancelled():
            for remaining in databases[index + 1 :]:
                skipped = _new_report(config, job, remaining, utc_now(), host, trigger, attempt)
                skipped.error_message = f"stopped before the dump started: {cancel.reason}"
                _finish(config, job, skipped, targets, result)
            return


def _dump_one(
    config: Config,
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    report: Report,
    stored: dict[str, list[str]],
    staging: Path,
    cancel: CancelToken,
    progress: ProgressCallback | None,
) -> None:
    """Streams one pg_dump to every target; fills the report; raises on total failure."""
    dump_name = f"{report.stem}{pg.extension(job.dump.format)}"
    if job.dump.format == "directory":
        sha256, size, committed, checksum_text = pg.dump_directory(
            job, env, database, config.directories.data, dump_name, cancel
        )
        results: dict[str, StoredObject | str] = {"local": committed}
    else:
        sha256, size, results = _stream_dump(
            job, env, targets, database, dump_name, cancel, progress
        )
        checksum_text = f"{sha256}  {dump_name}\n"
    report.sha256 = sha256
    report.size_bytes = size
    report.artefacts.insert(0, dump_name)
    checksum_name = f"{dump_name}.sha256"
    checksum_path = staging / checksum_name
    checksum_path.write_text(checksum_text, encoding="utf-8")
    report.artefacts.append(checksum_name)
    for target in targets:
        outcome = results.get(target.name)
        if not isinstance(outcome, StoredObject):
            report.targets[target.name] = {"status": FAILED, "error": mask(str(outcome))}
            continue
        stored[target.name].append(dump_name)
        try:
            checksum_obj = target.put_file(checksum_path, checksum_name)
        except StorageError as exc:
            target.delete(stored[target.name])
            stored[target.name].clear()
            report.targets[target.name] = {"status": FAILED, "error": mask(str(exc))}
            continue
        stored[target.name].append(checksum_name)
        report.targets[target.name] = {
            "status": SUCCESS,
            "location": outcome.location,
            "sizeBytes": outcome.size_bytes,
            **outcome.extra,
        }
        if target.name == "local":
            report.local_file = outcome.location
            report.checksum_file = checksum_obj.location
        else:
            report.remote_urls.append(outcome.location)
    failed = {n: r for n, r in report.targets.items() if r["status"] == FAILED}
    if failed:
        report.error_message = "; ".join(f"{name}: {r['error']}" for name, r in failed.items())
    else:
        report.status = SUCCESS


def _stream_dump(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    progress: ProgressCallback | None,
) -> tuple[str, int, dict[str, StoredObject | str]]:
    """Feeds pg_dump's stdout to sha256 and every target's sink in one pass."""
    outcomes: dict[str, StoredObject | str] = {}
    sinks = {}
    try:
        for target in targets:
            try:
                sinks[target.name] = target.open_stream(dump_name)
            except StorageError as exc:
                outcomes[target.name] = str(exc)
        if not sinks:
            raise StorageError("; ".join(str(v) for v in outcomes.values()))
        child = pg.start_dump(job, env, database)
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in child.chunks(CHUNK_SIZE, cancel):
                digest.update(chunk)
                size += len(chunk)
                for name, sink in list(sinks.items()):
                    try:
                        sink.write(chunk)
                    except StorageError as exc:
                        sink.abort()
                        del sinks[name]
                        outcomes[name] = str(exc)
                        log.error(
                            "target failed during the dump",
                            job=job.name,
                            database=database,
                            target=name,
                            error=str(exc),
                        )
                if not sinks:
                    child.terminate()
                    raise StorageError("; ".join(f"{n}: {e}" for n, e in outcomes.items()))
                if progress is not None:
                    progress(job.name, database, size)
            child.check()
        except BaseException:
            child.terminate()
            raise
        sha256 = digest.hexdigest()
        for name, sink in list(sinks.items()):
            try:
                outcomes[name] = sink.commit(sha256)
            except StorageError as exc:
                outcomes[name] = str(exc)
            del sinks[name]
        return sha256, size, outcomes
    finally:
        for sink in sinks.values():
            sink.abort()


def _remove_partial(targets: list[Target], stored: dict[str, list[str]], report: Report) -> None:
    """Deletes what a failed database's run had already stored, so nothing looks like a backup."""
    report.status = FAILED
    for target in targets:
        names = stored.get(target.name, [])
        if names:
            try:
                target.delete(names)
            except StorageError as exc:
                log.error("could not remove partial files", target=target.name, error=str(exc))
            names.clear()
    report.local_file = report.checksum_file = report.globals_file = ""
    report.remote_urls.clear()
    report.artefacts.clear()


def _finish(
    config: Config, job: JobConfig, report: Report, targets: list[Target], result: RunResult
) -> None:
    """Applies retention after a success, writes the report everywhere, logs the canonical line."""
    if report.status == SUCCESS:
        report.retention_deleted = apply_retention(config, job, report, targets)
    report.finished = utc_now()
    document = report.to_json()
    try:
        path = write_report(config.directories.reports, report)
    except OSError as exc:
        message = f"cannot write the report: {describe_os_error(exc, config.directories.reports)}"
        log.error("report not written", job=job.name, database=report.database, error=message)
        if report.status == SUCCESS:
            # A dump without a report must not look like a good backup: take it away again.
            for target in targets:
                with contextlib.suppress(StorageError):
                    target.delete(report.artefacts)
        document["status"] = FAILED
        document["errorMessage"] = message
        result.reports.append(document)
        result.error = message
        return
    for target in targets:
        if target.name == "local":
            continue
        try:
            target.put_file(path, path.name)
        except StorageError as exc:
            log.warning("report not copied to the remote", target=target.name, error=str(exc))
    result.reports.append(document)
    result.report_paths.append(path)
    level = log.info if report.status == SUCCESS else log.error
    level(
        "backup finished",
        job=job.name,
        database=report.database,
        status=report.status,
        bytes=report.size_bytes,
        duration_s=document["durationSeconds"],
        report=str(path),
        file=report.local_file or None,
        urls=report.remote_urls or None,
        sha256=report.sha256 or None,
        deleted=len(report.retention_deleted),
        error=document["errorMessage"] or None,
    )


def apply_retention(
    config: Config, job: JobConfig, current: Report, targets: list[Target]
) -> list[str]:
    """Deletes this job's expired backups of `current.database`; returns what was removed."""
    reports, _ = load_reports(config.directories.reports)
    own = [r for r in reports if r.job == job.name and r.document["database"] == current.database]
    backups = [backup_of(r) for r in own]
    backups.append(_current_backup(current))
    expired, still_named = choose_expired(
        backups, days=job.retention.days, keep_last=job.retention.keep_last, now=utc_now()
    )
    removed: list[str] = []
    for backup in expired:
        names = [n for n in backup.files if n not in still_named]
        for target in targets:
            try:
                removed.extend(target.delete([n for n in names if n != backup.key]))
            except StorageError as exc:
                log.error(
                    "retention could not delete", job=job.name, target=target.name, error=str(exc)
                )
                names = []  # keep the report while its files may still exist
        report_file = config.directories.reports / backup.key
        if names and backup.key in names:
            for target in targets:
                if target.name != "local":
                    with contextlib.suppress(StorageError):
                        removed.extend(target.delete([backup.key]))
            report_file.unlink(missing_ok=True)
            removed.append(str(report_file))
    if removed:
        log.info(
            "retention removed old backups",
            job=job.name,
            database=current.database,
            removed=removed,
        )
    return removed


def _current_backup(report: Report) -> Backup:
    return Backup(
        key=f"{report.stem}.json",
        database=report.database,
        started=report.started,
        successful=True,
        files=(*report.artefacts, f"{report.stem}.json"),
    )
