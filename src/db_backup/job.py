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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from db_backup import pg, report_index
from db_backup.config import Config, JobConfig
from db_backup.execute import Cancelled, CancelToken, CommandError
from db_backup.report import FAILED, SUCCESS, Report, utc_now, write_report
from db_backup.report import stem as make_stem
from db_backup.retention import Backup, choose_expired
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
        _Run(config, job, cancel, progress, trigger, attempt, result).execute()
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


@dataclass
class _Run:
    """One run of one job: what every step of it needs, in one place."""

    config: Config
    job: JobConfig
    cancel: CancelToken
    progress: ProgressCallback | None
    trigger: str
    attempt: int
    result: RunResult
    host: str = field(default_factory=pg.host_label)
    env: dict[str, str] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    versions: tuple[str, str] = ("", "")
    globals_name: str = ""
    globals_error: str = ""

    @property
    def staging(self) -> Path:
        """Returns the private directory for small files (globals, .sha256) before upload."""
        return self.config.directories.state / "staging" / self.job.name

    def new_report(self, database: str, started: datetime) -> Report:
        """Returns a FAILED report for `database` that the steps fill in."""
        job = self.job
        return Report(
            job=job.name,
            database=database,
            host=job.connection.host,
            port=job.connection.port,
            mode=job.mode,
            tool="local" if job.mode == "local" else self.config.storage.tool,
            stem=make_stem(database if database != "*" else "all", started, self.host),
            started=started,
            dump_format=job.dump.format,
            compression=job.dump.compression,
            trigger=self.trigger,
            attempt=self.attempt,
            pg_dump_version=self.versions[0],
            server_version=self.versions[1],
        )

    def finish(self, report: Report) -> None:
        """Hands a finished report to `_finish` (retention, report file, canonical log line)."""
        _finish(self.config, self.job, report, self.targets, self.result)

    def execute(self) -> None:
        """Runs every database of the job; a failure to start gives a FAILED report each."""
        job = self.job
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run of this job
        local = LocalTarget(self.config.directories.data, job.name)
        for path in local.remove_stale_temporaries():
            log.warning("removed temporary file of an interrupted run", job=job.name, file=path)
        planned = list(job.databases) if isinstance(job.databases, tuple) else []
        try:
            check_directories(self.config, job)
            self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
            with pg.connection_env(job) as env:
                self.env = env
                self.targets = make_targets(self.config, job)
                databases = pg.discover_databases(job, env) if job.discovers_databases else planned
                self.versions = pg.versions(job, env, databases[0] if databases else "postgres")
                self.run_databases(databases)
        except (JobSetupError, SecretError, CommandError, StorageError, Cancelled) as exc:
            message = (
                f"stopped before the dump started: {exc}"
                if isinstance(exc, Cancelled)
                else mask(str(exc))
            )
            self.result.error = message
            self.targets = []
            log.error("run could not start", job=job.name, error=message)
            for database in planned or ["*"]:
                report = self.new_report(database, utc_now())
                report.error_message = message
                self.finish(report)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def run_databases(self, databases: list[str]) -> None:
        """Dumps each database in turn; after a stop request the rest get FAILED reports."""
        for index, database in enumerate(databases):
            with _claimed_start(self.config, database, self.host) as started:
                self.run_database(database, started, first=index == 0)
            if self.cancel.is_cancelled():
                for remaining in databases[index + 1 :]:
                    skipped = self.new_report(remaining, utc_now())
                    skipped.error_message = f"stopped before the dump started: {self.cancel.reason}"
                    self.finish(skipped)
                return

    def run_database(self, database: str, started: datetime, first: bool) -> None:
        """Dumps one database (and the globals, on the first) and writes its report."""
        report = self.new_report(database, started)
        stored: dict[str, list[str]] = {t.name: [] for t in self.targets}
        try:
            self.cancel.raise_if_cancelled()
            if self.job.globals and first:
                self.dump_globals(report, stored)
            if self.globals_error:
                raise JobSetupError(self.globals_error)
            if self.globals_name:
                if not first and any(t.name == "local" for t in self.targets):
                    report.globals_file = str(self.config.directories.data / self.globals_name)
                report.artefacts.append(self.globals_name)
            self.dump(database, report, stored)
        except Cancelled as exc:
            report.error_message = f"stopped during the dump: {exc}"
            _remove_partial(self.targets, stored, report)
        except (CommandError, StorageError, JobSetupError) as exc:
            report.error_message = mask(str(exc))
            _remove_partial(self.targets, stored, report)
        except OSError as exc:
            report.error_message = describe_os_error(exc, exc.filename or self.staging)
            _remove_partial(self.targets, stored, report)
        self.finish(report)

    def dump_globals(self, report: Report, stored: dict[str, list[str]]) -> None:
        """Writes `<stem>_globals.sql` once per run and stores it on every target."""
        name = f"{report.stem}_globals.sql"
        path = self.staging / name
        try:
            pg.dump_globals(self.job, self.env, path)
        except CommandError as exc:
            self.globals_error = f"globals (pg_dumpall --globals-only) failed: {exc}"
            return
        for target in self.targets:
            try:
                obj = target.put_file(path, name)
            except StorageError as exc:
                # This target is out for this database; the others go on.
                report.targets[target.name] = {"status": FAILED, "error": mask(str(exc))}
                continue
            stored[target.name].append(name)
            if target.name == "local":
                report.globals_file = obj.location
        if len(report.targets) == len(self.targets):
            raise StorageError("; ".join(f"{n}: {r['error']}" for n, r in report.targets.items()))
        self.globals_name = name

    def dump(self, database: str, report: Report, stored: dict[str, list[str]]) -> None:
        """Streams one pg_dump to every target and fills in the report's per-target results."""
        job = self.job
        dump_name = f"{report.stem}{pg.extension(job.dump.format)}"
        if job.dump.format == "directory":
            sha256, size, committed, checksum_text = pg.dump_directory(
                job, self.env, database, self.config.directories.data, dump_name, self.cancel
            )
            results: dict[str, StoredObject | str] = {"local": committed}
        else:
            live = [t for t in self.targets if t.name not in report.targets]
            # Remotes with a part limit size their parts from the database's size.
            hint = None
            if any(t.name != "local" for t in live):
                hint = pg.database_size(job, self.env, database)
            sha256, size, results = _stream_dump(
                job, self.env, live, database, dump_name, self.cancel, self.progress, hint
            )
            checksum_text = f"{sha256}  {dump_name}\n"
        report.sha256 = sha256
        report.size_bytes = size
        report.artefacts.insert(0, dump_name)
        checksum_name = f"{dump_name}.sha256"
        checksum_path = self.staging / checksum_name
        checksum_path.write_text(checksum_text, encoding="utf-8")
        report.artefacts.append(checksum_name)
        for target in self.targets:
            if target.name not in report.targets:  # not already failed on the globals file
                _store_checksum(target, results.get(target.name), checksum_path, report, stored)
        failed = {n: r for n, r in report.targets.items() if r["status"] == FAILED}
        if failed:
            report.error_message = "; ".join(f"{name}: {r['error']}" for name, r in failed.items())
        else:
            report.status = SUCCESS


