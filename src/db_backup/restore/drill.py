"""`db-backup drill JOB`: prove that the newest backups come back, and write down the proof.

For each database of the job, the newest successful backup is restored (from OSS when the job
uploads there, so the remote copy is what is proven) into a throwaway cluster (initdb under the
drill directory, unix socket only, the major version of the server the dump came from, removed
afterwards; postgres.cluster) or into a scratch database on a configured server. Roles come
first (each backup's own roles file, checked first; missing roles created, existing ones and
tablespaces left alone), then every table's row count is compared with the backup report's
`tables`, then the user's SQL checks run (postgres.checks: one read-only statement each, through
the driver, as a role that owns nothing). Each database gets a drill
report in `<reports>/drills/`; a failed drill logs at error level and writes a FAILED drill
report.

A drill holds the job's lock (`util.locks.job_lock`), so it never runs beside a backup of the
same job. Whatever a killed drill left (a running throwaway server, its files, scratch
databases) is removed at the start of the next drill of that job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from db_backup.config import Config, DrillSettings, JobConfig
from db_backup.observe import events
from db_backup.postgres.checks import CheckError, CheckLogin, prepare_check_role, run_check
from db_backup.postgres.cluster import ClusterError
from db_backup.postgres.dbdef import read_definition
from db_backup.postgres.server import (
    Server,
    database_exists,
    database_is_empty,
    drop_database,
    server_version,
    table_counts,
)
from db_backup.reports.drills import drills_dir
from db_backup.reports.model import (
    FAILED,
    SUCCESS,
    StoredReport,
    load_reports,
    write_json_atomically,
)
from db_backup.restore.dbdef import (
    DefinitionPlan,
    apply_properties,
    check_target,
    create_recorded,
    differences,
)
from db_backup.restore.drill_report import (
    CheckResult,
    DrillReport,
    count_mismatches,
    counts_to_compare,
    drill_file_name,
    new_report,
    rows_outcome,
    verdict,
)
from db_backup.restore.drill_target import (
    ScratchDatabases,
    cleanup_leftovers,
    drill_root,
    drill_target,
)
from db_backup.restore.fetch import Fetched, fetch
from db_backup.restore.globals_file import apply as apply_roles
from db_backup.restore.globals_file import check_roles_file, plan_on
from db_backup.restore.plan import DatabaseAction, database_action
from db_backup.restore.source import BackupSource, RestoreError, source_from_report
from db_backup.restore.steps import (
    RestoreOptions,
    explain_restore_error,
    run_restore,
    unlock,
)
from db_backup.storage.base import StorageError
from db_backup.storage.crypto import EncryptionError
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.clock import format_utc, parse_utc, utc_now
from db_backup.util.execute import CommandError
from db_backup.util.locks import job_lock
from db_backup.util.secrets import SecretError, mask, resolve

log = structlog.get_logger("db_backup.restore.drill")


class DrillError(Exception):
    """A drill step failed; the message says which and why."""


@dataclass
class DrillResult:
    """The drill reports of one drill run."""

    job: str
    drills: list[DrillReport] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Returns the drill reports as the JSON documents that were written."""
        return [drill.to_json() for drill in self.drills]

    @property
    def ok(self) -> bool:
        """Returns True when there are drill reports and every one says SUCCESS."""
        return bool(self.drills) and all(drill.ok for drill in self.drills)


def newest_backups(config: Config, job: str) -> list[StoredReport]:
    """Returns the newest successful backup report of each database of `job`."""
    reports, _ = load_reports(config.directories.reports)
    newest: dict[str, StoredReport] = {}
    for stored in reports:  # newest first
        if stored.job == job and stored.document["status"] == SUCCESS:
            newest.setdefault(str(stored.document["database"]), stored)
    return sorted(newest.values(), key=lambda r: str(r.document["database"]))


