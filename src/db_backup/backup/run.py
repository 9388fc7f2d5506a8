"""Runs one backup job: lock, discover, dump each database to every target, report, prune.

`run_job` is the one code path behind `db-backup run`, the daemon and the timer units, so reports,
locks and retention are identical however a run was started.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from db_backup.backup import rowcounts
from db_backup.backup import space as capacity
from db_backup.backup.claims import Claim, claim_stem, stale_claims, unclaimed
from db_backup.backup.directory import DirectoryUpload
from db_backup.config import Config, JobConfig
from db_backup.observe import events
from db_backup.postgres import tools as pg
from db_backup.reports import index as report_index
from db_backup.reports.model import FAILED, SUCCESS, Report, write_report
from db_backup.reports.retention import Backup, choose_expired
from db_backup.storage import crypto, delete_quietly, make_targets
from db_backup.storage.base import StorageError, StoredObject, Target
from db_backup.storage.crypto import EncryptionError
from db_backup.storage.local import LocalTarget
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.clock import utc_now
from db_backup.util.execute import CommandError, StreamingChild
from db_backup.util.fsutil import describe_os_error
from db_backup.util.locks import JobSetupError, job_lock
from db_backup.util.secrets import SecretError, mask

log = structlog.get_logger("db_backup.backup.run")

CHUNK_SIZE = 1024 * 1024
ProgressCallback = Callable[[str, str, int], None]  # job, database, bytes so far
DUMP_DONE = -1  # the bytes a progress callback gets when a database's dump is over
SLOT_POLL_SECONDS = 0.2


# Errors a run expects and reports in words; anything else is a bug, reported all the same.
EXPECTED_ERRORS = (
    JobSetupError,
    SecretError,
    CommandError,
    StorageError,
    EncryptionError,
    Cancelled,
    OSError,
)


def describe_error(exc: BaseException, where: Path | str = "") -> str:
    """Returns the masked message for a run's error; never an exception's repr."""
    if isinstance(exc, Cancelled):
        return f"stopped before the dump started: {exc}"
    if isinstance(exc, OSError):
        return mask(describe_os_error(exc, exc.filename or where))
    if isinstance(exc, EXPECTED_ERRORS):
        return mask(str(exc))
    return mask(f"internal error ({type(exc).__name__}): {exc}; please report this as a bug")


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


@contextlib.contextmanager
def dump_slot(config: Config, job_name: str, cancel: CancelToken) -> Iterator[None]:
    """Holds one of the host's `daemon.max_dumps` dump slots while the block runs.

    A slot is a flock on `<state>/slots/dump-<i>`, so the limit holds across the daemon's jobs,
    timer units and manual runs alike; a run waits (stop requests still count) until one frees.
    """
    directory = config.directories.state / "slots"
    directory.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(config.daemon.max_dumps):
            fd = os.open(directory / f"dump-{index}", os.O_RDWR | os.O_CREAT, 0o660)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield
            finally:
                os.close(fd)
            return
        if not waited:
            log.info(
                "waiting for a dump slot",
                job=job_name,
                max_dumps=config.daemon.max_dumps,
            )
            waited = True
        cancel.raise_if_cancelled()
        time.sleep(SLOT_POLL_SECONDS)


def check_directories(config: Config, job: JobConfig) -> None:
    """Raises JobSetupError unless every directory this job writes exists and is writable."""
    needed = [config.directories.reports, config.directories.state]
    if job.mode in {"local", "both"}:
        needed.append(config.directories.data)
    index = report_index.default_path(config.directories.state)
    for directory in needed:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if directory == config.directories.reports:
                # Through the index (no report changes), else this test alone would make the
                # run's retention step list the directory.
                report_index.own_change(
                    directory, index, [], functools.partial(_write_test, directory)
                )
            else:
                _write_test(directory)
        except OSError as exc:
            raise JobSetupError(
                f"directory not writable: {describe_os_error(exc, directory)}"
            ) from None


def _write_test(directory: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
        pass


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
        _Run(config, job, cancel, progress, trigger, attempt, result).execute()
        capacity.after_run(config, job)  # free space and OSS usage alerts; never raises
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
class StreamOutcome:
    """What one dump produced: its checksum and size, and per target the object or the error."""

    sha256: str
    size: int
    stored: dict[str, StoredObject] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    checksum_text: str = ""
    plaintext_sha256: str = ""  # when encrypted: of pg_dump's output (sha256/size: stored bytes)
    plaintext_size: int = 0
    # Per target, the names stored for the dump itself: the dump's name, or for a directory
    # dump on a remote every member (`<stem>.dump.d/<file>`). Empty: just the dump's name.
    names: dict[str, list[str]] = field(default_factory=dict)


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
    # This machine's short name as it appears in file names (the report's `host` is the
    # database server; its `hostname` the machine's full name).
    machine_label: str = field(default_factory=pg.host_label)
    env: dict[str, str] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    versions: tuple[str, str] = ("", "")
    globals_staged: Path | None = None  # this run's pg_dumpall output, stored per database
    globals_error: str = ""
    recipients: list[str] = field(default_factory=list)  # age public keys; empty: no encryption
    globals_checksums: dict[str, str] = field(default_factory=dict)  # when encrypted
    reported: set[str] = field(default_factory=set)

    @property
    def staging(self) -> Path:
        """Returns the private directory for small files (globals, .sha256) before upload."""
        return self.config.directories.state / "staging" / self.job.name

    @property
    def private(self) -> Path:
        """Returns the 0700 directory of this job's password file (cleared by every run)."""
        return self.config.directories.state / "private" / self.job.name

    def claim(self, database: str) -> Claim:
        """Reserves the report name (stem) of `database` for this run."""
        directories = self.config.directories
        args = (self.job.name, database, self.machine_label)
        try:
            return claim_stem(directories.state, directories.reports, *args)
        except OSError as exc:
            log.error(
                "cannot reserve the report name; going on without a claim",
                job=self.job.name,
                error=describe_os_error(exc, exc.filename or directories.state),
            )
            return unclaimed(directories.reports, *args)

    def new_report(self, database: str, claim: Claim) -> Report:
        """Returns a FAILED report for `database` under its claimed stem, for the steps to fill."""
        job = self.job
        return Report(
            job=job.name,
            database=database,
            host=job.connection.host,
            port=job.connection.port,
            mode=job.mode,
            tool="local" if job.mode == "local" else self.config.storage.tool,
            stem=claim.stem,
            started=claim.started,
            dump_format=job.dump.format,
            compression=job.dump.compression,
            trigger=self.trigger,
            attempt=self.attempt,
            pg_dump_version=self.versions[0],
            server_version=self.versions[1],
            encryption=crypto.encryption_summary(self.recipients) if self.recipients else None,
        )

    def execute(self) -> None:
        """Runs every database of the job; a failure to start gives a FAILED report each."""
        job = self.job
        planned = list(job.databases) if isinstance(job.databases, tuple) else []
        try:
            check_directories(self.config, job)
            local = LocalTarget(self.config.directories.data, job.name)
            for path in local.remove_stale_temporaries():
                log.warning("removed temporary file of an interrupted run", job=job.name, file=path)
            shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run of this job
            self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
            if job.encryption is not None:
                # Before anything is dumped: a refused key must not leave a run half done.
                self.recipients = crypto.recipients_of(job.encryption)
                crypto.check_recipients(self.recipients)
            with pg.connection_env(job, self.private) as env:
                self.env = env
                self.targets = make_targets(self.config, job)
                self.remove_leftovers()
                databases = pg.discover_databases(job, env) if job.discovers_databases else planned
                if not databases:
                    raise JobSetupError(
                        "nothing to back up: every database of the server is excluded "
                        f"(exclude_databases: {', '.join(job.exclude_databases) or 'none'})"
                    )
                self.versions = pg.versions(job, env, databases)
                if job.globals:
                    self.dump_globals()
                self.run_databases(databases)
        except Exception as exc:
            message = describe_error(exc, self.config.directories.state)
            if not isinstance(exc, EXPECTED_ERRORS):
                log.error("run crashed", job=job.name, error=message)
            self.result.error = message
            self.targets = []
            log.error("run could not start", job=job.name, error=message)
            for database in planned or ["*"]:
                if database not in self.reported:
                    self.fail_database(database, message)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    def remove_leftovers(self) -> None:
        """Removes what killed runs of this job created under names no report ever named.

        Also aborts this program's multipart uploads that a SIGKILL left open more than a day
        ago (their parts are billed until someone does); a failure here is logged, never fatal.
        """
        for target in self.targets:
            abort_stale = getattr(target, "abort_stale_uploads", None)
            if abort_stale is None:
                continue
            try:
                aborted = abort_stale()
            except StorageError as exc:
                log.warning(
                    "could not list stale multipart uploads",
                    job=self.job.name,
                    target=target.name,
                    error=mask(str(exc)),
                )
                continue
            if aborted:
                log.warning("aborted stale multipart uploads", job=self.job.name, uploads=aborted)
        reports = self.config.directories.reports
        for stale in stale_claims(self.config.directories.state, self.job.name):
            if (reports / f"{stale.stem}.json").exists():
                continue  # the run got as far as its report: nothing is a leftover
            for target in self.targets:
                names = stale.targets.get(target.name, [])
                try:
                    removed = target.delete(names) if names else []
                except StorageError as exc:
                    stale.keep = True
                    log.error(
                        "could not remove an interrupted run's files",
                        job=self.job.name,
                        target=target.name,
                        error=mask(str(exc)),
                    )
                    continue
                if removed:
                    log.warning(
                        "removed files of an interrupted run",
                        job=self.job.name,
                        stem=stale.stem,
                        removed=removed,
                    )

    def run_databases(self, databases: list[str]) -> None:
        """Dumps the databases, `parallel_databases` at a time; one failing never stops the rest.

        Each dump also holds one of the host's `daemon.max_dumps` slots. After a stop request,
        the databases not started yet get FAILED reports.
        """
        workers = min(self.job.parallel_databases, len(databases))
        if workers <= 1:
            for database in databases:
                self.run_when_allowed(database)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix=f"dump-{self.job.name}") as pool:
            for future in [pool.submit(self.run_when_allowed, d) for d in databases]:
                future.result()

    def run_when_allowed(self, database: str) -> None:
        """Runs one database unless the run was stopped (then it gets a FAILED report)."""
        if self.cancel.is_cancelled():
            self.fail_database(database, f"stopped before the dump started: {self.cancel.reason}")
            return
        self.run_database(database)

    def fail_database(self, database: str, message: str) -> None:
        """Writes a FAILED report for a database that was never dumped."""
        claim = self.claim(database)
        try:
            report = self.new_report(database, claim)
            report.error_message = message
            self.finish(report, {})
        finally:
            claim.release()

    def run_database(self, database: str) -> None:
        """Dumps one database (globals first on the run's first) and writes its report."""
        claim = self.claim(database)
        try:
            report = self.new_report(database, claim)
            stored: dict[str, list[str]] = {t.name: [] for t in self.targets}
            try:
                self.cancel.raise_if_cancelled()
                if self.globals_error:
                    raise JobSetupError(self.globals_error)
                with (
                    dump_slot(self.config, self.job.name, self.cancel),
                    capacity.room_for_dump(self.config, self.job, self.env, report, self.staging),
                    rowcounts.snapshot_for_dump(self.job, self.env, database) as snap,
                ):
                    self.dump(database, report, stored, claim, snap)
            except Cancelled as exc:
                report.error_message = f"stopped during the dump: {exc}"
                _remove_partial(self.targets, stored, report)
            except Exception as exc:
                report.error_message = describe_error(exc, self.staging)
                if not isinstance(exc, EXPECTED_ERRORS):
                    log.error("dump crashed", job=self.job.name, error=report.error_message)
                _remove_partial(self.targets, stored, report)
            self.finish(report, stored)
        finally:
            claim.release()
            if self.progress is not None:
                self.progress(self.job.name, database, DUMP_DONE)

    def globals_name(self, stem: str) -> str:
        """Returns the stored name of the globals file of `stem` (`.age` when encrypted)."""
        return crypto.stored_name(f"{stem}_globals.sql", bool(self.recipients))

    def dump_globals(self) -> None:
        """Runs pg_dumpall --globals-only once per run into the staging directory.

        Encrypted, the output goes through age on its way to the file: the password hashes
        it holds never touch the disk in the clear.
        """
        path = self.staging / crypto.stored_name("globals.sql", bool(self.recipients))
        try:
            if self.recipients:
                child = pg.start_globals(self.job, self.env)
                plain, stored = _encrypt_to_file(child, self.recipients, path, self.cancel)
                self.globals_checksums = {"globalsPlaintextSha256": plain, "globalsSha256": stored}
            else:
                pg.dump_globals(self.job, self.env, path)
        except CommandError as exc:
            self.globals_error = f"globals (pg_dumpall --globals-only) failed: {exc}"
            return
        self.globals_staged = path
        log.info("globals dumped", job=self.job.name, bytes=path.stat().st_size)

    def dump(
        self,
        database: str,
        report: Report,
        stored: dict[str, list[str]],
        claim: Claim,
        snap: rowcounts.DumpSnapshot,
    ) -> None:
        """Streams one pg_dump to every target, then its globals and .sha256; fills the report."""
        job = self.job
        encrypted = bool(self.recipients)
        dump_name = crypto.stored_name(f"{report.stem}{pg.extension(job.dump.format)}", encrypted)
        globals_name = self.globals_name(report.stem) if self.globals_staged else ""
        checksum_name = f"{dump_name}.sha256"
        names = [n for n in (dump_name, globals_name, checksum_name) if n]
        claim.intend({target.name: names for target in self.targets})
        snapshot = snap.snapshot_id  # pg_dump imports it: the counts match the dump
        if job.dump.format == "directory":
            if encrypted:
                raise JobSetupError(
                    "the directory format cannot be encrypted (check-config says so)"
                )

            def intend_members(members: dict[str, list[str]]) -> None:
                claim.intend({t.name: names + members.get(t.name, []) for t in self.targets})

            outcome = _dump_directory(
                job,
                self.env,
                self.targets,
                database,
                dump_name,
                self.cancel,
                snapshot,
                staging=self.staging,
                intend=intend_members,
                progress=self.progress,
            )
        else:
            # Remotes with a part limit size their parts from the database's size.
            hint = None
            if any(t.name != "local" for t in self.targets):
                hint = pg.database_size(job, self.env, database)
            outcome = _stream_dump(
                job,
                self.env,
                self.targets,
                database,
                dump_name,
                self.cancel,
                self.progress,
                hint,
                snapshot,
                self.recipients,
            )
        snap.record(report, self.cancel)
        report.sha256 = outcome.sha256
        report.size_bytes = outcome.size
        if report.encryption is not None:
            report.encryption.update(
                plaintextSha256=outcome.plaintext_sha256,
                plaintextSizeBytes=outcome.plaintext_size,
                **(self.globals_checksums if self.globals_staged else {}),
            )
        checksum_path = self.staging / checksum_name
        checksum_path.write_text(outcome.checksum_text, encoding="utf-8")
        for target in self.targets:
            if target.name in outcome.failed:
                error = mask(outcome.failed[target.name])
                report.targets[target.name] = {"status": FAILED, "error": error}
                continue
            dump = outcome.stored[target.name]
            dump_names = outcome.names.get(target.name) or [dump_name]
            self.store_beside(target, dump_names, dump, report, stored, checksum_path)
        failed = {n: r for n, r in report.targets.items() if r["status"] == FAILED}
        if failed:
            report.error_message = "; ".join(f"{name}: {r['error']}" for name, r in failed.items())
        else:
            report.status = SUCCESS

    def store_beside(
        self,
        target: Target,
        dump_names: list[str],
        dump: StoredObject,
        report: Report,
        stored: dict[str, list[str]],
        checksum_path: Path,
    ) -> None:
        """Stores the globals and the .sha256 next to a committed dump; on failure, the dump goes."""
        names = stored[target.name]
        names.extend(dump_names)
        try:
            globals_obj = None
            if self.globals_staged is not None:
                globals_name = self.globals_name(report.stem)
                globals_obj = target.put_file(self.globals_staged, globals_name)
                names.append(globals_name)
            checksum_obj = target.put_file(checksum_path, checksum_path.name)
            names.append(checksum_path.name)
        except StorageError as exc:
            delete_quietly(target, names)
            report.targets[target.name] = {"status": FAILED, "error": mask(str(exc))}
            return
        report.targets[target.name] = {
            "status": SUCCESS,
            "location": dump.location,
            "sizeBytes": dump.size_bytes,
            **dump.extra,
            "files": list(names),
        }
        if target.name == "local":
            report.local_file = dump.location
            report.checksum_file = checksum_obj.location
            report.globals_file = globals_obj.location if globals_obj else ""
        elif "objects" in dump.extra:  # a directory dump: every object's URL
            report.remote_urls.extend(dump.extra["objects"])
        else:
            report.remote_urls.append(dump.location)

    def finish(self, report: Report, stored: dict[str, list[str]]) -> None:
        """Hands a finished report to `_finish` (report file, retention, canonical log line)."""
        self.reported.add(report.database)
        _finish(self.config, self.job, report, self.targets, stored, self.result)