def _store_checksum(
    target: Target,
    outcome: StoredObject | str | None,
    checksum_path: Path,
    report: Report,
    stored: dict[str, list[str]],
) -> None:
    """Stores the .sha256 next to a committed dump; a target that fails loses its dump too."""
    if not isinstance(outcome, StoredObject):
        report.targets[target.name] = {"status": FAILED, "error": mask(str(outcome))}
        return
    dump_name = report.artefacts[0]
    stored[target.name].append(dump_name)
    try:
        checksum_obj = target.put_file(checksum_path, checksum_path.name)
    except StorageError as exc:
        target.delete(stored[target.name])
        stored[target.name].clear()
        report.targets[target.name] = {"status": FAILED, "error": mask(str(exc))}
        return
    stored[target.name].append(checksum_path.name)
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


@contextlib.contextmanager
def _claimed_start(config: Config, database: str, host: str) -> Iterator[datetime]:
    """Yields a start time whose file stem no other run uses (the stem has one-second resolution).

    Two jobs dumping the same database in the same second would otherwise write the same file
    names; a claim file (O_EXCL) in the state directory and the reports directory decide.
    """
    claims = config.directories.state / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    while True:
        started = utc_now()
        name = make_stem(database, started, host)
        if not (config.directories.reports / f"{name}.json").exists():
            try:
                fd = os.open(claims / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                break
        time.sleep(1.05 - datetime.now(UTC).microsecond / 1_000_000)
    try:
        yield started
    finally:
        (claims / name).unlink(missing_ok=True)


def _stream_dump(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    progress: ProgressCallback | None,
    size_hint: int | None = None,
) -> tuple[str, int, dict[str, StoredObject | str]]:
    """Feeds pg_dump's stdout to sha256 and every target's sink in one pass."""
    outcomes: dict[str, StoredObject | str] = {}
    sinks = {}
    try:
        for target in targets:
            try:
                sinks[target.name] = target.open_stream(dump_name, size_hint)
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
        log.debug("dump stream ended", job=job.name, database=database, bytes=size)
        sha256 = digest.hexdigest()
        # Commit every target at once: the local fsync overlaps the upload's last parts.
        with ThreadPoolExecutor(max_workers=len(sinks), thread_name_prefix="commit") as pool:
            futures = {name: pool.submit(sink.commit, sha256) for name, sink in sinks.items()}
        sinks.clear()
        for name, future in futures.items():
            try:
                outcomes[name] = future.result()
            except StorageError as exc:
                outcomes[name] = str(exc)
        log.debug("targets committed", job=job.name, database=database)
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
    index = report_index.default_path(config.directories.state)
    retention = job.retention
    backups = report_index.retention_backups(
        config.directories.reports,
        index,
        job.name,
        current.database,
        days=retention.days,
        keep_last=retention.keep_last,
        now=utc_now(),  # not later than choose_expired's
    )
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
