"""What `status` and the metrics show: a job-level failure until the job runs again, only what
is still configured, and names with control characters escaped (issues 22.5 and 21.7)."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_metrics import names_of, parse, use_metrics
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration

FORGED = "2001-01-01T00:00:00Z  nightly  forged  SUCCESS"
EVIL = f"evil\n{FORGED}"


def only_shop(setup: Setup, cluster: Cluster) -> None:
    """`databases: all`, with every database but shop excluded (the cluster is shared)."""
    names = cluster.psql("SELECT datname FROM pg_database WHERE NOT datistemplate").splitlines()
    setup.job()["databases"] = "all"
    setup.job()["exclude_databases"] = [n for n in names if n != "shop"]
    setup.job()["globals"] = False


def status_rows(run_cli: RunCli, setup: Setup, *extra: str) -> list[dict[str, object]]:
    done = run_cli("--config", str(setup.path), "status", "--json", *extra)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["reports"])


def keys(rows: list[dict[str, object]]) -> set[tuple[object, object, object]]:
    return {(r["job"], r["database"], r["status"]) for r in rows}


def test_a_job_level_failure_shows_until_the_job_runs_again_then_history_keeps_it(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    prom = use_metrics(setup)
    only_shop(setup, cluster)
    good_port = setup.job()["connection"]["port"]
    setup.job()["connection"]["port"] = 1  # the server is down: its databases are unknown
    setup.write()
    failed = run_cli("--config", str(setup.path), "run", "nightly")
    assert failed.returncode == 1, failed.stderr
    assert keys(status_rows(run_cli, setup)) == {("nightly", "*", "FAILED")}
    assert {"backup_job": "nightly", "database": "*"} in names_of(
        parse(prom.read_text()), "db_backup_last_run_success"
    )

    time.sleep(1.1)  # a later start, to the second
    setup.job()["connection"]["port"] = good_port
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert keys(status_rows(run_cli, setup)) == {("nightly", "shop", "SUCCESS")}
    text = prom.read_text()
    assert 'database="*"' not in text
    assert {"backup_job": "nightly", "database": "shop"} in names_of(
        parse(text), "db_backup_last_run_success"
    )
    assert ("nightly", "*", "FAILED") in keys(status_rows(run_cli, setup, "--history"))


def test_a_job_or_database_removed_from_the_config_leaves_status_and_metrics(
    setup: Setup, run_cli: RunCli
) -> None:
    prom = use_metrics(setup)
    setup.job()["globals"] = False
    setup.job()["databases"] = ["shop", "crm"]
    old = {**setup.job(), "name": "old", "databases": "shop"}
    setup.document["jobs"].append(old)
    setup.write()
    for job in ("nightly", "old"):
        done = run_cli("--config", str(setup.path), "run", job)
        assert done.returncode == 0, done.stderr
    assert keys(status_rows(run_cli, setup)) == {
        ("nightly", "shop", "SUCCESS"),
        ("nightly", "crm", "SUCCESS"),
        ("old", "shop", "SUCCESS"),
    }
    setup.document["jobs"].pop()  # job `old` removed, database crm no longer listed
    setup.job()["databases"] = ["shop"]
    setup.write()
    assert keys(status_rows(run_cli, setup)) == {("nightly", "shop", "SUCCESS")}
    done = run_cli("--config", str(setup.path), "run", "nightly")  # rewrites the metrics file
    assert done.returncode == 0, done.stderr
    series = names_of(parse(prom.read_text()), "db_backup_last_run_success")
    assert series == [{"backup_job": "nightly", "database": "shop"}]
    assert len(status_rows(run_cli, setup, "--history")) == 4  # history keeps every report


def test_a_database_name_with_a_newline_cannot_forge_a_status_row(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    quoted = EVIL.replace('"', '""')
    cluster.psql(f'CREATE DATABASE "{quoted}"')
    try:  # the cluster is the session's: the name must not reach other tests' `all` jobs
        setup.job()["databases"] = [EVIL]
        setup.job()["globals"] = False
        setup.write()
        done = run_cli("--config", str(setup.path), "run", "nightly")
        assert done.returncode == 0, done.stderr
        shown = run_cli("--config", str(setup.path), "status")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert len(lines) == 3, shown.stdout  # header, one row, footer
        assert not any(line.startswith(FORGED[:20]) for line in lines)
        assert f"evil\\n{FORGED}" in lines[1]
        history = run_cli("--config", str(setup.path), "status", "--history")
        assert len(history.stdout.splitlines()) == 3, history.stdout
    finally:
        cluster.psql(f'DROP DATABASE IF EXISTS "{quoted}"')