def _dump_directory(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    snapshot: str | None = None,
    *,
    staging: Path,
    intend: Callable[[dict[str, list[str]]], None],
    progress: ProgressCallback | None = None,
) -> StreamOutcome:
    """Dumps in directory format (-Fd -j N) locally while its files go up to each remote.

    The directory is written through the local target's temporary directory (mode both) or,
    without a local target, in the run's staging directory, removed right after the upload.
    Each file goes up as soon as pg_dump closes it (`directory_upload`); each remote stores the
    files as `<dump_name>/<file>`; one that fails is FAILED and keeps nothing, the others go on.
    The local directory is renamed to its final name only after every upload is over.
    """
    local = next((t for t in targets if isinstance(t, LocalTarget)), None)
    remotes = [t for t in targets if t is not local]
    writer = local if local is not None else LocalTarget(staging, job.name)
    sink = writer.open_directory(dump_name)
    upload = None
    try:
        if remotes:
            workers = max(1, min(job.dump.jobs, 4))
            upload = DirectoryUpload(
                remotes, sink.path, dump_name, workers, cancel, intend, job=job.name,
                database=database,
            )  # fmt: skip
            upload.start()
        pg.dump_to_directory(
            job,
            env,
            database,
            sink.path,
            cancel,
            snapshot,
            None if progress is None else functools.partial(progress, job.name, database),
        )
        files = sorted(path.name for path in sink.path.iterdir())
        results = upload.finish(files) if upload is not None else {}
        cancel.raise_if_cancelled()
        stored, manifest = sink.commit(upload.checksums() if upload is not None else None)
    except BaseException as exc:
        if upload is not None:
            upload.abort(str(exc) or type(exc).__name__)
        sink.abort()
        raise
    outcome = StreamOutcome(
        stored.extra["manifestSha256"], stored.size_bytes, checksum_text=manifest
    )
    if local is not None:
        outcome.stored[local.name] = stored
        outcome.names[local.name] = [dump_name]
    else:
        shutil.rmtree(stored.location, ignore_errors=True)
    for remote in remotes:
        if remote.name in results:
            outcome.stored[remote.name] = results[remote.name]
            outcome.names[remote.name] = [f"{dump_name}/{file}" for file in files]
        elif upload is not None:
            outcome.failed[remote.name] = upload.failed[remote.name]
    return outcome


