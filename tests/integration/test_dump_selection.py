"""Dump selection (`dump.exclude_table_data`, `tables`, `exclude_schemas`, per database, the
lock wait timeout) against a real cluster: what the restore holds is compared with the source
database through the server's own queries, never through db_backup's counting code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_drill import drill_dir, drill_reports, enable_drill
from tests.integration.test_row_counts import fresh_database, live_counts
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration
__all__ = ["drill_dir"]  # the fixture, imported for the drill test

SAMPLE_SQL = """
CREATE SCHEMA sales;
CREATE SCHEMA scratch;
CREATE TABLE public.orders (id int PRIMARY KEY, note text);
INSERT INTO public.orders SELECT i, 'order ' || i FROM generate_series(1, 120) i;
CREATE TABLE public.order_items (id int, order_id int REFERENCES public.orders);
INSERT INTO public.order_items SELECT i, 1 + i % 120 FROM generate_series(1, 300) i;
CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, what text);
INSERT INTO public.audit_log (what) SELECT 'event ' || i FROM generate_series(1, 500) i;
CREATE TABLE sales.q1 (id int, amount numeric);
INSERT INTO sales.q1 SELECT i, i * 1.5 FROM generate_series(1, 7) i;
CREATE TABLE scratch.tmp (id int);
INSERT INTO scratch.tmp SELECT generate_series(1, 3);
"""
ALL_TABLES = {"public.orders", "public.order_items", "public.audit_log", "sales.q1", "scratch.tmp"}

# Each table's rows as one digest, computed by the server: equal digests, equal contents.
DIGEST_SQL = """
SELECT coalesce(json_object_agg(format('%I.%I', n.nspname, c.relname),
    (xpath('/row/d/text()', query_to_xml(format(
        'SELECT md5(coalesce(string_agg(t::text, E''\\n'' ORDER BY t::text), '''')) AS d '
        'FROM ONLY %I.%I t', n.nspname, c.relname), false, true, '')))[1]::text), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


def digests(cluster: Cluster, database: str) -> dict[str, str]:
    found: dict[str, str] = json.loads(cluster.psql(DIGEST_SQL, database))
    return found


def run_job(setup: Setup, run_cli: RunCli, **job: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    setup.job()["globals"] = False
    setup.job().update(job)
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", timeout=120)
    return done, {r["database"]: r for r in setup.reports_json()}


def test_excluded_table_data_restores_empty_every_other_table_identical_and_drills(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    source = fresh_database(cluster, "sel_data", SAMPLE_SQL)
    enable_drill(setup, drill_dir)
    done, reports = run_job(
        setup, run_cli, databases=source, dump={"exclude_table_data": ["public.audit_log"]}
    )
    assert done.returncode == 0, done.stderr
    report = reports[source]
    assert report["status"] == "SUCCESS"
    assert report["dumpOptions"]["excludeTableData"] == ["public.audit_log"]
    assert report["dumpOptions"]["tables"] == [] and report["dumpOptions"]["noOwner"] is False
    before = live_counts(cluster, source)
    assert before["public.audit_log"] == 500
    assert report["tables"] == {**before, "public.audit_log": 0}

    cluster.restore(Path(report["local"]["file"]), "sel_data_restored")
    restored = live_counts(cluster, "sel_data_restored")
    assert set(restored) == ALL_TABLES and restored["public.audit_log"] == 0
    source_digests, restored_digests = (
        digests(cluster, source),
        digests(cluster, "sel_data_restored"),
    )
    for table in ALL_TABLES - {"public.audit_log"}:
        assert restored_digests[table] == source_digests[table], table

    drill = run_cli("--config", str(setup.path), "drill", "nightly", timeout=300)
    assert drill.returncode == 0, drill.stderr
    [result] = drill_reports(setup)
    assert result["status"] == "SUCCESS", result["errorMessage"]
    assert result["tablesChecked"] == len(ALL_TABLES) and result["mismatches"] == []


def test_tables_and_exclude_schemas_per_database_restore_what_they_select(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    whole = fresh_database(cluster, "sel_whole", SAMPLE_SQL)
    no_scratch = fresh_database(cluster, "sel_no_scratch", SAMPLE_SQL)
    only_orders = fresh_database(cluster, "sel_only_orders", SAMPLE_SQL)
    done, reports = run_job(
        setup,
        run_cli,
        databases=[
            whole,
            {"name": no_scratch, "dump": {"exclude_schemas": ["scratch"]}},
            {"name": only_orders, "dump": {"tables": ["public.order*"]}},
        ],
    )
    assert done.returncode == 0, done.stderr
    expected = {
        whole: ALL_TABLES,
        no_scratch: ALL_TABLES - {"scratch.tmp"},
        only_orders: {"public.orders", "public.order_items"},
    }
    # The override applies to its database alone: the job's other database is dumped whole.
    assert "dumpOptions" not in reports[whole]
    assert reports[no_scratch]["dumpOptions"]["excludeSchemas"] == ["scratch"]
    assert reports[only_orders]["dumpOptions"]["tables"] == ["public.order*"]
    assert reports[only_orders]["dumpOptions"]["excludeSchemas"] == []
    source = digests(cluster, whole)
    for database, tables in expected.items():
        report = reports[database]
        assert report["status"] == "SUCCESS"
        assert set(report["tables"]) == tables, database
        target = f"{database}_restored"
        cluster.restore(Path(report["local"]["file"]), target)
        restored = digests(cluster, target)
        assert set(restored) == tables, database
        assert all(restored[t] == source[t] for t in tables), database
        assert report["tables"] == live_counts(cluster, target)
    schemas = cluster.psql(
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace "
        "WHERE nspname IN ('sales', 'scratch')",
        f"{no_scratch}_restored",
    )
    assert schemas == "sales"


def test_check_config_refuses_a_pattern_that_starts_with_a_dash(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["databases"] = ["shop", {"name": "crm", "dump": {"exclude_tables": ["-fx"]}}]
    setup.write()
    done = run_cli("--config", str(setup.path), "check-config")
    assert done.returncode == 78
    assert (
        "At 'jobs[0].databases[1].dump.exclude_tables[0]': '-fx' starts with '-' "
        "(pg_dump would read it as an option)"
    ) in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    # And the run refuses the config the same way, dumping nothing.
    run = run_cli("--config", str(setup.path), "run", "nightly")
    assert run.returncode != 0 and "starts with '-'" in run.stderr + run.stdout
    assert setup.reports_json() == [] and setup.data_files() == []


def test_lock_wait_timeout_fails_the_dump_behind_an_access_exclusive_lock(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    database = fresh_database(cluster, "sel_locked", SAMPLE_SQL)
    conninfo = f"host={cluster.socket_dir} port={cluster.port} user=postgres dbname={database}"
    with psycopg.connect(conninfo) as holder:
        holder.execute("LOCK TABLE public.audit_log IN ACCESS EXCLUSIVE MODE")
        done, reports = run_job(
            setup,
            run_cli,
            databases=database,
            timeout_seconds=60,
            dump={"lock_wait_timeout": "2s"},
        )
        # The lock was still held the whole time: the dump did not get past it.
        held = cluster.psql(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'audit_log' AND l.mode = 'AccessExclusiveLock' AND l.granted",
            database,
        )
        assert held == "1"
        holder.rollback()
    assert done.returncode != 0
    report = reports[database]
    assert report["status"] == "FAILED"
    message = report["errorMessage"]
    assert "lock" in message and "dump.lock_wait_timeout" in message, message
    assert "Traceback" not in done.stderr
    assert setup.data_files() == [] and setup.temporaries() == []
