"""Row counts recorded with each dump (`tables`, `rowCounts`), against a real cluster.

The counts are checked against an independent count of the database restored from the dump:
a server-side `query_to_xml(count(*))` per table, never db_backup's own counting code.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from db_backup.backup import rowcounts
from tests.conftest import BACKUP_PASSWORD, CLI, RunCli, Setup
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration

# Rows per table of every user table (relkind r), keyed as format('%I.%I', schema, table).
COUNTS_SQL = """
SELECT coalesce(json_object_agg(
    format('%I.%I', n.nspname, c.relname),
    (xpath('/row/c/text()', query_to_xml(
        format('SELECT count(*) AS c FROM ONLY %I.%I', n.nspname, c.relname),
        false, true, '')))[1]::text::bigint), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


def live_counts(cluster: Cluster, database: str) -> dict[str, int]:
    """Returns {schema.table: rows} of `database`, counted now by the server."""
    counts: dict[str, int] = json.loads(cluster.psql(COUNTS_SQL, database))
    return counts


def fresh_database(cluster: Cluster, name: str, sql: str) -> str:
    """(Re)creates database `name` and runs `sql` in it; returns the name."""
    cluster.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    cluster.psql(f'CREATE DATABASE "{name}"')
    cluster.psql(sql, name)
    return name


def restore_any(cluster: Cluster, report: dict[str, Any], target: str) -> None:
    """Restores the report's dump (custom, directory or plain) into a new database `target`."""
    dump = Path(report["local"]["file"])
    if report["format"] != "plain":
        cluster.restore(dump, target)
        return
    cluster.psql(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
    cluster.psql(f'CREATE DATABASE "{target}"')
    subprocess.run(
        cluster.psql_argv(target, "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump)),
        check=True,
        capture_output=True,
    )


def only_report(setup: Setup) -> dict[str, Any]:
    [report] = setup.reports_json()
    return report


def use_database(setup: Setup, database: str, **job: Any) -> None:
    setup.job()["databases"] = database
    setup.job()["globals"] = False
    setup.job().update(job)
    setup.write()


CHURN_SQL = """
CREATE TABLE big (id bigserial PRIMARY KEY, a text, b text);
INSERT INTO big (a, b) SELECT md5(i::text) || md5((i * 3)::text), md5((i * 7)::text)
  FROM generate_series(1, 700000) i;
CREATE TABLE ledger (id bigserial PRIMARY KEY, note text);
INSERT INTO ledger (note) SELECT 'n' || i FROM generate_series(1, 1000) i;
CREATE TABLE quiet (id int);
INSERT INTO quiet SELECT generate_series(1, 42);
"""


class Writer(threading.Thread):
    """Commits, as fast as it can, 3 inserts and 1 delete into `big` and `ledger` per transaction.

    Every commit adds two rows to each table, so a count taken at any moment lies strictly
    between the counts taken before and after that moment.
    """

    def __init__(self, cluster: Cluster, database: str) -> None:
        super().__init__(daemon=True)
        self.conninfo = (
            f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname={database}"
        )
        self.stop = threading.Event()
        self.commits = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self.stop.is_set():
                    with conn.transaction():
                        for table in ("big", "ledger"):
                            conn.execute(f"INSERT INTO {table} DEFAULT VALUES")
                            conn.execute(f"INSERT INTO {table} DEFAULT VALUES")
                            conn.execute(f"INSERT INTO {table} DEFAULT VALUES")
                            conn.execute(
                                f"DELETE FROM {table} WHERE id = (SELECT min(id) FROM {table})"
                            )
                    self.commits += 1
        except BaseException as exc:
            self.error = exc


@pytest.mark.parametrize("fmt", ["custom", "directory", "plain"])
def test_exact_counts_equal_the_restored_dump_while_a_writer_inserts_and_deletes(
    setup: Setup, cluster: Cluster, run_cli: RunCli, fmt: str
) -> None:
    database = fresh_database(cluster, f"rc_churn_{fmt}", CHURN_SQL)
    dump = {"format": fmt, "jobs": 2} if fmt == "directory" else {"format": fmt}
    use_database(setup, database, dump=dump)
    writer = Writer(cluster, database)
    writer.start()
    try:
        while writer.commits < 20 and writer.error is None:
            time.sleep(0.01)
        before = live_counts(cluster, database)
        commits_before = writer.commits
        done = run_cli("--config", str(setup.path), "run", "nightly")
        commits_during = writer.commits - commits_before
        time.sleep(0.2)
    finally:
        writer.stop.set()
        writer.join(30)
    assert writer.error is None, writer.error
    assert done.returncode == 0, done.stderr
    after = live_counts(cluster, database)
    report = only_report(setup)
    assert report["status"] == "SUCCESS"
    assert report["rowCounts"] == "exact" and report["rowCountsError"] == ""
    recorded = report["tables"]
    assert set(recorded) == {"public.big", "public.ledger", "public.quiet"}
    restore_any(cluster, report, f"{database}_restored")
    assert live_counts(cluster, f"{database}_restored") == recorded
    # The writer really ran during the dump: the snapshot lies strictly inside its commits.
    assert commits_during > 10
    for table in ("public.big", "public.ledger"):
        assert before[table] < recorded[table] < after[table], (table, before, recorded, after)
    assert recorded["public.quiet"] == after["public.quiet"] == 42


NAMES_SQL = """
CREATE SCHEMA "we""ird.schema";
CREATE TABLE "we""ird.schema"."line
break ""表"" .x" (id int);
INSERT INTO "we""ird.schema"."line
break ""表"" .x" SELECT generate_series(1, 3);
CREATE TABLE public."Upper.Case" (id int);
INSERT INTO public."Upper.Case" SELECT generate_series(1, 5);
CREATE TABLE public."客户" (id int);
INSERT INTO public."客户" SELECT generate_series(1, 7);
CREATE TABLE public."user" (id int);
CREATE TABLE public.parent (id int);
INSERT INTO public.parent VALUES (1);
CREATE TABLE public.child () INHERITS (public.parent);
INSERT INTO public.child SELECT generate_series(1, 4);
CREATE TABLE public.measure (k int) PARTITION BY RANGE (k);
CREATE TABLE public.measure_lo PARTITION OF public.measure FOR VALUES FROM (0) TO (10);
CREATE TABLE public.measure_hi PARTITION OF public.measure FOR VALUES FROM (10) TO (100);
INSERT INTO public.measure SELECT generate_series(1, 9);
INSERT INTO public.measure SELECT generate_series(10, 15);
CREATE UNLOGGED TABLE public.scratch (id int);
INSERT INTO public.scratch SELECT generate_series(1, 2);
CREATE MATERIALIZED VIEW public.summary AS SELECT count(*) AS n FROM public.parent;
CREATE VIEW public.view_of_parent AS SELECT * FROM public.parent;
CREATE SEQUENCE public.counter;
"""


def test_names_with_quotes_dots_newlines_and_unicode_get_unambiguous_keys(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    database = fresh_database(cluster, "rc_names", NAMES_SQL)
    use_database(setup, database)
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    assert report["rowCounts"] == "exact"
    # quote_ident forms: quoted only where needed, so a dot in a name is never the separator;
    # parents count only their own rows (pg_dump copies each table's own), partitioned tables
    # appear as their partitions, and views, materialized views and sequences not at all.
    assert report["tables"] == {
        '"we""ird.schema"."line\nbreak ""表"" .x"': 3,
        'public."Upper.Case"': 5,
        'public."客户"': 7,
        'public."user"': 0,
        "public.parent": 1,
        "public.child": 4,
        "public.measure_lo": 9,
        "public.measure_hi": 6,
        "public.scratch": 2,
    }
    restore_any(cluster, report, "rc_names_restored")
    assert live_counts(cluster, "rc_names_restored") == report["tables"]
    # A drill can count a restored database with the same keys (autocommit, no savepoints).
    restored = (
        f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname=rc_names_restored"
    )
    with psycopg.connect(restored, autocommit=True) as conn:
        assert rowcounts.exact_counts(conn) == report["tables"]
    document = Path(setup.reports / f"{Path(report['local']['file']).stem}.json").read_text()
    assert "line\\nbreak" in document  # a JSON string escape, not a raw newline


ESTIMATE_SQL = """
CREATE TABLE counted (id int) WITH (autovacuum_enabled = false);
INSERT INTO counted SELECT generate_series(1, 1000);
ANALYZE counted;
INSERT INTO counted SELECT generate_series(1, 500);
CREATE TABLE never_analyzed (id int) WITH (autovacuum_enabled = false);
"""


def test_estimate_mode_records_reltuples_not_a_count(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    database = fresh_database(cluster, "rc_estimate", ESTIMATE_SQL)
    use_database(setup, database, row_counts="estimate")
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    assert report["status"] == "SUCCESS"
    assert report["rowCounts"] == "estimate"
    # The estimate is what ANALYZE saw (1000), not the 1500 rows the table now holds.
    assert report["tables"] == {"public.counted": 1000, "public.never_analyzed": None}
    assert live_counts(cluster, database)["public.counted"] == 1500


def test_off_mode_records_no_counts(setup: Setup, cluster: Cluster, run_cli: RunCli) -> None:
    use_database(setup, "shop", row_counts="off")
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    assert report["status"] == "SUCCESS"
    assert (report["rowCounts"], report["tables"], report["rowCountsError"]) == ("off", None, "")


def test_counts_over_a_password_connection_leave_the_password_nowhere(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    secret_file = setup.root / "pg.pass"
    secret_file.write_text(BACKUP_PASSWORD + "\n")
    secret_file.chmod(0o600)
    setup.job()["connection"] = {
        "host": "127.0.0.1",
        "port": cluster.port,
        "user": "backup",
        "password": {"file": str(secret_file)},
    }
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env={"PGPASSWORD": "wrong"})
    assert done.returncode == 0, done.stderr
    report = only_report(setup)
    assert report["rowCounts"] == "exact", report["rowCountsError"]
    assert report["tables"] == live_counts(cluster, "shop")
    everything = done.stdout + done.stderr
    for path in setup.root.rglob("*"):
        if path.is_file() and path != secret_file:
            everything += path.read_bytes().decode("utf-8", "replace")
    assert BACKUP_PASSWORD not in everything


def _wait_for_lock_waits(cluster: Cluster, names: set[str], timeout: float = 60) -> dict[str, int]:
    """Returns {application_name: pid} once every backend named in `names` waits on a lock."""
    deadline = time.monotonic() + timeout
    while True:
        rows = cluster.psql(
            "SELECT application_name || '=' || pid FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND application_name LIKE 'db-backup/%'"
        ).splitlines()
        found = dict(row.rsplit("=", 1) for row in rows)
        if names <= set(found):
            return {name: int(found[name]) for name in names}
        if time.monotonic() > deadline:
            raise AssertionError(f"backends waiting on locks: {found}")
        time.sleep(0.1)


def test_counting_that_fails_keeps_the_good_dump_and_says_why(
    setup: Setup, cluster: Cluster
) -> None:
    database = fresh_database(
        cluster,
        "rc_fail",
        "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 10);"
        "CREATE TABLE zzz (id int); INSERT INTO zzz SELECT generate_series(1, 3);",
    )
    use_database(setup, database)
    conninfo = f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname={database}"
    with psycopg.connect(conninfo) as blocker:
        # Hold zzz so that both pg_dump (which locks every table first) and the counting
        # session stop there; then end the counting session the way an admin would.
        blocker.execute("LOCK TABLE zzz IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [CLI, "--config", str(setup.path), "run", "nightly"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DB_BACKUP_LOG_FORMAT": "json"},
        )
        try:
            pids = _wait_for_lock_waits(
                cluster, {"db-backup/nightly", "db-backup/nightly/row-counts"}
            )
            cluster.psql(f"SELECT pg_terminate_backend({pids['db-backup/nightly/row-counts']})")
        finally:
            blocker.rollback()
        _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    report = only_report(setup)
    assert report["status"] == "SUCCESS" and report["errorMessage"] == ""
    assert report["rowCounts"] == "failed" and report["tables"] is None
    assert report["rowCountsError"].startswith("counting failed: ")
    assert "terminating connection due to administrator command" in report["rowCountsError"]
    warnings = [json.loads(line) for line in stderr.splitlines() if "row counts" in line]
    assert [w["level"] for w in warnings] == ["warning"]
    restore_any(cluster, report, "rc_fail_restored")
    assert live_counts(cluster, "rc_fail_restored") == {"public.a": 10, "public.zzz": 3}