def _stream_dump(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    progress: ProgressCallback | None,
    size_hint: int | None = None,
    snapshot: str | None = None,
    recipients: list[str] | None = None,
) -> StreamOutcome:
    """Feeds pg_dump's stdout to sha256 and every target's sink in one pass.

    With `recipients`, the stream goes through `age --encrypt` first: the sinks (and the
    checksum) see only ciphertext, and the plaintext's checksum is kept beside it.
    """
    failed: dict[str, str] = {}
    sinks = {}
    try:
        for target in targets:
            try:
                sinks[target.name] = target.open_stream(dump_name, size_hint)
            except StorageError as exc:
                failed[target.name] = str(exc)
        if not sinks:
            raise StorageError("; ".join(f"{n}: {e}" for n, e in failed.items()))
        plain = hashlib.sha256()
        plain_size = 0

        def observe(data: bytes) -> None:
            nonlocal plain_size
            plain.update(data)
            plain_size += len(data)

        encryptor = crypto.start_encryption(recipients) if recipients else None
        try:
            child = pg.start_dump(job, env, database, snapshot)
        except BaseException:
            if encryptor is not None:
                encryptor.terminate()
            raise
        digest = hashlib.sha256()
        size = 0
        try:
            stream = (
                encryptor.pump(child.stdout_fd, CHUNK_SIZE, cancel, observe)
                if encryptor is not None
                else child.chunks(CHUNK_SIZE, cancel)
            )
            for chunk in stream:
                digest.update(chunk)
                size += len(chunk)
                for name, sink in list(sinks.items()):
                    try:
                        sink.write(chunk)
                    except StorageError as exc:
                        sink.abort()
                        del sinks[name]
                        failed[name] = str(exc)
                        log.error(
                            "target failed during the dump",
                            job=job.name,
                            database=database,
                            target=name,
                            error=mask(str(exc)),
                        )
                if not sinks:
                    child.terminate()
                    raise StorageError("; ".join(f"{n}: {e}" for n, e in failed.items()))
                if progress is not None:
                    progress(job.name, database, size)
            child.check()
            if encryptor is not None:
                encryptor.check()
        except BaseException:
            child.terminate()
            if encryptor is not None:
                encryptor.terminate()
            raise
        log.debug("dump stream ended", job=job.name, database=database, bytes=size)
        sha256 = digest.hexdigest()
        outcome = StreamOutcome(
            sha256, size, failed=failed, checksum_text=f"{sha256}  {dump_name}\n"
        )
        if encryptor is not None:
            outcome.plaintext_sha256, outcome.plaintext_size = plain.hexdigest(), plain_size
        # Commit every target at once: the local fsync overlaps the upload's last parts.
        with ThreadPoolExecutor(max_workers=len(sinks), thread_name_prefix="commit") as pool:
            futures = {name: pool.submit(sink.commit, sha256) for name, sink in sinks.items()}
        sinks.clear()
        for name, future in futures.items():
            try:
                outcome.stored[name] = future.result()
            except StorageError as exc:
                outcome.failed[name] = str(exc)
        log.debug("targets committed", job=job.name, database=database)
        return outcome
    finally:
        for sink in sinks.values():
            sink.abort()


