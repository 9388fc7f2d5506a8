"""Drill checks are one read-only query each, through the driver, as a role that owns nothing.

Hostile checks (a dropped database, a file read, a program run by COPY, a psql shell escape,
two statements) run against a real throwaway cluster and a real `target: server`; each fails
the drill by name and changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_drill import (
    assert_drill_report_shape,
    backup_all,
    drill_dir,
    drill_reports,
    enable_drill,
)
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration
__all__ = ["drill_dir"]  # the fixture

DRILL_ROLE = "db_backup_drill"
CHECK_ROLE = "db_backup_drill_check"


@pytest.fixture
def witness_dir() -> Iterator[Path]:
    """A directory anyone may write to: a program a check managed to start would leave a file."""
    path = Path(tempfile.mkdtemp(prefix="db-backup-check-witness-"))
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def hostile_checks(witness: Path, victim: str) -> list[dict[str, Any]]:
    return [
        {"name": "drop postgres", "sql": "DROP DATABASE postgres"},
        {"name": "read passwd", "sql": "SELECT pg_read_file('/etc/passwd') IS NOT NULL"},
        {"name": "copy to program", "sql": f"COPY (SELECT 1) TO PROGRAM 'touch {witness}/copy'"},
        {"name": "shell escape", "sql": f"\\! touch {witness}/shell"},
        {"name": "two statements", "sql": f"DROP DATABASE {victim}; SELECT true"},
    ]


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}


def test_hostile_checks_on_the_throwaway_cluster_fail_by_name_and_change_nothing(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path, witness_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    checks = hostile_checks(witness_dir, "crm")
    checks.append({"name": "slow", "sql": "SELECT pg_sleep(5) IS NOT NULL", "timeout_seconds": 1})
    checks.append({"name": "customers exist", "sql": "SELECT count(*) > 0 FROM customers;\n"})
    enable_drill(setup, drill_dir, checks=checks)
    backup_all(setup, run_cli, cluster)
    done = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert done.returncode == 1
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED"
    outcomes = checks_by_name(report)
    failed = [c["name"] for c in checks[:-1]]
    assert report["errorMessage"] == f"check(s) failed: {', '.join(failed)}"
    assert [name for name, c in outcomes.items() if not c["passed"]] == failed
    assert outcomes["customers exist"]["passed"] is True
    assert "read-only transaction" in outcomes["drop postgres"]["error"]
    assert "permission denied" in outcomes["read passwd"]["error"]
    assert "pg_execute_server_program" in outcomes["copy to program"]["error"]
    assert "syntax error" in outcomes["shell escape"]["error"]
    assert "cannot insert multiple commands" in outcomes["two statements"]["error"]
    assert "statement timeout" in outcomes["slow"]["error"]
    assert list(witness_dir.iterdir()) == []
    assert_drill_report_shape(setup, report)


def test_a_check_runs_as_the_check_role_in_a_session_it_cannot_make_writable(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path, witness_dir: Path
) -> None:
    # The session itself: the check role, read-only, and no way to switch it back.
    setup.job()["databases"] = "crm"
    who = (
        f"SELECT current_user = '{CHECK_ROLE}' AND NOT rolsuper FROM pg_roles"
        " WHERE rolname = current_user"
    )
    checks = [
        {"name": "who", "sql": who},
        {"name": "read only", "sql": "SELECT current_setting('transaction_read_only') = 'on'"},
        {"name": "program", "sql": f"SELECT pg_catalog.pg_stat_file('{witness_dir}') IS NULL"},
        {"name": "set write", "sql": "SELECT set_config('transaction_read_only', 'off', true)"},
    ]
    enable_drill(setup, drill_dir, checks=checks)
    backup_all(setup, run_cli, cluster)
    done = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert done.returncode == 1
    [report] = drill_reports(setup)
    outcomes = checks_by_name(report)
    assert outcomes["who"]["passed"] and outcomes["read only"]["passed"], report["checks"]
    assert "permission denied" in outcomes["program"]["error"]
    assert "read-write" in outcomes["set write"]["error"]


@pytest.fixture
def server_roles(cluster: Cluster) -> Iterator[str]:
    """The operator's set-up for `target: server`: a CREATEDB drill role, a bare check role,
    a database of the drill role's own to back up, and a victim database beside it."""
    cluster.psql(f"CREATE ROLE {DRILL_ROLE} LOGIN CREATEDB")
    cluster.psql(f"CREATE ROLE {CHECK_ROLE} LOGIN")
    cluster.psql(f"CREATE DATABASE drilled OWNER {DRILL_ROLE}")
    cluster.psql("CREATE DATABASE victim_db")
    cluster.psql("CREATE DATABASE db_backup_drill_nightly_9")  # a scratch name postgres owns
    cluster.psql(
        "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 50)",
        "drilled",
        user=DRILL_ROLE,
    )
    yield "victim_db"
    for database in ("drilled", "victim_db", "db_backup_drill_nightly_9"):
        cluster.psql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    for name in cluster.psql(
        "SELECT datname FROM pg_database WHERE datname LIKE 'db\\_backup\\_drill\\_%'"
    ).split():
        cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")
    cluster.psql(f"DROP ROLE {CHECK_ROLE}")
    cluster.psql(f"DROP ROLE {DRILL_ROLE}")