def run_drill(
    config: Config, job: JobConfig, *, cancel: CancelToken | None = None, trigger: str = "manual"
) -> DrillResult:
    """Runs a drill of `job` under the job's lock; raises util.locks.JobBusy while a backup runs."""
    settings = job.drill
    token = CancelToken(
        time.monotonic() + settings.timeout_seconds,
        f"timed out after {settings.timeout_seconds} s (drill.timeout_seconds)",
        cancel,
    )
    with job_lock(config.directories.state, job.name):
        return _Drill(config, job, settings, token, trigger).execute()


@dataclass
class _Drill:
    """One drill run of a job: its settings, its deadline, the reports it has written."""

    config: Config
    job: JobConfig
    settings: DrillSettings
    cancel: CancelToken
    trigger: str
    result: DrillResult = field(init=False)
    scratch: ScratchDatabases = field(init=False)

    def __post_init__(self) -> None:
        self.result = DrillResult(self.job.name)
        self.scratch = ScratchDatabases(self.config, self.job, self.settings)

    @property
    def root(self) -> Path:
        """Returns the directory of this job's drill (downloads, the throwaway cluster)."""
        return drill_root(self.settings, self.job)

    def execute(self) -> DrillResult:
        """Drills the newest backup of every database of the job; returns the reports."""
        try:
            for what in cleanup_leftovers(self.config, self.job, self.settings):
                log.warning(
                    "removed what an interrupted drill left", job=self.job.name, removed=what
                )
        except (ClusterError, CommandError, SecretError, OSError) as exc:
            message = f"could not remove what an interrupted drill left: {mask(str(exc))}"
            self.write(self.failed_report("*", message))
            return self.result
        backups = newest_backups(self.config, self.job.name)
        if not backups:
            message = f"no successful backup of job {self.job.name!r} to drill"
            self.write(self.failed_report("*", message))
            return self.result
        try:
            with drill_target(self.scratch, backups[0]) as (server, cluster):
                for stored in backups:
                    self.cancel.raise_if_cancelled()  # the rest get FAILED reports below
                    self.write(self.drill_one(server, stored, cluster is not None))
        except (DrillError, ClusterError, CommandError, SecretError, OSError, Cancelled) as exc:
            message = mask(str(exc)) if not isinstance(exc, Cancelled) else f"stopped: {exc}"
            done = {drill.database for drill in self.result.drills}
            for stored in backups:
                database = str(stored.document["database"])
                if database not in done:
                    self.write(self.failed_report(database, message, stored))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        return self.result

    def new_report(self, database: str, stored: StoredReport | None) -> DrillReport:
        """Returns a FAILED report of a drill of `database` starting now."""
        return new_report(
            self.job.name,
            database,
            stored,
            started=utc_now(),
            trigger=self.trigger,
            hostname=socket.gethostname(),
            target_kind=self.settings.target,
        )

    def failed_report(
        self, database: str, message: str, stored: StoredReport | None = None
    ) -> DrillReport:
        """Returns the report of a drill of `database` that failed before it began."""
        report = self.new_report(database, stored)
        report.error_message = message
        report.finished_at = report.started_at
        return report

    def drill_one(self, server: Server, stored: StoredReport, cluster: bool) -> DrillReport:
        """Restores one backup into `server`, counts and checks; returns its drill report."""
        database = str(stored.document["database"])
        report = self.new_report(database, stored)
        began = time.monotonic()
        target_db = database if cluster else self.scratch.next_name()
        report.target.database = target_db
        created = False
        keys = contextlib.ExitStack()  # the age identity file, while this backup is drilled
        try:
            self.cancel.raise_if_cancelled()
            source, fetched, identity = self.fetch_backup(server, stored, report, keys)
            self.restore_roles(server, source, fetched, identity)
            definition = check_target(server, stored.document, skip_tablespaces=True)
            if definition.refused:
                raise DrillError(definition.refusal())
            if not cluster:
                self.scratch.add(target_db)
            self.prepare_database(server, source, target_db, definition)
            created = True
            self.restore_into(server, source, fetched, target_db, identity, report)
            apply_properties(server, definition, target_db)
            self.judge(server, target_db, stored.document, report, definition)
        except (RestoreError, DrillError, StorageError, CommandError) as exc:
            report.error_message = mask(str(exc))
        except Cancelled as exc:
            report.error_message = f"stopped: {exc}"
        except OSError as exc:
            report.error_message = f"{exc.filename or self.root}: {exc.strerror or exc}"
        finally:
            keys.close()
            shutil.rmtree(self.root / "download", ignore_errors=True)
            if created and cluster:
                # Frees the disk for the next database; the cluster goes after the last one.
                with contextlib.suppress(CommandError):
                    drop_database(server, target_db)
            if not cluster:
                self.scratch.drop()
                self.scratch.write_marker()
        report.finished_at = format_utc(utc_now())
        report.duration_seconds = round(time.monotonic() - began, 3)
        return report

    def fetch_backup(
        self, server: Server, stored: StoredReport, report: DrillReport, keys: contextlib.ExitStack
    ) -> tuple[BackupSource, Fetched, Path | None]:
        """Gets the backup's files (sha256 verified) and checks what can be checked first.

        Returns the backup, its files and the age identity file (None: not encrypted).
        """
        settings = self.settings
        prefer_remote = settings.source == "oss" or (
            settings.source == "auto" and self.job.mode in {"oss", "both"}
        )
        source = source_from_report(self.config, stored.document, str(stored.path), prefer_remote)
        if settings.source == "oss" and not source.remote_keys:
            raise DrillError("drill.source is oss, but the backup has no OSS copy")
        report.source = source.description
        self.check_space(source, stored.document)
        fetched = fetch(self.config, source, self.root / "download", self.cancel, settings.globals)
        report.sha256 = fetched.sha256
        identity = unlock(keys, self.config, source, fetched, server.env)
        report.target.server_version = server_version(server)
        return source, fetched, identity

    def restore_roles(
        self, server: Server, source: BackupSource, fetched: Fetched, identity: Path | None
    ) -> None:
        """Creates the roles this backup's own roles file holds that the server lacks.

        The file is checked first (checksums, decryption, complete); a damaged or missing one
        fails the drill. Roles that exist are left alone; tablespaces are left out.
        """
        if not self.settings.globals:
            return
        if fetched.globals_file is None:
            if source.globals_name:
                raise DrillError(f"the roles file {source.globals_name} is missing")
            log.warning(
                "drill without globals: the backup has no globals file",
                job=self.job.name,
                database=source.database,
            )
            return
        checked = check_roles_file(fetched.globals_file, source.report, identity)
        plan = plan_on(server, checked, skip_tablespaces=True)
        apply_roles(server, plan, checked.name)

    def prepare_database(
        self, server: Server, source: BackupSource, target_db: str, definition: DefinitionPlan
    ) -> None:
        """Creates the database to restore into as recorded; an existing one must be empty."""
        exists = database_exists(server, target_db)
        empty = database_is_empty(server, target_db) if exists else None
        plain = source.dump_format == "plain"
        action = database_action(exists, False, plain, empty)
        if action is DatabaseAction.REFUSE:
            raise DrillError(f"database {target_db!r} exists and is not empty")
        if action is DatabaseAction.CREATE:
            create_recorded(server, definition, target_db, skip_tablespaces=True)

    def restore_into(
        self,
        server: Server,
        source: BackupSource,
        fetched: Fetched,
        target_db: str,
        identity: Path | None,
        report: DrillReport,
    ) -> None:
        """Runs pg_restore (or psql) into `target_db`; records how long it took."""
        options = RestoreOptions(jobs=self.settings.jobs, skip_tablespaces=True)
        started = time.monotonic()
        try:
            run_restore(server, source, fetched, target_db, options, identity, self.cancel)
        except (CommandError, EncryptionError) as exc:
            raise DrillError(
                f"restore failed: {explain_restore_error(mask(str(exc)), source)}"
            ) from None
        report.restore_seconds = round(time.monotonic() - started, 3)

    def judge(
        self,
        server: Server,
        target_db: str,
        backup: dict[str, Any],
        report: DrillReport,
        definition: DefinitionPlan,
    ) -> None:
        """Counts rows, compares the database's definition with the recorded one, runs the
        user's checks, and gives the report its verdict."""
        report.row_counts, expected = counts_to_compare(backup)
        if expected is not None:
            report.mismatches = count_mismatches(expected, table_counts(server, target_db))
            report.tables_checked = len(expected)
        differ: list[str] = []
        # Before the checks: their role is granted CONNECT on the restored database, which is
        # the drill's doing, not part of the definition that was restored.
        if definition.definition is not None:  # drills leave tablespaces out
            recorded = dataclasses.replace(definition.definition, tablespace="pg_default")
            differ = differences(recorded, read_definition(server, target_db))
        report.checks = self.run_checks(server, target_db, report.database)
        report.status, report.error_message = verdict(report.mismatches, report.checks, differ)

    def run_checks(self, server: Server, target_db: str, database: str) -> list[CheckResult]:
        """Returns the outcome of each user check that applies to `database`.

        Each check is one read-only query, run through the driver as the check role
        (postgres.checks); a check role that cannot be prepared fails every check.
        """
        settings = self.settings
        checks = [c for c in settings.checks if c.database in (None, database)]
        if not checks:
            return []
        try:
            password = None
            if settings.target == "server" and settings.check_password is not None:
                where = f"jobs.{self.job.name}.drill.check_password"
                password = resolve(settings.check_password, where)
            login = CheckLogin(settings.check_user, password)
            prepare_check_role(server, target_db, login.role, create=settings.target == "cluster")
        except (CheckError, SecretError) as exc:
            return [CheckResult(c.name, database, f"not run: {mask(str(exc))}") for c in checks]
        outcomes = []
        for check in checks:
            try:
                rows = run_check(server, target_db, login, check.sql, check.timeout_seconds)
            except CheckError as exc:
                outcomes.append(CheckResult(check.name, database, str(exc)))
            else:
                outcomes.append(rows_outcome(check.name, database, rows))
        return outcomes

    def check_space(self, source: BackupSource, backup: dict[str, Any]) -> None:
        """Raises DrillError unless the drill directory has room for the restore (and download)."""
        size = int(backup["local"].get("sizeBytes") or 0)
        needed = int(size * self.settings.space_factor) + (size if source.remote_keys else 0)
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise DrillError(
                f"not enough disk space under {self.settings.directory}: {free} bytes free, "
                f"the drill needs about {needed} ({self.settings.space_factor} x the dump's "
                f"{size} bytes{' + the download' if source.remote_keys else ''}); free space "
                "or set drill.directory / drill.space_factor"
            )

    def write(self, report: DrillReport) -> None:
        """Writes a drill report, logs the canonical line (error level when FAILED), publishes."""
        directory = drills_dir(self.config)
        path = directory / drill_file_name(report, parse_utc(report.started_at))
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            write_json_atomically(path, report.to_json())
        except OSError as exc:
            log.error(
                "drill report not written", job=self.job.name, error=f"{path}: {exc.strerror}"
            )
            report.status = FAILED
        else:
            self.result.paths.append(path)
        self.result.drills.append(report)
        level = log.info if report.ok else log.error
        level(
            "drill finished",
            job=self.job.name,
            database=report.database,
            status=report.status,
            tables=report.tables_checked,
            mismatches=len(report.mismatches),
            restore_s=report.restore_seconds,
            duration_s=report.duration_seconds,
            backup=report.backup_report or None,
            report=str(path),
            error=report.error_message or None,
        )
        events.publish(  # the seam after a report: alerts, sink and metrics hear of the drill
            self.config,
            events.Event(
                kind=events.DRILL,
                job=self.job.name,
                database=report.database,
                ok=report.ok,
                message=report.error_message or "",
                report=report.to_json(),
                report_path=path if path in self.result.paths else None,
            ),
        )
