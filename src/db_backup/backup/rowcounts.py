"""Per-table row counts recorded with a dump, taken in the dump's own snapshot.

`exact` mode opens a REPEATABLE READ transaction, exports its snapshot with
`pg_export_snapshot()`, hands the id to `pg_dump --snapshot=<id>`, and counts every table that
pg_dump dumps in that same transaction, in a thread of its own while pg_dump runs. The exporting
transaction stays open until the dump has ended: pg_dump (and, in the directory format, each of
its `-j` workers) imports the snapshot when it starts, and an import fails once the exporting
transaction is gone. That costs the server nothing pg_dump does not already cost: pg_dump holds
the same snapshot for the whole dump.

`estimate` reads `pg_class.reltuples` (no snapshot, no scan); `off` records nothing.

Counts that cannot be taken never fail a good dump: the report says `rowCounts: "failed"` with
the reason in `rowCountsError`, and a warning is logged. A snapshot that cannot be exported (the
connection fails, say) leaves pg_dump to take its own snapshot, as it does without row counts.

Report keys are `format('%I.%I', schema, table)` as the dumped server computes it, the same as
`quote_ident(schema) || '.' || quote_ident(table)`: `public.orders`, `"Sales"."Q1 ""x"" y"`.
A name that needs quoting is quoted, so a dot inside a name never reads as the separator.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from db_backup.config import DumpSelection, JobConfig, patterns
from db_backup.reports.model import Report
from db_backup.util.cancel import CancelToken
from db_backup.util.secrets import mask

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

# psycopg is imported where a connection is made: importing it costs a few hundred ms, which
# commands that never count (status, check-config, row_counts: off) should not pay.

log = structlog.get_logger("db_backup.backup.rowcounts")

EXACT = "exact"
ESTIMATE = "estimate"
OFF = "off"
FAILED = "failed"

# The session settings pg_dump uses for its own connection, so counting sees what pg_dump
# sees (row_security off: a table that RLS would filter is an error, not a smaller number) and
# no server-side timeout cuts it short. One backend, no parallel workers: the counts share the
# machine with pg_dump and must not slow it.
SESSION_OPTIONS = (
    "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 "
    "-c row_security=off -c max_parallel_workers_per_gather=0"
)
CANCEL_JOIN_SECONDS = 10.0

# Every table whose rows pg_dump writes with COPY: ordinary tables and leaf partitions (relkind
# 'r'), outside the system schemas, and not members of an extension (pg_dump leaves those to
# CREATE EXTENSION). Partitioned parents hold no rows of their own; views, materialized views
# (refreshed on restore, not copied), foreign tables and sequences have no rows in a dump.
TABLES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname), n.nspname, c.relname, c.reltuples, {with_data}
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname <> 'information_schema'
  AND left(n.nspname, 3) <> 'pg_'
  AND NOT EXISTS (
    SELECT FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.objid = c.oid AND d.deptype = 'e')
  AND {included}
ORDER BY 1
"""
ANY_NAME = "^(.*)$"  # a pattern part that matches every name: pg_dump adds no condition for it


@dataclass(frozen=True)
class RowCounts:
    """What was recorded: the mode, {table key: rows} (None when nothing), and why it failed."""

    mode: str
    tables: dict[str, int | None] | None = None
    error: str = ""

    def record(self, report: Report) -> None:
        """Writes these counts into the report's `rowCounts`, `tables` and `rowCountsError`."""
        report.row_counts = self.mode
        report.tables = dict(self.tables) if self.tables is not None else None
        report.row_counts_error = self.error


def connect_kwargs(
    job: JobConfig, env: Mapping[str, str], database: str, purpose: str = "row-counts"
) -> dict[str, Any]:
    """Returns psycopg connection parameters that reach the server the way pg_dump does.

    libpq settings come from the environment prepared for pg_dump (PGPASSFILE, PGSSLMODE, ...),
    host, port and user from the job, never a password: `password=""` keeps an inherited
    $PGPASSWORD out, as the children's environment does, and the password file is used.
    """
    import psycopg

    kwargs: dict[str, Any] = {}
    for option in psycopg.pq.Conninfo.get_defaults():
        if option.envvar is not None:
            value = env.get(option.envvar.decode())
            if value is not None:
                kwargs[option.keyword.decode()] = value
    connection = job.connection
    kwargs.update(
        host=connection.host,
        port=str(connection.port),
        user=connection.user,
        dbname=database,
        password="",
        connect_timeout=str(connection.connect_timeout_seconds),
        application_name=f"db-backup/{job.name}/{purpose}",
        options=f"{kwargs.get('options', '')} {SESSION_OPTIONS}".strip(),
    )
    return kwargs


