"""PostgreSQL client programs: argv building, the private password file, discovery, versions."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from db_backup.config import DumpSelection, JobConfig
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import CommandError, StreamingChild, child_env, run
from db_backup.util.fsutil import disk_size, private_file
from db_backup.util.names import host_label
from db_backup.util.secrets import resolve

__all__ = ["host_label"]

EXTENSIONS = {"custom": ".dump", "plain": ".sql", "directory": ".dump.d"}
FORMAT_FLAGS = {"custom": "c", "plain": "p", "directory": "d"}


def extension(dump_format: str) -> str:
    """Returns the file name suffix of a dump in `dump_format`."""
    return EXTENSIONS[dump_format]


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def connection_env(job: JobConfig, private_dir: Path | None = None) -> Iterator[dict[str, str]]:
    """Yields the environment for libpq children; a referenced password goes in a private file.

    The password never appears on a command line or in the environment: it is written to a
    0600 password file in a 0700 directory that exists only while the run does. Give
    `private_dir` (under the state directory, cleared by the next run of the same job) so that
    even a SIGKILL leaves the file where only the service user can reach it and the next run
    removes it; without it a fresh directory under $TMPDIR is used.
    """
    extra = {
        "PGCONNECT_TIMEOUT": str(job.connection.connect_timeout_seconds),
        "PGAPPNAME": f"db-backup/{job.name}",
    }
    if job.connection.password is None:
        yield child_env(extra)
        return
    password = resolve(job.connection.password, f"jobs.{job.name}.connection.password")
    line = f"*:*:*:{_pgpass_escape(job.connection.user)}:{_pgpass_escape(password)}\n"
    with private_file(private_dir, "pgpass", line, "db-backup-pgpass-") as path:
        yield child_env({**extra, "PGPASSFILE": str(path)})


def _conn_args(job: JobConfig) -> list[str]:
    c = job.connection
    return ["--host", c.host, "--port", str(c.port), "--username", c.user, "--no-password"]


def _dbname_arg(database: str) -> str:
    # A name with "=" would be read as a connection string: always pass one, quoted.
    quoted = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"--dbname=dbname='{quoted}'"


def _query(job: JobConfig, env: dict[str, str], database: str, sql: str) -> str:
    """Runs one SQL statement with psql in `database` and returns its unaligned output."""
    return run(
        [
            "psql",
            *_conn_args(job),
            _dbname_arg(database),
            "--no-psqlrc",
            "--tuples-only",
            "--no-align",
            "--set=ON_ERROR_STOP=1",
            "--command",
            sql,
        ],
        env=env,
    )


def discover_databases(job: JobConfig, env: dict[str, str]) -> list[str]:
    """Returns every connectable non-template database, minus the job's exclusions.

    Names travel hex-encoded, one per line, so a name holding a newline, a tab or any other
    character PostgreSQL allows comes back whole.
    """
    out = _query(
        job,
        env,
        "postgres",
        "SELECT encode(convert_to(datname, 'UTF8'), 'hex') FROM pg_database "
        "WHERE datallowconn AND NOT datistemplate ORDER BY datname",
    )
    names = [bytes.fromhex(line).decode("utf-8", "replace") for line in out.split() if line]
    return [n for n in names if n not in job.exclude_databases]


def versions(job: JobConfig, env: dict[str, str], databases: list[str]) -> tuple[str, str]:
    """Returns (pg_dump version, server version), asking the first of `databases` that answers.

    Connecting also proves the server is there; one database that cannot be reached (dropped,
    no CONNECT privilege) must not stop the others, so the next one is tried.
    """
    dump_version = run(["pg_dump", "--version"], env=env).strip()
    error: CommandError | None = None
    for database in databases or ["postgres"]:
        try:
            return dump_version, _query(job, env, database, "SHOW server_version").strip()
        except CommandError as exc:
            error = exc
    assert error is not None
    raise error


def database_size(job: JobConfig, env: dict[str, str], database: str) -> int | None:
    """Returns pg_database_size of `database`, or None if it cannot be read.

    Remote targets use it only as a hint for the part size; a failure here is never fatal
    (pg_dump itself will report a real connection problem).
    """
    try:
        return int(_query(job, env, database, "SELECT pg_database_size(current_database())"))
    except (CommandError, OSError, ValueError):
        return None


def dump_argv(
    job: JobConfig, database: str, output: Path | None = None, snapshot: str | None = None
) -> list[str]:
    """Returns the pg_dump argv for `database` (stdout unless `output` is given).

    `snapshot` is an id from pg_export_snapshot() that pg_dump imports instead of taking its own.
    """
    argv = ["pg_dump", *_conn_args(job), f"--format={FORMAT_FLAGS[job.dump.format]}"]
    if job.dump.format != "plain":
        argv.append(f"--compress={job.dump.compression}")
    if job.dump.format == "directory":
        argv.append(f"--jobs={job.dump.jobs}")
    if output is not None:
        argv.append(f"--file={output}")
    if snapshot is not None:
        argv.append(f"--snapshot={snapshot}")
    argv.extend(selection_args(job.dump_selection(database)))
    argv.append(_dbname_arg(database))
    return argv


# pg_dump's option of each pattern key of a dump selection, in the order they are given.
PATTERN_FLAGS = (
    ("schemas", "--schema"),
    ("exclude_schemas", "--exclude-schema"),
    ("tables", "--table"),
    ("exclude_tables", "--exclude-table"),
    ("exclude_table_data", "--exclude-table-data"),
)
SWITCHES = (
    ("no_owner", "--no-owner"),
    ("no_privileges", "--no-privileges"),
    ("no_comments", "--no-comments"),
)


def selection_args(selection: DumpSelection) -> list[str]:
    """Returns pg_dump's arguments for `selection`, each pattern glued to its option (`--table=x`)
    so that no value can ever be read as an option of its own."""
    args = [
        f"{flag}={pattern}" for key, flag in PATTERN_FLAGS for pattern in getattr(selection, key)
    ]
    args += [flag for key, flag in SWITCHES if getattr(selection, key)]
    if selection.lock_wait_timeout is not None:
        # pg_dump sets it as statement_timeout while it takes its locks: milliseconds.
        milliseconds = int(selection.lock_wait_timeout.total_seconds() * 1000)
        args.append(f"--lock-wait-timeout={milliseconds}")
    return args


_LOCK_QUERY = re.compile(r"LOCK TABLE (.+?) IN ACCESS SHARE MODE")


def explain_dump_error(message: str, selection: DumpSelection) -> str:
    """Returns `message` (pg_dump's failure) with what it means in front when pg_dump gave up
    waiting for a table's lock after `dump.lock_wait_timeout`; else `message` unchanged."""
    timeout = selection.lock_wait_timeout
    lock = _LOCK_QUERY.search(message)
    if timeout is None or lock is None or "statement timeout" not in message:
        return message
    return (
        f"pg_dump could not lock table {lock.group(1)} within dump.lock_wait_timeout "
        f"({round(timeout.total_seconds())}s): another session holds a conflicting lock on it "
        "(ACCESS EXCLUSIVE: ALTER TABLE, TRUNCATE, VACUUM FULL, ...); no dump was made. "
        f"{message}"
    )


def start_dump(
    job: JobConfig, env: dict[str, str], database: str, snapshot: str | None = None
) -> StreamingChild:
    """Starts pg_dump writing `database` to its stdout (in `snapshot`, when given)."""
    return StreamingChild(dump_argv(job, database, snapshot=snapshot), env=env)


def globals_argv(job: JobConfig, path: Path | None = None) -> list[str]:
    """Returns the pg_dumpall --globals-only argv (stdout unless `path` is given)."""
    argv = ["pg_dumpall", *_conn_args(job), "--globals-only", "--dbname=dbname=postgres"]
    if path is not None:
        argv.append(f"--file={path}")
    return argv


def dump_globals(job: JobConfig, env: dict[str, str], path: Path) -> None:
    """Writes roles and tablespaces (pg_dumpall --globals-only) to `path`, mode 0600."""
    path.touch(mode=0o600)
    run(globals_argv(job, path), env=env)


def start_globals(job: JobConfig, env: dict[str, str]) -> StreamingChild:
    """Starts pg_dumpall --globals-only writing to its stdout (to be encrypted on the way)."""
    return StreamingChild(globals_argv(job), env=env)


def dump_to_directory(
    job: JobConfig,
    env: dict[str, str],
    database: str,
    path: Path,
    cancel: CancelToken,
    snapshot: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Runs pg_dump in directory format (-Fd -j N) into `path` (empty or not there yet).

    `progress` gets the bytes in the directory whenever they grew (checked about every 0.5 s):
    pg_dump writes nothing to stdout here, and the daemon's stall watch needs to see the dump
    move.
    """
    child = StreamingChild(dump_argv(job, database, path, snapshot), env=env)
    written = 0

    def look() -> None:
        nonlocal written
        size = disk_size(path)
        if size > written and progress is not None:
            written = size
            progress(size)

    try:
        for _ in child.chunks(64 * 1024, cancel, look):
            pass
        child.check()
    except BaseException:
        child.terminate()
        raise
