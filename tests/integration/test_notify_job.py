"""Alerts from real runs: `db-backup run` against a real PostgreSQL, a loopback receiver listening."""

from __future__ import annotations

import json
import socket

import pytest

from db_backup.observe import events
from tests.conftest import RunCli, Setup
from tests.support.pgcluster import Cluster, free_port
from tests.support.receivers import Receiver

pytestmark = pytest.mark.integration


def _notify_to(setup: Setup, url_env: str, **section: object) -> None:
    setup.document["notifications"] = {
        "hostname": None,
        "attempts": 2,
        "backoff_seconds": 0.1,
        "timeout_seconds": 5,
        **section,
        "channels": [{"name": "hook", "type": "webhook", "url": {"env": url_env}}],
    }
    setup.write()


def test_a_failed_backup_alerts_once_naming_host_job_database_error_and_report(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["databases"] = ["no_such_db"]
    _notify_to(setup, "HOOK_URL")
    with Receiver() as receiver:
        env = {"HOOK_URL": receiver.url("/alerts")}
        first = run_cli("--config", str(setup.path), "run", "nightly", env=env)
        assert first.returncode != 0
        [report_path] = sorted(setup.reports.glob("*.json"))
        report = json.loads(report_path.read_text())
        assert report["status"] == "FAILED"
        [request] = receiver.wait_for(1)
        body = request.json()
        assert body["event"] == "backup_failed" and body["state"] == "failed"
        assert body["host"] == socket.gethostname() == report["hostname"]
        assert body["job"] == "nightly" and body["database"] == "no_such_db"
        assert body["report_path"] == str(report_path)
        assert "no_such_db" in body["message"] and body["message"] == report["errorMessage"]
        for part in ("nightly", "no_such_db", str(report_path), report["errorMessage"]):
            assert part in body["text"], part

        # The next run (a new process, as from the timer) fails again: no second alert.
        second = run_cli("--config", str(setup.path), "run", "nightly", env=env)
        assert second.returncode == first.returncode
        assert len(sorted(setup.reports.glob("*.json"))) == 2
        assert len(receiver.requests) == 1
    entries = json.loads((setup.state / "notify-state.json").read_text())["entries"]
    assert entries["backup|nightly|no_such_db|"]["failures"] == 2


def test_recovery_is_told_after_the_database_comes_back(
    setup: Setup, run_cli: RunCli, cluster: Cluster
) -> None:
    cluster.psql("DROP DATABASE IF EXISTS flaky")
    setup.job()["databases"] = ["flaky"]
    _notify_to(setup, "HOOK_URL", language="zh")
    with Receiver() as receiver:
        env = {"HOOK_URL": receiver.url("/alerts")}
        assert run_cli("--config", str(setup.path), "run", "nightly", env=env).returncode != 0
        cluster.psql("CREATE DATABASE flaky")
        try:
            done = run_cli("--config", str(setup.path), "run", "nightly", env=env)
            assert done.returncode == 0, done.stderr
        finally:
            cluster.psql("DROP DATABASE IF EXISTS flaky")
        failed, recovered = (r.json() for r in receiver.wait_for(2))
    assert failed["state"] == "failed" and recovered["state"] == "recovered"
    assert recovered["ok"] is True and recovered["failures"] == 1
    assert "已恢复" in recovered["title"] and "flaky" in recovered["text"]
    assert recovered["report"]["status"] == "SUCCESS"


def test_a_receiver_that_is_down_leaves_the_backup_successful(
    setup: Setup, run_cli: RunCli
) -> None:
    _notify_to(setup, "HOOK_URL", events={"backup_succeeded": True})
    env = {"HOOK_URL": f"http://127.0.0.1:{free_port()}/alerts"}
    done = run_cli("--config", str(setup.path), "run", "nightly", env=env)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS" and report["errorMessage"] == ""
    assert events.failure_counts(setup.state) == {"notify:hook": 1}
    assert "alert not delivered" in done.stderr
    assert "/alerts" not in done.stderr  # the URL is a secret: masked


def test_a_failed_backup_with_the_receiver_down_is_still_just_failed(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["databases"] = ["no_such_db"]
    _notify_to(setup, "HOOK_URL")
    env = {"HOOK_URL": f"http://127.0.0.1:{free_port()}/alerts"}
    done = run_cli("--config", str(setup.path), "run", "nightly", env=env)
    [report] = setup.reports_json()
    assert report["status"] == "FAILED" and "no_such_db" in report["errorMessage"]
    assert events.failure_counts(setup.state) == {"notify:hook": 1}
    # With the receiver back, the next failure alerts at once: the first alert never arrived.
    with Receiver() as receiver:
        env = {"HOOK_URL": receiver.url("/alerts")}
        again = run_cli("--config", str(setup.path), "run", "nightly", env=env)
        assert again.returncode == done.returncode
        [request] = receiver.wait_for(1)
    assert request.json()["state"] == "failed" and request.json()["failures"] == 2


def test_notify_test_names_the_channels_that_failed(setup: Setup, run_cli: RunCli) -> None:
    setup.document["notifications"] = {
        "attempts": 1,
        "channels": [
            {"name": "hook", "type": "webhook", "url": {"env": "HOOK_URL"}},
            {"name": "broken-slack", "type": "slack", "url": {"env": "DOWN_URL"}},
        ],
    }
    setup.write()
    with Receiver() as receiver:
        env = {
            "HOOK_URL": receiver.url("/alerts"),
            "DOWN_URL": f"http://127.0.0.1:{free_port()}/x",
        }
        done = run_cli("--config", str(setup.path), "notify-test", env=env)
        [request] = receiver.wait_for(1)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == "hook: sent"
    assert done.stdout.splitlines()[1].startswith("broken-slack: FAILED: cannot reach the server")
    assert "test alert not delivered to: broken-slack" in done.stderr
    assert request.json()["state"] == "test"
    # A test is a check of the set-up, not an outage: nothing is counted for the metrics.
    assert events.failure_counts(setup.state) == {}
    checked = run_cli("--config", str(setup.path), "check-config", env={"HOOK_URL": "x"})
    assert checked.returncode == 78
    assert "At 'notifications.channels[1].url': environment variable DOWN_URL is not set" in (
        checked.stderr
    )