def describe(exc: BaseException) -> str:
    """Returns a one-line, masked description of a database error for reports and logs."""
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return mask(text or type(exc).__name__)


def list_tables(
    conn: psycopg.Connection[Any], selection: DumpSelection | None = None
) -> list[tuple[str, str, str, float, bool]]:
    """Returns (key, schema, table, reltuples, with data) of every table whose definition
    pg_dump dumps under `selection` (None: the whole database), by key; `with data` is false
    for a table whose rows `exclude_table_data` leaves out."""
    from psycopg import sql

    selection = selection or DumpSelection()
    query = sql.SQL(TABLES_SQL).format(
        included=_included(selection),
        with_data=sql.SQL("NOT ({})").format(_any_table(selection.exclude_table_data)),
    )
    with conn.cursor() as cur:
        cur.execute(query)
        return [(str(k), str(s), str(t), float(r), bool(d)) for k, s, t, r, d in cur.fetchall()]


def _included(selection: DumpSelection) -> sql.Composable:
    """Returns the condition on `c` and `n` of the tables pg_dump dumps under `selection`:
    with `tables`, those it names (schemas then play no part, as in pg_dump); else those in the
    `schemas` (all when none) not in `exclude_schemas`; never those of `exclude_tables`."""
    from psycopg import sql

    if selection.tables:
        chosen = _any_table(selection.tables)
    else:
        chosen = sql.SQL("NOT ({})").format(_any_schema(selection.exclude_schemas))
        if selection.schemas:
            chosen = sql.SQL("({}) AND {}").format(_any_schema(selection.schemas), chosen)
    return sql.SQL("({}) AND NOT ({})").format(chosen, _any_table(selection.exclude_tables))


def _matches(column: str, regex: str) -> sql.Composable:
    """Returns `column ~ regex` as pg_dump writes it (the server's regex engine, default collation)."""
    from psycopg import sql

    return sql.SQL("{} OPERATOR(pg_catalog.~) {} COLLATE pg_catalog.default").format(
        sql.SQL(column), sql.Literal(regex)
    )


def _any_table(found: tuple[str, ...]) -> sql.Composable:
    """Returns the condition that a table matches one of the table patterns `found` (none: false).

    An unqualified pattern names the tables visible on the search path, as pg_dump's does.
    """
    from psycopg import sql

    alternatives: list[sql.Composable] = []
    for pattern in found:
        parts = patterns.regexes(pattern)
        terms: list[sql.Composable] = [sql.SQL("true")]
        if parts.name != ANY_NAME:
            terms.append(_matches("c.relname", parts.name))
        if parts.schema is None:
            terms.append(sql.SQL("pg_catalog.pg_table_is_visible(c.oid)"))
        elif parts.schema != ANY_NAME:
            terms.append(_matches("n.nspname", parts.schema))
        alternatives.append(sql.SQL("({})").format(sql.SQL(" AND ").join(terms)))
    return sql.SQL(" OR ").join(alternatives) if alternatives else sql.SQL("false")


def _any_schema(found: tuple[str, ...]) -> sql.Composable:
    """Returns the condition that a table's schema matches one of the schema patterns `found`."""
    from psycopg import sql

    alternatives = [_matches("n.nspname", patterns.regexes(p).name) for p in found]
    return sql.SQL(" OR ").join(alternatives) if alternatives else sql.SQL("false")


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    """Returns count(*) of the table's own rows (ONLY: not those of inheritance children)."""
    from psycopg import sql

    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def exact_counts(
    conn: psycopg.Connection[Any], selection: DumpSelection | None = None
) -> dict[str, int | None]:
    """Returns {key: rows} of every dumped table, counted in the connection's transaction.

    Each count runs in a savepoint that is rolled back, which releases its table lock at once:
    counting never holds a lock beyond the one table it is reading, and never holds as many
    locks as pg_dump does (a second full set could exhaust max_locks_per_transaction). The
    transaction, and with it the snapshot, stays. On an autocommit connection (a restored
    database, say) each count is a transaction of its own and no savepoint is needed.
    """
    counts: dict[str, int | None] = {}
    in_transaction = not conn.autocommit
    for key, schema, table, _, with_data in list_tables(conn, selection):
        if not with_data:
            counts[key] = 0  # pg_dump writes its definition, no rows: a restore has it empty
            continue
        if in_transaction:
            conn.execute("SAVEPOINT db_backup_row_count")
        counts[key] = count_rows(conn, schema, table)
        if in_transaction:
            conn.execute("ROLLBACK TO SAVEPOINT db_backup_row_count")
            conn.execute("RELEASE SAVEPOINT db_backup_row_count")
    return counts


