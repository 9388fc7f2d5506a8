"""The sink's settings and its connection: the `sink:` section, the DSN, messages without secrets."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from db_backup.config import SinkSettings
from db_backup.util.secrets import SecretError, mask, register, resolve

STATEMENT_TIMEOUT_SECONDS = 120  # one batch or one migration; bounds a hung server too


class SinkError(Exception):
    """The sink cannot be used; the message names the server (never the password) and why."""


def describe_dsn(dsn: str) -> str:
    """Returns `host:port/dbname` of a connection string, for messages (never the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a connection string that libpq cannot parse)"
    host = str(params.get("host") or params.get("hostaddr") or "the local socket")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def connect(settings: SinkSettings) -> tuple[psycopg.Connection[Any], str]:
    """Returns a connection to the sink's database and its description; raises SinkError."""
    try:
        dsn = resolve(settings.dsn, "sink.dsn")
    except SecretError as exc:
        raise SinkError(str(exc)) from None
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.ProgrammingError:
        # libpq's message quotes the string, password and all: say where it is, not what it is.
        raise SinkError(
            f"sink.dsn ({settings.dsn.describe()}) is not a libpq connection string "
            "(key=value pairs or a postgresql:// URI)"
        ) from None
    if password:
        register(str(password))
    target = describe_dsn(dsn)
    try:
        conn = psycopg.connect(
            dsn,
            connect_timeout=settings.connect_timeout_seconds,
            application_name="db-backup",
            # A server that vanishes mid-statement, or a table locked by the platform, must not
            # hold a run (or its end) for long: the report simply waits in the outbox.
            keepalives=1,
            keepalives_idle=30,
            tcp_user_timeout=STATEMENT_TIMEOUT_SECONDS * 1000,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_SECONDS}s",
        )
    except psycopg.Error as exc:
        raise SinkError(f"database sink {target}: cannot connect: {first_line(exc)}") from None
    return conn, target


def first_line(exc: BaseException) -> str:
    """Returns the first line of an error's message, masked (libpq's can quote a DSN)."""
    text = str(exc).strip().splitlines()
    return mask(text[0] if text else type(exc).__name__)
