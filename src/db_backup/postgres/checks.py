"""Drill checks: one read-only query, sent through the driver, as a role that owns nothing.

A drill check is the operator's SQL, run in a database the drill has just restored. It never
goes through psql (so no meta-command such as `\\!` exists) and is sent as one prepared
statement with the extended query protocol (psycopg `execute(..., prepare=True)`), which the
server refuses when the text holds more than one statement. The session is read-only
(`default_transaction_read_only`, and the transaction itself is `BEGIN READ ONLY`) and has a
statement timeout. It logs in as the check role: a LOGIN role with no other attribute, member
of no role, owning nothing, which the drill's own role grants CONNECT on the restored database,
USAGE on its schemas and SELECT on its tables and sequences, and nothing else. Reading files
(`pg_read_file`), running programs (`COPY ... TO PROGRAM`) and dropping databases all need
privileges that role does not have.

`pg_read_all_data` (PostgreSQL 14+) would be simpler, but it reads every database of the
server: on a `target: server` that is the operator's other databases too. The grants here
reach the restored database only, and work the same on every version and on both targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from db_backup.postgres.server import Server
from db_backup.util.secrets import mask

# The attributes of pg_roles a check role must not have, and what each lets a session do.
FORBIDDEN_ATTRIBUTES = {
    "rolsuper": "superuser",
    "rolcreatedb": "CREATEDB",
    "rolcreaterole": "CREATEROLE",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}
ROLE_SQL = """
SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolreplication, r.rolbypassrls,
       r.rolcanlogin,
       (SELECT coalesce(array_agg(g.rolname::text ORDER BY g.rolname), '{}')
          FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
         WHERE m.member = r.oid) AS member_of,
       (SELECT count(*) FROM pg_shdepend d
         WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid
           AND d.deptype = 'o') AS owned,
       (SELECT count(*) FROM pg_database WHERE datdba = r.oid) AS databases
  FROM pg_roles r WHERE r.rolname = %s
"""
SCHEMAS_SQL = """
SELECT nspname FROM pg_namespace
 WHERE nspname <> 'information_schema' AND left(nspname, 3) <> 'pg_'
 ORDER BY 1
"""


class CheckError(Exception):
    """A check could not run or did not return; the message says why (masked, one line)."""


@dataclass(frozen=True)
class CheckLogin:
    """Who a check logs in as: the check role and its password (None: libpq's own lookup)."""

    role: str
    password: str | None


def role_problems(role: str, attributes: Mapping[str, Any] | None) -> list[str]:
    """Returns why `role` (its pg_roles row, None: missing) may not run checks; [] when it may."""
    if attributes is None:
        return [f"role {role!r} does not exist"]
    problems = [
        f"has {label}" for column, label in FORBIDDEN_ATTRIBUTES.items() if attributes[column]
    ]
    if not attributes["rolcanlogin"]:
        problems.append("cannot log in")
    if attributes["member_of"]:
        problems.append(f"is a member of {', '.join(attributes['member_of'])}")
    if attributes["owned"] or attributes["databases"]:
        problems.append("owns objects")
    return problems


def session_options(timeout_seconds: float) -> str:
    """Returns the libpq `options` of a check session: read-only, with a statement timeout."""
    milliseconds = max(int(timeout_seconds * 1000), 1)
    return (
        f"-c default_transaction_read_only=on -c statement_timeout={milliseconds} "
        f"-c lock_timeout={milliseconds} -c idle_in_transaction_session_timeout={milliseconds}"
    )


def connect_kwargs(
    server: Server, database: str, user: str, password: str | None
) -> dict[str, Any]:
    """Returns psycopg connection parameters for `user` on the drill's server.

    libpq settings come from the environment prepared for the drill's children (PGPASSFILE,
    PGSSLMODE, ...), never the operator's; host and port from the server; `password=""` keeps
    an inherited $PGPASSWORD out when no password is given.
    """
    import psycopg  # the driver is only needed when a check runs

    kwargs: dict[str, Any] = {}
    for option in psycopg.pq.Conninfo.get_defaults():
        if option.envvar is not None:
            value = server.env.get(option.envvar.decode())
            if value is not None:
                kwargs[option.keyword.decode()] = value
    kwargs.update(
        host=server.connection.host,
        port=str(server.connection.port),
        user=user,
        dbname=database,
        password=password or "",
        connect_timeout=str(server.connection.connect_timeout_seconds),
        application_name="db-backup/drill-check",
    )
    return kwargs


def describe(exc: BaseException) -> str:
    """Returns a one-line, masked description of a driver error."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return mask(text or type(exc).__name__)


def prepare_check_role(server: Server, database: str, role: str, create: bool) -> None:
    """Makes `role` able to read `database` and nothing more; raises CheckError otherwise.

    Connects as the drill's own role. With `create` (the throwaway cluster) the role is created
    when missing; on a configured server the operator made it. Either way a role with any
    attribute, membership or ownership is refused before anything is granted.
    """
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    kwargs = connect_kwargs(server, database, server.connection.user, None)
    try:
        with psycopg.connect(**kwargs, autocommit=True, row_factory=dict_row) as conn:
            found = conn.execute(ROLE_SQL, (role,)).fetchone()
            if found is None and create:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
                found = conn.execute(ROLE_SQL, (role,)).fetchone()
            problems = role_problems(role, found)
            if problems:
                raise CheckError(
                    f"the check role {role!r} is not an unprivileged role that owns nothing: "
                    f"{'; '.join(problems)} (see drill.check_user)"
                )
            who = sql.Identifier(role)
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), who)
            )
            for row in conn.execute(SCHEMAS_SQL).fetchall():
                schema = sql.Identifier(row["nspname"])
                for statement in (
                    "GRANT USAGE ON SCHEMA {} TO {}",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
                    "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}",
                ):
                    conn.execute(sql.SQL(statement).format(schema, who))
    except psycopg.Error as exc:
        raise CheckError(f"the check role could not be prepared: {describe(exc)}") from None


def run_check(
    server: Server, database: str, login: CheckLogin, query: str, timeout_seconds: float
) -> list[tuple[Any, ...]] | None:
    """Runs one check query; returns its first two rows (None: it returned no result set).

    Raises CheckError for anything the server refused (a second statement, a write, a
    privilege the role lacks, the statement timeout) or a connection that failed.
    """
    import psycopg

    kwargs = connect_kwargs(server, database, login.role, login.password)
    kwargs["options"] = session_options(timeout_seconds)
    try:
        with psycopg.connect(**kwargs, prepare_threshold=0) as conn:
            conn.read_only = True  # BEGIN READ ONLY, beside default_transaction_read_only
            with conn.cursor() as cur:
                # prepare=True: Parse/Bind/Execute, one statement only; no placeholders are
                # parsed (no parameters), so `%` in the query stays as written.
                cur.execute(query.encode("utf-8"), prepare=True)
                rows = cur.fetchmany(2) if cur.description is not None else None
            conn.rollback()
            return rows
    except psycopg.Error as exc:
        raise CheckError(describe(exc)) from None
