"""`db-backup drill JOB`: prove that the newest backups come back, and write down the proof.

For each database of the job, the newest successful backup is restored (from OSS when the job
uploads there, so the remote copy is what is proven) into a throwaway cluster (initdb under the
drill directory, unix socket only, the major version of the server the dump came from, removed
afterwards) or into a scratch database on a configured server. Roles come first (from the globals
file, tablespaces left out), then every table's row count is compared with the backup report's
`tables`, then the user's SQL checks run. Each database gets a drill report in
`<reports>/drills/`; a failed drill logs at error level and writes a FAILED drill report.

A drill holds the job's lock (`util.locks.job_lock`), so it never runs beside a backup of the same job.
Whatever a killed drill left (a running throwaway server, its files, scratch databases) is
removed at the start of the next drill of that job.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from db_backup.config import Config, Connection, JobConfig, SecretRef, schema
from db_backup.observe import events
from db_backup.reports.drills import drills_dir
from db_backup.reports.model import (
    FAILED,
    REPORT_NAMESPACE,
    SUCCESS,
    StoredReport,
    load_reports,
    write_json_atomically,
)
from db_backup.restore.run import (
    BackupSource,
    RestoreError,
    RestoreOptions,
    Server,
    create_database,
    database_exists,
    database_is_empty,
    drop_database,
    explain_restore_error,
    fetch,
    psql_script,
    read_globals,
    restore_globals_text,
    run_restore,
    server_env,
    source_from_report,
    unlock,
)
from db_backup.storage.base import StorageError
from db_backup.storage.crypto import EncryptionError
from db_backup.util.cancel import Cancelled, CancelToken
from db_backup.util.clock import format_utc, parse_utc, utc_now
from db_backup.util.execute import CommandError, child_env, run
from db_backup.util.locks import job_lock
from db_backup.util.secrets import SecretError, mask

log = structlog.get_logger("db_backup.restore.drill")

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes, minus "/.s.PGSQL.5432"
SOCKET_MARKER = "socket-dir"
SCRATCH_MARKER = "scratch-databases.json"
SERVER_SETTINGS = {
    # A throwaway cluster: nothing here needs to survive a crash, everything needs to be fast.
    "listen_addresses": "",
    "port": "5432",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "jit": "off",
    "maintenance_work_mem": "256MB",
}
# The same tables and the same keys as db_backup.backup.rowcounts records at dump time
# (format('%I.%I'), ordinary tables, their own rows only), so the two compare one to one.
COUNT_SQL = r"""
SELECT format('%I.%I', n.nspname, c.relname),
       (xpath('/row/c/text()', query_to_xml(
           format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
           false, true, '')))[1]::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r'
   AND n.nspname <> 'information_schema'
   AND left(n.nspname, 3) <> 'pg_'
   AND NOT EXISTS (
     SELECT FROM pg_depend d
      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
 ORDER BY 1;
"""


class DrillError(Exception):
    """A drill step failed; the message says which and why."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DrillCheck:
    """One user SQL check: a query that must return one row holding true."""

    name: str
    sql: str
    database: str | None


@dataclass(frozen=True)
class DrillSettings:
    """A job's `drill` section with every default filled in."""

    enabled: bool
    schedule: str
    target: str
    source: str
    directory: Path
    bindir: str
    run_as: str
    server: Connection | None
    globals: bool
    jobs: int
    timeout_seconds: int
    space_factor: float
    checks: tuple[DrillCheck, ...]


def drill_settings(config: Config, job: JobConfig) -> DrillSettings:
    """Returns the drill settings of `job` (read from the validated config document)."""
    given = dict(job.drill)
    props = schema()["properties"]["jobs"]["items"]["properties"]["drill"]["properties"]
    values = {k: given.get(k, p.get("default")) for k, p in props.items()}
    server = None
    if values["server"]:
        raw = values["server"]
        password = raw.get("password")
        server = Connection(
            host=raw.get("host", "/var/run/postgresql"),
            port=int(raw.get("port", 5432)),
            user=raw.get("user", "postgres"),
            password=SecretRef(*next(iter(password.items()))) if password else None,
            connect_timeout_seconds=job.connection.connect_timeout_seconds,
        )
    directory = values["directory"] or str(config.directories.state / "drill")
    return DrillSettings(
        enabled=bool(values["enabled"]),
        schedule=str(values["schedule"]),
        target=str(values["target"]),
        source=str(values["source"]),
        directory=Path(directory),
        bindir=str(values["bindir"]),
        run_as=str(values["run_as"]),
        server=server,
        globals=bool(values["globals"]),
        jobs=int(values["jobs"]),
        timeout_seconds=int(values["timeout_seconds"]),
        space_factor=float(values["space_factor"]),
        checks=tuple(
            DrillCheck(c["name"], c["sql"], c.get("database")) for c in values["checks"] or []
        ),
    )


# --------------------------------------------------------------------------- throwaway cluster


def _as_user(run_as: str | None, argv: list[str]) -> list[str]:
    """Returns argv run as `run_as` (through runuser) when we are root, else unchanged."""
    if run_as and os.geteuid() == 0:
        return ["runuser", "-u", run_as, "--", *argv]
    return argv


def _user_entry(name: str) -> pwd.struct_passwd:
    """Returns the passwd entry of `name`; raises DrillError naming the setting otherwise."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise DrillError(
            f"drill.run_as: there is no OS user {name!r} to run the throwaway cluster as"
        ) from None


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster made for one drill: initdb, unix socket only, removed afterwards."""

    root: Path
    bindir: Path
    run_as: str | None
    socket_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.socket_dir = self.root / "sock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> Connection:
        """Creates and starts the cluster; returns the connection to it (role postgres)."""
        initdb = self.bindir / "initdb"
        if not initdb.exists():
            major = self.bindir.parent.name
            raise DrillError(
                f"{initdb} not found: the drill needs the PostgreSQL {major} server binaries "
                f"(apt install postgresql-{major}), or set drill.bindir"
            )
        owner = _user_entry(self.run_as) if self.run_as and os.geteuid() == 0 else None
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(self.socket_dir)) > SOCKET_PATH_MAX:
            # A unix socket path is limited to 107 bytes: use a short private directory and
            # write down where it is, so a later drill can remove it after a crash.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="db-backup-drill-"))
            (self.root / SOCKET_MARKER).write_text(str(self.socket_dir), encoding="utf-8")
        else:
            self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        env = child_env()
        run(
            _as_user(
                self.run_as,
                [
                    str(initdb),
                    "--pgdata",
                    str(self.data_dir),
                    "--username=postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
            ),
            env=env,
            timeout=600,
        )
        settings = {**SERVER_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# db-backup drill: a throwaway cluster\n")
            for name, value in settings.items():
                conf.write(f"{name} = {_conf_value(value)}\n")
        log_file = self.root / "server.log"
        log_file.touch(mode=0o600)
        if owner is not None:
            os.chown(log_file, owner.pw_uid, owner.pw_gid)
        try:
            run(
                _as_user(
                    self.run_as,
                    [
                        str(self.bindir / "pg_ctl"),
                        "--pgdata",
                        str(self.data_dir),
                        "--log",
                        str(log_file),
                        "--wait",
                        "--timeout=120",
                        "start",
                    ],
                ),
                env=env,
                timeout=180,
            )
        except CommandError as exc:
            tail = " | ".join(_tail(log_file, 5))
            raise DrillError(f"the throwaway server did not start: {exc} (log: {tail})") from None
        return Connection(str(self.socket_dir), 5432, "postgres", None, 10)

    def remove(self) -> None:
        """Stops the server (immediate) if it runs and deletes every file of the cluster."""
        stop_and_remove(self.root, self.bindir, self.run_as)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def stop_and_remove(root: Path, bindir: Path | None, run_as: str | None) -> bool:
    """Stops a (possibly orphaned) throwaway server under `root` and deletes `root`.

    Returns True when there was something to remove. Used after every drill and at the start
    of the next one, for what a killed drill left behind.
    """
    if not root.exists():
        return False
    data = root / "data"
    pid_file = data / "postmaster.pid"
    if pid_file.exists():
        pg_ctl = (bindir / "pg_ctl") if bindir else _pg_ctl_for(data)
        if pg_ctl is not None:
            with contextlib.suppress(CommandError):
                run(
                    _as_user(
                        run_as,
                        [
                            str(pg_ctl),
                            "--pgdata",
                            str(data),
                            "--mode=immediate",
                            "--wait",
                            "--timeout=60",
                            "stop",
                        ],
                    ),
                    env=child_env(),
                    timeout=90,
                )
        _kill_postmaster(pid_file, data)
    # Backends of an immediate shutdown may still be finishing a write: wait for every process
    # working in the data directory (postgres chdirs into it) before deleting it.
    _wait_for_processes_in(data)
    marker = root / SOCKET_MARKER
    if marker.exists():
        with contextlib.suppress(OSError):
            sock = Path(marker.read_text(encoding="utf-8").strip())
            # Only a directory this module made (see ThrowawayCluster.start) is removed.
            if sock.parent == Path(tempfile.gettempdir()) and sock.name.startswith(
                "db-backup-drill-"
            ):
                shutil.rmtree(sock, ignore_errors=True)
    for _ in range(50):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return True
        time.sleep(0.2)
    raise DrillError(f"{root}: could not be removed (what is still writing there?)")


def _processes_in(directory: Path) -> list[int]:
    """Returns the pids of processes whose working directory is `directory` or below it."""
    found = []
    prefix = str(directory)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == prefix or cwd.startswith(prefix + "/"):
                found.append(int(entry.name))
    return found


def _wait_for_processes_in(directory: Path, seconds: float = 10.0) -> None:
    """Waits until no process works in `directory`; kills what is left after `seconds`."""
    deadline = time.monotonic() + seconds
    while (pids := _processes_in(directory)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _processes_in(directory) and time.monotonic() < deadline:
        time.sleep(0.1)


def _pg_ctl_for(data: Path) -> Path | None:
    with contextlib.suppress(OSError, ValueError):
        major = (data / "PG_VERSION").read_text(encoding="utf-8").strip()
        candidate = Path(f"/usr/lib/postgresql/{int(major)}/bin/pg_ctl")
        if candidate.exists():
            return candidate
    return None


def _kill_postmaster(pid_file: Path, data: Path) -> None:
    """Kills the postmaster of `data` if pg_ctl could not stop it (SIGQUIT, then SIGKILL)."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"postgres" not in cmdline:
        return  # the pid was reused by something else
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if not Path(f"/proc/{pid}").exists():
            return


# --------------------------------------------------------------------------- the drill


@dataclass
class DrillResult:
    """The drill reports of one drill run."""

    job: str
    reports: list[dict[str, Any]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Returns True when there are drill reports and every one says SUCCESS."""
        return bool(self.reports) and all(r["status"] == SUCCESS for r in self.reports)


def newest_backups(config: Config, job: str) -> list[StoredReport]:
    """Returns the newest successful backup report of each database of `job`."""
    reports, _ = load_reports(config.directories.reports)
    newest: dict[str, StoredReport] = {}
    for stored in reports:  # newest first
        if stored.job == job and stored.document["status"] == SUCCESS:
            newest.setdefault(str(stored.document["database"]), stored)
    return sorted(newest.values(), key=lambda r: str(r.document["database"]))


def _stop_orphans(root: Path, grace: float = 5.0) -> list[int]:
    """Stops the processes whose command line names `root` (SIGTERM, then SIGKILL)."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGTERM)
                found.append(int(entry.name))
    deadline = time.monotonic() + grace
    while found and time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in found):
            break
        time.sleep(0.1)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def cleanup_leftovers(config: Config, job: JobConfig, settings: DrillSettings) -> list[str]:
    """Removes what an interrupted drill of `job` left; returns what was removed."""
    removed: list[str] = []
    root = settings.directory / job.name
    run_as = settings.run_as
    if stop_and_remove(root, None, run_as):
        removed.append(str(root))
    # A killed drill's pg_restore or psql runs on in its own session until it notices the server
    # is gone; it is this program's own child, so it goes too.
    removed.extend(f"process {pid}" for pid in _stop_orphans(root))
    marker = settings.directory / f"{job.name}.{SCRATCH_MARKER}"
    if marker.exists():
        try:
            names = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            names = []
        if settings.server is not None and isinstance(names, list):
            with server_env(config, settings.server, job) as server:
                for name in names:
                    if isinstance(name, str) and name.startswith("db_backup_drill_"):
                        with contextlib.suppress(CommandError):
                            drop_database(server, name)
                            removed.append(f"database {name}")
        marker.unlink(missing_ok=True)
    return removed


def run_drill(
    config: Config, job: JobConfig, *, cancel: CancelToken | None = None, trigger: str = "manual"
) -> DrillResult:
    """Runs a drill of `job` under the job's lock; raises job.JobBusy while a backup runs."""
    settings = drill_settings(config, job)
    token = CancelToken(
        time.monotonic() + settings.timeout_seconds,
        f"timed out after {settings.timeout_seconds} s (drill.timeout_seconds)",
        cancel,
    )
    with job_lock(config.directories.state, job.name):
        return _Drill(config, job, settings, token, trigger).execute()


@dataclass
class _Drill:
    config: Config
    job: JobConfig
    settings: DrillSettings
    cancel: CancelToken
    trigger: str
    result: DrillResult = field(init=False)
    globals_done: bool = False
    scratch: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.result = DrillResult(self.job.name)

    @property
    def root(self) -> Path:
        return self.settings.directory / self.job.name

    def execute(self) -> DrillResult:
        try:
            for what in cleanup_leftovers(self.config, self.job, self.settings):
                log.warning(
                    "removed what an interrupted drill left", job=self.job.name, removed=what
                )
        except (DrillError, CommandError, SecretError, OSError) as exc:
            message = f"could not remove what an interrupted drill left: {mask(str(exc))}"
            self.write(self.failed_document("*", message))
            return self.result
        backups = newest_backups(self.config, self.job.name)
        if not backups:
            self.write(
                self.failed_document("*", f"no successful backup of job {self.job.name!r} to drill")
            )
            return self.result
        cluster: ThrowawayCluster | None = None
        try:
            with self.target(backups[0]) as (server, cluster):
                for stored in backups:
                    self.cancel.raise_if_cancelled()  # the rest get FAILED reports below
                    self.write(self.drill_one(server, stored, cluster is not None))
        except (DrillError, CommandError, SecretError, OSError, Cancelled) as exc:
            message = mask(str(exc)) if not isinstance(exc, Cancelled) else f"stopped: {exc}"
            done = {r["database"] for r in self.result.reports}
            for stored in backups:
                if stored.document["database"] not in done:
                    self.write(
                        self.failed_document(str(stored.document["database"]), message, stored)
                    )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
        return self.result

    @contextlib.contextmanager
    def target(self, first: StoredReport) -> Iterator[tuple[Server, ThrowawayCluster | None]]:
        """Yields the server to restore into: a throwaway cluster, or the configured one."""
        settings = self.settings
        made_parent = not settings.directory.exists()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0 and settings.target == "cluster":
            # initdb and the server run as `run_as`, inside this directory; a drill directory
            # made by root now must stay usable by the service, which runs as that user.
            owner = _user_entry(settings.run_as)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            if made_parent:
                os.chown(settings.directory, owner.pw_uid, owner.pw_gid)
        if settings.target == "server":
            assert settings.server is not None  # the config rules require it
            marker = settings.directory / f"{self.job.name}.{SCRATCH_MARKER}"
            try:
                with server_env(self.config, settings.server, self.job) as server:
                    yield server, None
            finally:
                self.drop_scratch()
                if not self.scratch:
                    marker.unlink(missing_ok=True)
            return
        major = _server_major(first.document)
        if major is None:
            raise DrillError(
                f"{first.path.name}: serverVersion is missing; cannot pick the server version "
                "of the throwaway cluster"
            )
        bindir = Path(settings.bindir.replace("{major}", str(major)))
        cluster = ThrowawayCluster(self.root / "cluster", bindir, settings.run_as)
        try:
            connection = cluster.start()
            yield Server(connection, child_env({"PGCONNECT_TIMEOUT": "10"})), cluster
        finally:
            cluster.remove()

    def drop_scratch(self) -> None:
        if self.settings.server is None:
            return
        with server_env(self.config, self.settings.server, self.job) as server:
            for name in list(self.scratch):
                try:
                    drop_database(server, name)
                    self.scratch.remove(name)
                except CommandError as exc:
                    log.error("scratch database not dropped", database=name, error=str(exc))

    def scratch_name(self, index: int) -> str:
        return f"db_backup_drill_{self.job.name}_{index}".lower()

    def base_document(self, database: str, stored: StoredReport | None) -> dict[str, Any]:
        started = utc_now()
        backup_id = str(stored.document.get("id", "")) if stored else ""
        return {
            "schemaVersion": 1,
            "kind": "drill",
            "id": str(
                uuid.uuid5(
                    REPORT_NAMESPACE,
                    f"drill/{self.job.name}/{database}/{format_utc(started)}/{backup_id}",
                )
            ),
            "job": self.job.name,
            "database": database,
            "status": FAILED,
            "errorMessage": "",
            "startedAt": format_utc(started),
            "finishedAt": "",
            "durationSeconds": 0.0,
            "restoreSeconds": 0.0,
            "trigger": self.trigger,
            "hostname": socket.gethostname(),
            "backupReportId": backup_id,
            "backupReport": stored.path.name if stored else "",
            "backupStartedAt": str(stored.document["startedAt"]) if stored else "",
            "source": "",
            "sha256": "",
            "target": {"kind": self.settings.target, "database": "", "serverVersion": ""},
            "rowCounts": "none",
            "tablesChecked": 0,
            "mismatches": [],
            "checks": [],
        }

    def failed_document(
        self, database: str, message: str, stored: StoredReport | None = None
    ) -> dict[str, Any]:
        document = self.base_document(database, stored)
        document["errorMessage"] = message
        document["finishedAt"] = document["startedAt"]
        return document

    def drill_one(self, server: Server, stored: StoredReport, cluster: bool) -> dict[str, Any]:
        """Restores one backup, counts and checks; returns its drill report document."""
        backup = stored.document
        database = str(backup["database"])
        document = self.base_document(database, stored)
        began = time.monotonic()
        target_db = database if cluster else self.scratch_name(len(self.scratch) + 1)
        document["target"]["database"] = target_db
        created = False
        keys = contextlib.ExitStack()  # the age identity file, while this backup is drilled
        try:
            self.cancel.raise_if_cancelled()
            prefer_remote = self.settings.source == "oss" or (
                self.settings.source == "auto" and self.job.mode in {"oss", "both"}
            )
            source = source_from_report(self.config, backup, str(stored.path), prefer_remote)
            if self.settings.source == "oss" and not source.remote_keys:
                raise DrillError("drill.source is oss, but the backup has no OSS copy")
            document["source"] = source.description
            self.check_space(source, backup)
            fetched = fetch(
                self.config, source, self.root / "download", self.cancel, self.settings.globals
            )
            document["sha256"] = fetched.sha256
            identity = unlock(keys, self.config, source, fetched, server.env)
            document["target"]["serverVersion"] = psql_script(
                server, "postgres", "SHOW server_version;\n"
            ).strip()
            if self.settings.globals and not self.globals_done:
                if fetched.globals_file is not None:
                    text = read_globals(fetched, identity, source)
                    restore_globals_text(
                        server, text, fetched.globals_file.name, skip_tablespaces=True
                    )
                    self.globals_done = True
                else:
                    log.warning(
                        "drill without globals: the backup has no globals file",
                        job=self.job.name,
                        database=database,
                    )
            if not cluster:
                self.scratch.append(target_db)
                self.write_scratch_marker()
            if database_exists(server, target_db):
                if not database_is_empty(server, target_db):
                    raise DrillError(f"database {target_db!r} exists and is not empty")
            else:
                create_database(server, target_db)
            created = True
            options = RestoreOptions(jobs=self.settings.jobs, skip_tablespaces=True)
            restore_started = time.monotonic()
            try:
                run_restore(server, source, fetched, target_db, options, identity, self.cancel)
            except (CommandError, EncryptionError) as exc:
                raise DrillError(
                    f"restore failed: {explain_restore_error(mask(str(exc)), source)}"
                ) from None
            document["restoreSeconds"] = round(time.monotonic() - restore_started, 3)
            self.compare_counts(server, target_db, backup, document)
            self.run_checks(server, target_db, database, document)
            problems = []
            if document["mismatches"]:
                problems.append(f"{len(document['mismatches'])} table(s) with other row counts")
            failed_checks = [c["name"] for c in document["checks"] if not c["passed"]]
            if failed_checks:
                problems.append(f"check(s) failed: {', '.join(failed_checks)}")
            document["status"] = FAILED if problems else SUCCESS
            document["errorMessage"] = "; ".join(problems)
        except (RestoreError, DrillError, StorageError) as exc:
            document["errorMessage"] = mask(str(exc))
        except CommandError as exc:
            document["errorMessage"] = mask(str(exc))
        except Cancelled as exc:
            document["errorMessage"] = f"stopped: {exc}"
        except OSError as exc:
            document["errorMessage"] = f"{exc.filename or self.root}: {exc.strerror or exc}"
        finally:
            keys.close()
            shutil.rmtree(self.root / "download", ignore_errors=True)
            if created and cluster:
                # Frees the disk for the next database; the cluster goes after the last one.
                with contextlib.suppress(CommandError):
                    drop_database(server, target_db)
            if not cluster:
                self.drop_scratch()
                self.write_scratch_marker()
        document["finishedAt"] = format_utc(utc_now())
        document["durationSeconds"] = round(time.monotonic() - began, 3)
        return document

    def write_scratch_marker(self) -> None:
        marker = self.settings.directory / f"{self.job.name}.{SCRATCH_MARKER}"
        if self.scratch:
            write_json_atomically(marker, self.scratch, 0o600)  # type: ignore[arg-type]
        else:
            marker.unlink(missing_ok=True)

    def check_space(self, source: BackupSource, backup: dict[str, Any]) -> None:
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

    def compare_counts(
        self, server: Server, target_db: str, backup: dict[str, Any], document: dict[str, Any]
    ) -> None:
        expected = backup.get("tables")
        mode = str(backup.get("rowCounts", "exact" if isinstance(expected, dict) else "none"))
        document["rowCounts"] = mode if isinstance(expected, dict) else "none"
        if not isinstance(expected, dict) or mode != "exact":
            return  # nothing exact to compare with: the restore itself is what was proven
        actual = table_counts(server, target_db)
        mismatches = []
        for table, rows in sorted(expected.items()):
            got = actual.get(table)
            if got != rows:
                mismatches.append({"table": table, "expected": rows, "actual": got})
        document["tablesChecked"] = len(expected)
        document["mismatches"] = mismatches

    def run_checks(
        self, server: Server, target_db: str, database: str, document: dict[str, Any]
    ) -> None:
        for check in self.settings.checks:
            if check.database is not None and check.database != database:
                continue
            entry: dict[str, Any] = {"name": check.name, "database": database, "passed": False}
            try:
                out = psql_script(server, target_db, check.sql.rstrip().rstrip(";") + ";\n")
                if out.strip() == "t":
                    entry["passed"] = True
                else:
                    entry["error"] = f"returned {out.strip()[:80]!r}, not one row with true"
            except CommandError as exc:
                entry["error"] = mask(str(exc))
            document["checks"].append(entry)

    def write(self, document: dict[str, Any]) -> None:
        """Writes a drill report and logs the canonical line (error level when FAILED)."""
        directory = drills_dir(self.config)
        backup = document["backupReport"][: -len(".json")] if document["backupReport"] else "none"
        name = f"{backup}.drill-{parse_utc(document['startedAt']):%Y%m%dT%H%M%SZ}.json"
        path = directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o750)
            write_json_atomically(path, document)
        except OSError as exc:
            log.error(
                "drill report not written", job=self.job.name, error=f"{path}: {exc.strerror}"
            )
            document["status"] = FAILED
        else:
            self.result.paths.append(path)
        self.result.reports.append(document)
        level = log.info if document["status"] == SUCCESS else log.error
        level(
            "drill finished",
            job=self.job.name,
            database=document["database"],
            status=document["status"],
            tables=document["tablesChecked"],
            mismatches=len(document["mismatches"]),
            restore_s=document["restoreSeconds"],
            duration_s=document["durationSeconds"],
            backup=document["backupReport"] or None,
            report=str(path),
            error=document["errorMessage"] or None,
        )
        events.publish(  # the seam after a report: alerts, sink and metrics hear of the drill
            self.config,
            events.Event(
                kind=events.DRILL,
                job=self.job.name,
                database=document["database"],
                ok=document["status"] == SUCCESS,
                message=document["errorMessage"] or "",
                report=document,
                report_path=path if path in self.result.paths else None,
            ),
        )


def _server_major(document: dict[str, Any]) -> int | None:
    match = re.match(r"(\d+)", str(document.get("serverVersion", "")))
    return int(match.group(1)) if match else None


def table_counts(server: Server, database: str) -> dict[str, int]:
    """Returns {key: rows} of every table of `database` (exact count(*), keys as rowcounts)."""
    out = psql_script(server, database, COUNT_SQL, nul_separated=True, timeout=None)
    fields = out.split("\0")
    counts = {}
    for index in range(0, len(fields) - 1, 2):
        key, rows = fields[index : index + 2]
        counts[key.lstrip("\n")] = int(rows)
    return counts


class DrillScheduler:
    """Runs the daemon's scheduled drills in worker threads, one per job at most.

    The daemon calls `tick` from its loop; `busy()` names the jobs whose drill runs, which the
    daemon must not start a backup of (the drill holds the job's lock anyway).
    """

    def __init__(self) -> None:
        self.due: dict[str, datetime] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.stop_token = CancelToken()

    def schedule(self, config: Config, now: datetime) -> None:
        """Computes the next drill of every job that has drills enabled."""
        from db_backup.config.schedule import next_run_after

        due = {}
        for job in config.jobs:
            settings = drill_settings(config, job)
            if settings.enabled:
                due[job.name] = next_run_after(settings.schedule, job.zone(), None, now)
        self.due = due

    def busy(self) -> set[str]:
        """Returns the names of jobs whose drill is running."""
        self.threads = {n: t for n, t in self.threads.items() if t.is_alive()}
        return set(self.threads)

    def tick(self, config: Config, now: datetime, running_jobs: set[str]) -> None:
        """Starts due drills of jobs that are not running a backup."""
        from db_backup.config.schedule import next_run_after

        self.busy()
        for job in config.jobs:
            due = self.due.get(job.name)
            if due is None or now < due or job.name in running_jobs or job.name in self.threads:
                continue
            settings = drill_settings(config, job)
            self.due[job.name] = next_run_after(settings.schedule, job.zone(), now, now)
            thread = threading.Thread(
                target=self._work, args=(config, job), name=f"drill-{job.name}", daemon=True
            )
            self.threads[job.name] = thread
            log.info("drill started", job=job.name, trigger="schedule")
            thread.start()

    def next_due(self) -> datetime | None:
        """Returns the earliest scheduled drill, if any."""
        return min(self.due.values()) if self.due else None

    def _work(self, config: Config, job: JobConfig) -> None:
        from db_backup.util.locks import JobBusy, JobSetupError

        try:
            run_drill(config, job, cancel=self.stop_token, trigger="schedule")
        except JobBusy as exc:
            log.warning(
                "drill skipped: a backup of the job is running", job=job.name, error=str(exc)
            )
        except JobSetupError as exc:
            log.error("drill could not start", job=job.name, error=str(exc))
        except Exception as exc:  # a bug must not kill the scheduler; it is logged loudly
            log.exception("drill crashed", job=job.name, error=repr(exc))

    def stop(self, reason: str) -> None:
        """Stops running drills (they write FAILED drill reports) and waits for them."""
        self.stop_token.cancel(reason)
        for thread in list(self.threads.values()):
            thread.join(timeout=120)