def _encrypt_to_file(
    child: StreamingChild, recipients: list[str], path: Path, cancel: CancelToken
) -> tuple[str, str]:
    """Encrypts `child`'s stdout with age into a new 0600 file; returns (plain, stored) sha256."""
    plain, stored = hashlib.sha256(), hashlib.sha256()
    encryptor = None
    try:
        encryptor = crypto.start_encryption(recipients)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in encryptor.pump(child.stdout_fd, CHUNK_SIZE, cancel, plain.update):
                stored.update(chunk)
                out.write(chunk)
        child.check()
        encryptor.check()
    except BaseException:
        child.terminate()
        if encryptor is not None:
            encryptor.terminate()
        path.unlink(missing_ok=True)
        raise
    return plain.hexdigest(), stored.hexdigest()


def _remove_partial(targets: list[Target], stored: dict[str, list[str]], report: Report) -> None:
    """Deletes what a failed database's run had already stored, so nothing looks like a backup."""
    report.status = FAILED
    for target in targets:
        delete_quietly(target, stored.get(target.name, []))
    report.local_file = report.checksum_file = report.globals_file = ""
    report.remote_urls.clear()
    for result in report.targets.values():
        result.pop("files", None)


def _finish(
    config: Config,
    job: JobConfig,
    report: Report,
    targets: list[Target],
    stored: dict[str, list[str]],
    result: RunResult,
) -> None:
    """Writes the report, then (after a success) applies retention and records what it did."""
    # A report names only what exists: the files some target still holds.
    report.artefacts = list(dict.fromkeys(n for names in stored.values() for n in names))
    report.finished = utc_now()
    reports_dir = config.directories.reports
    index = report_index.default_path(config.directories.state)
    # Through the index, so the retention step that follows need not list the directory.
    name = f"{report.stem}.json"
    try:
        path = report_index.own_change(
            reports_dir, index, [name], lambda: write_report(reports_dir, report)
        )
    except OSError as exc:
        message = f"cannot write the report: {describe_os_error(exc, exc.filename or reports_dir)}"
        log.error("report not written", job=job.name, database=report.database, error=message)
        # A dump without a report must not look like a good backup: take it away again.
        for target in targets:
            delete_quietly(target, stored.get(target.name, []))
        document = report.to_json()
        document["status"] = FAILED
        document["errorMessage"] = message
        result.reports.append(document)
        result.error = message
        _after_report(config, document, None)
        return
    if report.status == SUCCESS:
        try:
            report.retention_deleted = apply_retention(config, job, report, targets)
        except Exception as exc:  # pruning never turns a written good backup into a failure
            report.retention_error = describe_error(exc, reports_dir)
            log.error("retention failed", job=job.name, error=report.retention_error)
        try:
            report_index.own_change(
                reports_dir, index, [name], lambda: write_report(reports_dir, report, replace=True)
            )
        except OSError as exc:
            log.warning(
                "report not updated with the retention result",
                job=job.name,
                error=describe_os_error(exc, path),
            )
    document = report.to_json()
    for target in targets:
        if target.name == "local":
            continue
        try:
            target.put_file(path, path.name)
        except StorageError as exc:
            log.warning("report not copied to the remote", target=target.name, error=mask(str(exc)))
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
    _after_report(config, document, path)