def estimated_counts(
    conn: psycopg.Connection[Any], selection: DumpSelection | None = None
) -> dict[str, int | None]:
    """Returns {key: pg_class.reltuples rounded}; None for a table never vacuumed or analyzed,
    0 for one whose rows the selection leaves out."""
    return {
        key: (round(r) if r >= 0 else None) if with_data else 0
        for key, _, _, r, with_data in list_tables(conn, selection)
    }


class DumpSnapshot:
    """The row counts of one dump: `snapshot_id` for pg_dump, then `record` after the dump."""

    def __init__(self, job: JobConfig, env: Mapping[str, str], database: str) -> None:
        self.job = job
        self.env = env
        self.database = database
        self.mode = job.row_counts
        self.selection = job.dump_selection(database)
        self.snapshot_id: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._result: RowCounts | None = None

    def open(self) -> None:
        """Exports the snapshot and starts counting (exact), or reads the estimates."""
        if self.mode == OFF:
            self._result = RowCounts(OFF)
        elif self.mode == ESTIMATE:
            self._result = self._estimate()
        else:
            self._export()

    def _fail(self, reason: str, event: str) -> RowCounts:
        log.warning(event, job=self.job.name, database=self.database, reason=reason)
        return RowCounts(FAILED, None, reason)

    def _estimate(self) -> RowCounts:
        import psycopg

        try:
            with psycopg.connect(
                **connect_kwargs(self.job, self.env, self.database), autocommit=True
            ) as conn:
                return RowCounts(ESTIMATE, estimated_counts(conn, self.selection))
        except psycopg.Error as exc:
            return self._fail(f"estimates not read: {describe(exc)}", "row counts not recorded")

    def _export(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(**connect_kwargs(self.job, self.env, self.database))
        except psycopg.Error as exc:
            self._result = self._fail(
                f"no snapshot exported, pg_dump took its own: {describe(exc)}",
                "row counts not recorded; dumping without an exported snapshot",
            )
            return
        try:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            row = conn.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
            assert row is not None
            self.snapshot_id = str(row[0])
        except psycopg.Error as exc:
            conn.close()
            self._result = self._fail(
                f"no snapshot exported, pg_dump took its own: {describe(exc)}",
                "row counts not recorded; dumping without an exported snapshot",
            )
            return
        self._conn = conn
        self._thread = threading.Thread(
            target=self._count, name=f"row-counts-{self.job.name}", daemon=True
        )
        self._thread.start()

    def _count(self) -> None:
        assert self._conn is not None
        try:
            self._result = RowCounts(EXACT, exact_counts(self._conn, self.selection))
        except Exception as exc:  # the thread's boundary: whatever happened, the dump goes on
            self._result = RowCounts(FAILED, None, f"counting failed: {describe(exc)}")

    def result(self, cancel: CancelToken | None = None) -> RowCounts:
        """Returns the counts once counting has finished (call it after the dump has ended).

        A run stopped while counting is still going (job timeout, daemon stop) cancels the
        count and returns a failed result saying why.
        """
        thread = self._thread
        stopped = ""
        while thread is not None and thread.is_alive():
            thread.join(0.5)
            if cancel is not None and cancel.is_cancelled() and thread.is_alive():
                stopped = cancel.reason
                self._stop()
                break
        if stopped:
            result = RowCounts(FAILED, None, f"counting stopped: {stopped}")
        else:
            result = self._result or RowCounts(FAILED, None, "counting did not finish")
        if result.mode == FAILED and self._thread is not None:
            log.warning(
                "row counts not recorded",
                job=self.job.name,
                database=self.database,
                reason=result.error,
            )
        return result

    def record(self, report: Report, cancel: CancelToken | None = None) -> None:
        """Waits for the counts (see `result`) and writes them into `report`."""
        self.result(cancel).record(report)

    def _stop(self) -> None:
        if self._conn is None or self._thread is None or not self._thread.is_alive():
            return
        import psycopg

        with contextlib.suppress(psycopg.Error):
            self._conn.cancel()
        self._thread.join(CANCEL_JOIN_SECONDS)

    def close(self) -> None:
        """Stops counting if it still runs and ends the exporting transaction."""
        self._stop()
        if self._conn is not None:
            self._conn.close()  # without a commit: the read-only transaction is rolled back
            self._conn = None


@contextlib.contextmanager
def snapshot_for_dump(
    job: JobConfig, env: Mapping[str, str], database: str
) -> Iterator[DumpSnapshot]:
    """Yields the row counts of one dump of `database` in the job's `row_counts` mode.

    Give `snap.snapshot_id` (None: no snapshot) to pg_dump, call `snap.record(report)` after the
    dump has ended; the exporting transaction ends when the block does.
    """
    snap = DumpSnapshot(job, env, database)
    try:
        snap.open()
        yield snap
    finally:
        snap.close()
