"""The server side of a restore or drill: one target server, psql scripts, databases.

Everything here talks to a PostgreSQL server through `psql` (and runs `pg_restore`-like long
children); failures surface as util.execute.CommandError, which the restore and the drill turn
into their own messages. Database names travel as psql variables (`:"name"`, `:'name'`), never
spliced into SQL.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from db_backup.config import Config, Connection, JobConfig
from db_backup.postgres import tools as pg
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import StreamingChild, run

DEFAULT_CONNECTION = Connection("/var/run/postgresql", 5432, "postgres", None, 10)
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


@dataclass(frozen=True)
class Server:
    """Where a restore goes: a connection and the environment for libpq children."""

    connection: Connection
    env: dict[str, str]

    def conn_args(self) -> list[str]:
        """Returns the libpq connection options (never a password) for psql and pg_restore."""
        c = self.connection
        return ["--host", c.host, "--port", str(c.port), "--username", c.user, "--no-password"]

    def describe(self) -> str:
        """Returns e.g. `postgres@/var/run/postgresql:5432` for messages."""
        c = self.connection
        return f"{c.user}@{c.host}:{c.port}"


@contextlib.contextmanager
def server_env(config: Config, connection: Connection, job: JobConfig | None) -> Iterator[Server]:
    """Yields the target server with a libpq environment (password through pg.connection_env)."""
    template = job or config.jobs[0]
    stand_in = dataclasses.replace(template, name=template.name, connection=connection)
    with pg.connection_env(stand_in) as env:
        yield Server(connection, env)


def dbname_arg(database: str) -> str:
    """Returns a --dbname option that cannot be read as a connection string."""
    quoted = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"--dbname=dbname='{quoted}'"


def psql_script(
    server: Server,
    database: str,
    script: str,
    variables: dict[str, str] | None = None,
    timeout: float | None = 600,
    nul_separated: bool = False,
) -> str:
    """Runs a SQL script (stdin, ON_ERROR_STOP) with psql variables; returns unaligned output.

    With `nul_separated`, fields and rows are separated by NUL bytes (names may hold any
    other character, newlines and `|` included).
    """
    argv = [
        "psql",
        *server.conn_args(),
        dbname_arg(database),
        "--no-psqlrc",
        "--tuples-only",
        "--no-align",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
    ]
    if nul_separated:
        argv += ["--field-separator-zero", "--record-separator-zero"]
    for name, value in (variables or {}).items():
        argv.append(f"--set={name}={value}")
    argv += ["--file", "-"]
    return run(argv, env=server.env, timeout=timeout, input_bytes=script.encode("utf-8"))


def run_child(
    argv: list[str], env: dict[str, str], cancel: CancelToken | None, stdin: int | None = None
) -> None:
    """Runs a long child (pg_restore, psql -f) to the end; a cancel stops it; raises on failure.

    `stdin` is a file descriptor the child reads (a decrypted stream), else nothing.
    """
    child = StreamingChild(argv, env=env, stdin=stdin)
    try:
        for _ in child.chunks(64 * 1024, cancel):
            pass
        child.check()
    except BaseException:
        child.terminate()
        raise


def server_version(server: Server) -> str:
    """Returns the server's `server_version` (e.g. `16.4 (Debian 16.4-1)`)."""
    return psql_script(server, "postgres", "SHOW server_version;\n").strip()


def database_exists(server: Server, database: str) -> bool:
    """Returns whether `database` exists on the server."""
    out = psql_script(
        server,
        "postgres",
        "SELECT 1 FROM pg_database WHERE datname = :'name';\n",
        {"name": database},
    )
    return out.strip() == "1"


def database_is_empty(server: Server, database: str) -> bool:
    """Returns whether `database` holds no user relation, function, type or extra schema."""
    out = psql_script(
        server,
        database,
        "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "          AND n.nspname NOT LIKE 'pg\\_toast%') "
        "     + (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN "
        "        ('pg_catalog', 'information_schema', 'public') "
        "        AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp%');\n",
    )
    return out.strip() == "0"


def create_database(server: Server, database: str) -> None:
    """Creates `database` from template0 (so nothing of template1 mixes in)."""
    psql_script(
        server, "postgres", 'CREATE DATABASE :"name" TEMPLATE template0;\n', {"name": database}
    )


def drop_database(server: Server, database: str) -> None:
    """Drops `database`, ending its sessions first."""
    psql_script(
        server, "postgres", 'DROP DATABASE IF EXISTS :"name" WITH (FORCE);\n', {"name": database}
    )


def drop_own_database(server: Server, database: str) -> bool:
    """Drops `database` only if the connected role owns it; returns False when another does.

    A drill's role on a configured server drops its own scratch databases and nothing else,
    whatever privileges the operator gave it. A database that is not there counts as dropped.
    """
    owned = psql_script(
        server,
        "postgres",
        "SELECT pg_catalog.pg_get_userbyid(datdba) = current_user FROM pg_catalog.pg_database"
        " WHERE datname = :'name';\n",
        {"name": database},
    ).strip()
    if owned == "":
        return True
    if owned != "t":
        return False
    drop_database(server, database)
    return True


def table_counts(server: Server, database: str) -> dict[str, int]:
    """Returns {key: rows} of every table of `database` (exact count(*), keys as rowcounts)."""
    out = psql_script(server, database, COUNT_SQL, nul_separated=True, timeout=None)
    fields = out.split("\0")
    counts = {}
    for index in range(0, len(fields) - 1, 2):
        key, rows = fields[index : index + 2]
        counts[key.lstrip("\n")] = int(rows)
    return counts