def _after_report(config: Config, document: dict[str, Any], path: Path | None) -> None:
    """The one seam after a report is written: its consumers (sink, alerts, metrics) hear of it.

    They never change the backup's status: `events.publish` logs and counts their failures.
    """
    events.publish(
        config,
        events.Event(
            kind=events.BACKUP,
            job=document["job"],
            database=document["database"],
            ok=document["status"] == SUCCESS,
            message=document["errorMessage"] or "",
            report=document,
            report_path=path,
        ),
    )


def apply_retention(
    config: Config, job: JobConfig, current: Report, targets: list[Target]
) -> list[str]:
    """Deletes this job's expired backups of `current.database`; returns what was removed."""
    if capacity.hold_retention(config, job, current):
        return []  # the newest backup looks too small: keep every old one (the report says so)
    current_key = f"{current.stem}.json"
    retention = job.retention
    index = report_index.default_path(config.directories.state)
    with report_index.snapshot(config.directories.reports, index, quick=True) as snap:
        view = snap.retention_view(
            job.name,
            current.database,
            cutoff=utc_now() - timedelta(days=retention.days),  # not later than choose_expired's
            keep_last=retention.keep_last,
        )
        for warning in snap.warnings():  # after the view: it may have re-read a file
            log.warning("retention skipped a malformed report", job=job.name, reason=warning)
    # The current report is already written (report first, then prune): take it as it is now.
    backups = [b for b in view if b.key != current_key]
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
                    "retention could not delete",
                    job=job.name,
                    target=target.name,
                    error=mask(str(exc)),
                )
                names = []  # keep the report while its files may still exist
        report_file = config.directories.reports / backup.key
        if names and backup.key in names:
            for target in targets:
                if target.name != "local":
                    with contextlib.suppress(StorageError):
                        removed.extend(target.delete([backup.key]))
            report_index.own_change(
                config.directories.reports,
                index,
                [backup.key],
                functools.partial(report_file.unlink, missing_ok=True),
            )
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
