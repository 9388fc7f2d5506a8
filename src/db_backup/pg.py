"""PostgreSQL client programs: argv building, the private password file, discovery, versions."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from db_backup.config import JobConfig
from db_backup.execute import CancelToken, CommandError, StreamingChild, child_env, run
from db_backup.report import host_label
from db_backup.secrets import resolve
from db_backup.storage.base import StoredObject
from db_backup.storage.local import fsync_dir, temp_name

__all__ = ["host_label"]

EXTENSIONS = {"custom": ".dump", "plain": ".sql", "directory": ".dump.d"}
FORMAT_FLAGS = {"custom": "c", "plain": "p", "directory": "d"}


def extension(dump_format: str) -> str:
    """Returns the file name suffix of a dump in `dump_format`."""
    return EXTENSIONS[dump_format]


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def connection_env(job: JobConfig) -> Iterator[dict[str, str]]:
    """Yields the environment for libpq children; a referenced password goes in a private file.

    The password never appears on a command line or in the environment: it is written to a
    0600 password file in a 0700 directory that exists only while the run does.
    """
    extra = {
        "PGCONNECT_TIMEOUT": str(job.connection.connect_timeout_seconds),
        "PGAPPNAME": f"db-backup/{job.name}",
    }
    if job.connection.password is None:
        yield child_env(extra)
        return
    password = resolve(job.connection.password, f"jobs.{job.name}.connection.password")
    directory = tempfile.mkdtemp(prefix="db-backup-pgpass-")
    try:
        path = Path(directory) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(
                f"*:*:*:{_pgpass_escape(job.connection.user)}:{_pgpass_escape(password)}\n"
            )
        yield child_env({**extra, "PGPASSFILE": str(path)})
    finally:
        shutil.rmtree(directory, ignore_errors=True)


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
    """Returns every connectable non-template database, minus the job's exclusions."""
    out = _query(
        job,
        env,
        "postgres",
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
    )
    names = [line for line in out.splitlines() if line]
    return [n for n in names if n not in job.exclude_databases]


def versions(job: JobConfig, env: dict[str, str], database: str) -> tuple[str, str]:
    """Returns (pg_dump version, server version); connecting also proves the server is there."""
    dump_version = run(["pg_dump", "--version"], env=env).strip()
    server = _query(job, env, database, "SHOW server_version").strip()
    return dump_version, server


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
    argv.append(_dbname_arg(database))
    return argv


def start_dump(
    job: JobConfig, env: dict[str, str], database: str, snapshot: str | None = None
) -> StreamingChild:
    """Starts pg_dump writing `database` to its stdout (in `snapshot`, when given)."""
    return StreamingChild(dump_argv(job, database, snapshot=snapshot), env=env)


def dump_globals(job: JobConfig, env: dict[str, str], path: Path) -> None:
    """Writes roles and tablespaces (pg_dumpall --globals-only) to `path`, mode 0600."""
    argv = [
        "pg_dumpall",
        *_conn_args(job),
        "--globals-only",
        "--dbname=dbname=postgres",
        f"--file={path}",
    ]
    path.touch(mode=0o600)
    run(argv, env=env)


def dump_directory(
    job: JobConfig,
    env: dict[str, str],
    database: str,
    data_dir: Path,
    dump_name: str,
    cancel: CancelToken,
    snapshot: str | None = None,
) -> tuple[str, int, StoredObject, str]:
    """Dumps in directory format (-Fd -j N) through a temporary directory.

    Returns (checksum, size, stored object, manifest): the manifest has a `sha256  <dir>/<file>`
    line per file, so `sha256sum -c` run in the data directory checks it; the checksum is the
    manifest's own sha256.
    """
    temp = data_dir / temp_name(job.name, dump_name)
    final = data_dir / dump_name
    shutil.rmtree(temp, ignore_errors=True)
    child = StreamingChild(dump_argv(job, database, temp, snapshot), env=env)
    try:
        for _ in child.chunks(64 * 1024, cancel):
            pass
        child.check()
        manifest = []
        size = 0
        for path in sorted(temp.rglob("*")):
            if path.is_file():
                digest = hashlib.sha256()
                with path.open("rb") as handle:
                    while block := handle.read(1024 * 1024):
                        digest.update(block)
                size += path.stat().st_size
                manifest.append(f"{digest.hexdigest()}  {dump_name}/{path.relative_to(temp)}\n")
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        os.chmod(temp, 0o700)
        os.replace(temp, final)
        fsync_dir(data_dir)
    except BaseException:
        child.terminate()
        shutil.rmtree(temp, ignore_errors=True)
        raise
    text = "".join(manifest)
    sha256 = hashlib.sha256(text.encode()).hexdigest()
    return sha256, size, StoredObject(str(final), size, {"manifestSha256": sha256}), text
