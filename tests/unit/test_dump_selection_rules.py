"""Dump selection: typed config per job and per database, check-config's refusals, pg_dump's
argv, the pattern translation that row counts use, and the report's `dumpOptions`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg import sql

from db_backup.backup.run import dump_options_json
from db_backup.config import ConfigError, DumpSelection, loads, patterns
from db_backup.postgres import tools as pg

JOB = """
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: DATABASES
    dump: DUMP
"""


def config_text(databases: str = "[shop, crm]", dump: str = "{}") -> str:
    return JOB.replace("DATABASES", databases).replace("DUMP", dump)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="test.yaml")
    return caught.value.problems


def test_without_selection_keys_the_dump_is_whole_and_the_argv_unchanged() -> None:
    job = loads(config_text()).job("nightly")
    assert job.dump_selection("shop") == DumpSelection() and DumpSelection().is_whole
    assert pg.dump_argv(job, "shop") == [
        "pg_dump",
        "--host",
        "/var/run/postgresql",
        "--port",
        "5432",
        "--username",
        "postgres",
        "--no-password",
        "--format=c",
        "--compress=9",
        "--dbname=dbname='shop'",
    ]
    assert dump_options_json(job.dump_selection("shop")) is None


def test_the_job_selection_becomes_glued_pg_dump_options_before_the_database() -> None:
    dump = (
        "{exclude_table_data: [public.audit_log], schemas: [public], exclude_schemas: [tmp],"
        " tables: ['public.order_*'], exclude_tables: [public.x], no_owner: true,"
        " no_privileges: true, no_comments: true, lock_wait_timeout: 1m30s}"
    )
    job = loads(config_text(dump=dump)).job("nightly")
    argv = pg.dump_argv(job, "shop")
    assert argv[-10:] == [
        "--schema=public",
        "--exclude-schema=tmp",
        "--table=public.order_*",
        "--exclude-table=public.x",
        "--exclude-table-data=public.audit_log",
        "--no-owner",
        "--no-privileges",
        "--no-comments",
        "--lock-wait-timeout=90000",
        "--dbname=dbname='shop'",
    ]
    assert dump_options_json(job.dump_selection("shop")) == {
        "excludeTableData": ["public.audit_log"],
        "schemas": ["public"],
        "excludeSchemas": ["tmp"],
        "tables": ["public.order_*"],
        "excludeTables": ["public.x"],
        "noOwner": True,
        "noPrivileges": True,
        "noComments": True,
        "lockWaitTimeoutSeconds": 90,
    }


def test_a_database_s_own_dump_keys_replace_the_job_s_for_it_alone() -> None:
    text = config_text(
        databases="[shop, {name: crm, dump: {exclude_table_data: [], tables: [public.t]}}]",
        dump="{exclude_table_data: [public.audit_log], no_owner: true}",
    )
    job = loads(text).job("nightly")
    assert job.databases == ("shop", "crm")
    assert job.dump_selection("shop") == DumpSelection(
        exclude_table_data=("public.audit_log",), no_owner=True
    )
    assert job.dump_selection("crm") == DumpSelection(tables=("public.t",), no_owner=True)
    assert "--exclude-table-data=public.audit_log" in pg.dump_argv(job, "shop")
    crm = pg.dump_argv(job, "crm")
    assert "--table=public.t" in crm and not any("exclude-table-data" in a for a in crm)
    # A database named nowhere (discovered, say) gets the job's selection.
    assert job.dump_selection("other") == job.dump.selection


def test_databases_all_keeps_working() -> None:
    job = loads(config_text(databases="all", dump="{no_owner: true}")).job("nightly")
    assert job.discovers_databases and job.dump_selection("any").no_owner


def test_check_config_refuses_option_like_and_broken_patterns_naming_the_place() -> None:
    found = problems(
        config_text(
            databases='[shop, {name: crm, dump: {exclude_schemas: [a.b], tables: ["x\\ny"]}}]',
            dump="{exclude_table_data: [public.ok, '-fpublic.x'], lock_wait_timeout: 0s,"
            " tables: [a.b.c]}",
        )
    )
    assert found == [
        "At 'jobs[0].dump.exclude_table_data[1]': '-fpublic.x' starts with '-' "
        "(pg_dump would read it as an option)",
        "At 'jobs[0].dump.tables[0]': 'a.b.c' has 3 dot-separated parts; write at most "
        "schema.table",
        "At 'jobs[0].dump.lock_wait_timeout': '0s' is zero; use e.g. 30s or 2m",
        "At 'jobs[0].databases[1].dump.exclude_schemas[0]': 'a.b' has 2 dot-separated parts; "
        "write at most a schema name (no '.')",
        "At 'jobs[0].databases[1].dump.tables[0]': 'x\\ny' holds a newline or a NUL character",
    ]


def test_check_config_refuses_free_form_strings_and_unknown_keys() -> None:
    found = problems(config_text(dump="{options: '-f /etc/passwd', no_owner: 'yes'}"))
    assert any("jobs[0].dump.options': unknown key" in p for p in found)
    assert any(p.startswith("At 'jobs[0].dump.no_owner'") for p in found)
    found = problems(config_text(databases="[{name: crm, dump: {format: plain}}]"))
    assert any("jobs[0].databases[0].dump.format': unknown key" in p for p in found)


@pytest.mark.parametrize(
    ("pattern", "schema", "name"),
    [
        ("public.audit_log", "^(public)$", "^(audit_log)$"),
        ("audit_log", None, "^(audit_log)$"),
        ("Public.Log_*", "^(public)$", "^(log_.*)$"),
        ('"Sales"."Q1 ""x"" y"', "^(Sales)$", '^(Q1 "x" y)$'),
        ('"a.b".c?', "^(a\\.b)$", "^(c.)$"),
        ("*.t$", "^(.*)$", "^(t\\$)$"),
        ('"x*y"', None, "^(x\\*y)$"),
        ("arr[]", None, "^(arr\\[])$"),
        ("a|b", None, "^(a|b)$"),
    ],
)
def test_patterns_read_as_pg_dump_reads_them(pattern: str, schema: str | None, name: str) -> None:
    assert patterns.regexes(pattern) == patterns.NamePattern(schema, name)


def test_a_lock_wait_timeout_in_seconds_is_a_duration() -> None:
    job = loads(config_text(dump="{lock_wait_timeout: 5}")).job("nightly")
    assert job.dump.selection.lock_wait_timeout == timedelta(seconds=5)
    assert pg.selection_args(job.dump.selection) == ["--lock-wait-timeout=5000"]


def test_a_lock_timeout_failure_is_explained_and_other_failures_are_left_as_they_are() -> None:
    failed = (
        "pg_dump exited with status 1: pg_dump: error: query failed: ERROR:  canceling statement "
        "due to statement timeout | pg_dump: detail: Query was: LOCK TABLE public.audit_log IN "
        "ACCESS SHARE MODE"
    )
    selection = DumpSelection(lock_wait_timeout=timedelta(seconds=2))
    explained = pg.explain_dump_error(failed, selection)
    assert explained.startswith(
        "pg_dump could not lock table public.audit_log within dump.lock_wait_timeout (2s): "
    )
    assert explained.endswith(failed)
    assert pg.explain_dump_error(failed, DumpSelection()) == failed
    other = "pg_dump exited with status 1: pg_dump: error: connection refused"
    assert pg.explain_dump_error(other, selection) == other


def test_the_commented_selection_and_calendar_examples_in_config_example_yaml_load() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    lines = []
    for line in example.read_text(encoding="utf-8").splitlines():
        body = line.lstrip()
        indent = line[: len(line) - len(body)]
        if indent == " " * 6 and body.startswith("# ") and ": " in body:
            line = indent + body[2:]  # a commented key of dump: or retention:
        elif line.startswith("    # databases: ["):
            continue  # the per-database form, loaded below in place of `databases: all`
        lines.append(line)
    text = "\n".join(lines)
    per_database = next(
        line[len("    # ") :]
        for line in example.read_text(encoding="utf-8").splitlines()
        if line.startswith("    # databases: [")
    )
    text = text.replace("    databases: all ", f"    {per_database} #", 1)
    job = loads(text).job("nightly")
    selection = job.dump.selection
    assert selection.exclude_table_data == ("public.audit_log", "log.*")
    assert selection.no_owner and selection.lock_wait_timeout == timedelta(seconds=30)
    assert job.retention.keep_daily == 14 and job.retention.keep_monthly == 12
    assert job.databases == ("shop", "crm")
    assert job.dump_selection("crm").exclude_table_data == ("public.audit_log",)
    assert job.dump_selection("crm").schemas == ("public",)


def sql_text(composable: sql.Composable) -> str:
    return composable.as_string(None)


def test_the_row_counts_follow_pg_dump_s_selection_rules() -> None:
    from db_backup.backup import rowcounts

    match = "{} OPERATOR(pg_catalog.~) '{}' COLLATE pg_catalog.default"
    whole = sql_text(rowcounts._included(DumpSelection()))
    assert whole == "(NOT (false)) AND NOT (false)"  # everything pg_dump dumps by default
    schemas = sql_text(
        rowcounts._included(DumpSelection(schemas=("Sales",), exclude_schemas=("tmp*",)))
    )
    assert schemas == (
        f"(({match.format('n.nspname', '^(sales)$')}) AND "
        f"NOT ({match.format('n.nspname', '^(tmp.*)$')})) AND NOT (false)"
    )
    # With tables, schemas play no part (as in pg_dump); an unqualified pattern names the
    # tables visible on the search path; exclusions apply last.
    tables = sql_text(
        rowcounts._included(
            DumpSelection(tables=("orders",), exclude_schemas=("x",), exclude_tables=("*.t",))
        )
    )
    assert tables == (
        f"((true AND {match.format('c.relname', '^(orders)$')} AND "
        "pg_catalog.pg_table_is_visible(c.oid))) AND NOT "
        f"((true AND {match.format('c.relname', '^(t)$')}))"
    )
    data = sql_text(rowcounts._any_table(("public.audit_log", '"Log".*')))
    assert data == (
        f"(true AND {match.format('c.relname', '^(audit_log)$')} AND "
        f"{match.format('n.nspname', '^(public)$')}) OR "
        f"(true AND {match.format('n.nspname', '^(Log)$')})"
    )
