"""The sink's tables: the shipped Flyway migrations, applied idempotently under an advisory lock."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import psycopg
import structlog

from db_backup.observe.jobtable.settings import SinkError, SinkSettings, first_line

log = structlog.get_logger("db_backup.observe.jobtable")

# pg_advisory_xact_lock key for the migrations: "dbbackup" in ASCII, so every host agrees.
MIGRATION_LOCK = int.from_bytes(b"dbbackup", "big") & 0x7FFF_FFFF_FFFF_FFFF
V2_COLUMNS = (
    "job",
    "hostname",
    "host",
    "port",
    "tool",
    "trigger",
    "report_file",
    "schema_version",
    "report",
)
MIGRATION_NAME = re.compile(r"^V(\d+)__[A-Za-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """Returns the shipped migrations as (version, file name, SQL), in version order."""
    found = []
    for entry in resources.files("db_backup").joinpath("sql").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def schema_ready(conn: psycopg.Connection[Any]) -> bool:
    """Returns whether db_backup_job has V2's columns and db_backup_drill exists."""
    row = conn.execute(
        "SELECT to_regclass('db_backup_drill') IS NOT NULL AND "
        "(SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'db_backup_job' AND column_name = ANY(%s)) = %s",
        (list(V2_COLUMNS), len(V2_COLUMNS)),
    ).fetchone()
    conn.commit()
    return bool(row and row[0])


def migrate(conn: psycopg.Connection[Any]) -> list[str]:
    """Applies every shipped migration in one transaction under an advisory lock.

    Every file is idempotent, so a second host (or a second run) applying them is harmless;
    the lock only keeps two hosts from running the same DDL at once. Returns the file names.
    """
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        for _, name, sql in migrations():
            conn.execute(sql.encode("utf-8"))
            applied.append(name)
    return applied


def ensure_schema(conn: psycopg.Connection[Any], settings: SinkSettings, target: str) -> None:
    """Makes sure the tables are there (applying the migrations if allowed); raises SinkError."""
    try:
        if schema_ready(conn):
            return
        if not settings.migrate:
            raise SinkError(
                f"database sink {target}: table db_backup_job lacks the V2 columns or "
                "db_backup_drill is missing; apply /usr/share/db-backup/sql/ with Flyway, "
                "or set sink.migrate: true"
            )
        applied = migrate(conn)
    except psycopg.Error as exc:
        raise SinkError(
            f"database sink {target}: cannot apply the migrations: {first_line(exc)}"
        ) from None
    log.info("database sink migrated", target=target, migrations=", ".join(applied))