def server_drill(setup: Setup, cluster: Cluster, drill_dir: Path, checks: list[Any]) -> None:
    setup.job()["databases"] = "drilled"
    server = {"host": str(cluster.socket_dir), "port": cluster.port, "user": DRILL_ROLE}
    enable_drill(
        setup, drill_dir, target="server", server=server, globals=False, jobs=1, checks=checks
    )


def databases(cluster: Cluster) -> set[str]:
    return set(cluster.psql("SELECT datname FROM pg_database").split("\n"))


def test_hostile_checks_on_a_scratch_server_drop_nothing_and_fail_the_drill(
    setup: Setup,
    cluster: Cluster,
    run_cli: RunCli,
    drill_dir: Path,
    witness_dir: Path,
    server_roles: str,
) -> None:
    checks = hostile_checks(witness_dir, server_roles)
    checks.append({"name": "orders", "sql": "SELECT count(*) = 50 FROM orders"})
    server_drill(setup, cluster, drill_dir, checks)
    backup_all(setup, run_cli, cluster)
    # A killed drill's marker naming a scratch database that another role owns: never dropped.
    marker = drill_dir / "nightly.scratch-databases.json"
    marker.write_text(json.dumps(["db_backup_drill_nightly_9"]))
    done = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert done.returncode == 1, done.stderr
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED" and report["target"]["kind"] == "server"
    outcomes = checks_by_name(report)
    assert [name for name, c in outcomes.items() if not c["passed"]] == [
        c["name"] for c in checks[:-1]
    ]
    assert outcomes["orders"]["passed"] is True
    assert "cannot insert multiple commands" in outcomes["two statements"]["error"]
    assert {"victim_db", "postgres", "db_backup_drill_nightly_9"} <= databases(cluster)
    assert "db_backup_drill_nightly_1" not in databases(cluster)  # its own scratch: dropped
    assert list(witness_dir.iterdir()) == []
    assert not marker.exists()


def test_a_privileged_check_role_on_a_scratch_server_is_refused(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path, server_roles: str
) -> None:
    cluster.psql(f"ALTER ROLE {CHECK_ROLE} CREATEDB")
    cluster.psql(f"GRANT pg_read_server_files TO {CHECK_ROLE}")
    server_drill(setup, cluster, drill_dir, [{"name": "orders", "sql": "SELECT true"}])
    backup_all(setup, run_cli, cluster)
    done = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert done.returncode == 1
    [report] = drill_reports(setup)
    [check] = report["checks"]
    assert report["status"] == "FAILED" and check["passed"] is False
    assert f"the check role '{CHECK_ROLE}' is not an unprivileged role" in check["error"]
    assert "has CREATEDB" in check["error"] and "member of pg_read_server_files" in check["error"]
    assert "db_backup_drill_nightly_1" not in databases(cluster)
