"""Row counts: pg_dump's --snapshot flag, connection parameters, config and report fields."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from db_backup.backup import rowcounts
from db_backup.config import ConfigError, JobConfig, loads
from db_backup.postgres import tools as pg
from db_backup.reports.model import Report, stem

JOB = """
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: shop
    connection: {host: db.example, port: 6543, user: backup, connect_timeout_seconds: 7}
"""


def job(extra: str = "") -> JobConfig:
    return loads(JOB + extra).jobs[0]


def test_row_counts_are_exact_by_default() -> None:
    assert job().row_counts == "exact"


@pytest.mark.parametrize("written", ["off", '"off"', "false", "estimate", "exact"])
def test_row_counts_accepts_each_mode_and_a_bare_yaml_off(written: str) -> None:
    expected = {"false": "off", '"off"': "off"}.get(written, written)
    assert job(f"    row_counts: {written}\n").row_counts == expected


def test_an_unknown_row_counts_mode_is_refused_with_its_place() -> None:
    with pytest.raises(ConfigError) as caught:
        job("    row_counts: sometimes\n")
    [problem] = caught.value.problems
    assert problem.startswith("At 'jobs[0].row_counts': 'sometimes' is not one of: exact")


def test_dump_argv_imports_the_snapshot_when_given() -> None:
    argv = pg.dump_argv(job(), "shop", snapshot="00000003-0000001B-1")
    assert "--snapshot=00000003-0000001B-1" in argv
    assert argv[-1].startswith("--dbname=")  # options before the database
    assert not any(a.startswith("--snapshot") for a in pg.dump_argv(job(), "shop"))


def test_directory_dump_argv_keeps_the_snapshot_for_its_workers() -> None:
    directory = job("    mode: local\n    dump: {format: directory, jobs: 3}\n")
    argv = pg.dump_argv(directory, "shop", Path("/d/x.dump.d"), "00000003-0000001B-1")
    assert "--jobs=3" in argv and "--snapshot=00000003-0000001B-1" in argv


def test_counting_connects_like_pg_dump_with_the_password_file_never_a_password() -> None:
    env = {
        "PGPASSFILE": "/var/lib/db-backup/run/pgpass",
        "PGPASSWORD": "must-not-be-used",
        "PGSSLMODE": "verify-full",
        "PGOPTIONS": "-c search_path=x",
        "HOME": "/root",
    }
    kwargs = rowcounts.connect_kwargs(job(), env, "shop")
    assert kwargs["passfile"] == "/var/lib/db-backup/run/pgpass"
    assert kwargs["password"] == ""  # libpq then reads the password file, never $PGPASSWORD
    assert kwargs["sslmode"] == "verify-full"
    assert (kwargs["host"], kwargs["port"], kwargs["user"]) == ("db.example", "6543", "backup")
    assert (kwargs["dbname"], kwargs["connect_timeout"]) == ("shop", "7")
    assert kwargs["application_name"] == "db-backup/nightly/row-counts"
    assert kwargs["options"].startswith("-c search_path=x -c statement_timeout=0")
    assert "row_security=off" in kwargs["options"]
    assert "must-not-be-used" not in repr(kwargs)


def test_off_mode_opens_no_connection_and_gives_no_snapshot() -> None:
    # The host does not resolve: any connection attempt would fail and say so.
    off = loads(
        JOB.replace("host: db.example", "host: no-such-host.invalid") + "    row_counts: off\n"
    ).jobs[0]
    with rowcounts.snapshot_for_dump(off, {}, "shop") as snap:
        assert snap.snapshot_id is None
        assert snap.result() == rowcounts.RowCounts("off")


def test_an_unreachable_server_gives_no_snapshot_and_failed_counts() -> None:
    bad = loads(
        JOB.replace("host: db.example", "host: /nonexistent-socket-dir").replace(
            "connect_timeout_seconds: 7", "connect_timeout_seconds: 2"
        )
    ).jobs[0]
    with rowcounts.snapshot_for_dump(bad, {}, "shop") as snap:
        assert snap.snapshot_id is None  # pg_dump takes its own snapshot (and fails on its own)
        result = snap.result()
    assert (result.mode, result.tables) == ("failed", None)
    assert result.error.startswith("no snapshot exported, pg_dump took its own: ")
    assert "/nonexistent-socket-dir" in result.error


def report() -> Report:
    started = datetime(2025, 10, 11, 18, 0, tzinfo=UTC)
    return Report(
        "nightly", "shop", "h", 5432, "local", "local", stem("shop", started, "h"), started
    )


def test_report_carries_counts_mode_and_reason() -> None:
    assert {k: report().to_json()[k] for k in ("rowCounts", "tables", "rowCountsError")} == {
        "rowCounts": None,
        "tables": None,
        "rowCountsError": "",
    }
    filled = report()
    rowcounts.RowCounts("exact", {'"a.b"."c"': 3, "public.t": 0}).record(filled)
    doc = filled.to_json()
    assert (doc["rowCounts"], doc["tables"]) == ("exact", {'"a.b"."c"': 3, "public.t": 0})
    failed = report()
    rowcounts.RowCounts("failed", None, "counting failed: boom").record(failed)
    doc = failed.to_json()
    assert (doc["rowCounts"], doc["tables"], doc["rowCountsError"]) == (
        "failed",
        None,
        "counting failed: boom",
    )


def test_commands_that_do_not_count_never_import_psycopg() -> None:
    # Importing psycopg costs a few hundred ms; status, check-config and `off` must not pay it.
    code = (
        "import sys\n"
        "from db_backup import cli\nfrom db_backup.backup import rowcounts, run\n"
        "from db_backup.config import loads\n"
        f"j = loads({JOB + '    row_counts: off' + chr(10)!r}).jobs[0]\n"
        "with rowcounts.snapshot_for_dump(j, {}, 'shop') as snap:\n"
        "    snap.result()\n"
        "print('psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
