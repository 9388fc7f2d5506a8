"""A failed backup under the real unit: its alert reaches a webhook, its metrics file appears.

One fresh container with the package: the job `broken` names a database that does not exist,
the webhook URL is a secret file readable by the service, the metrics go to node_exporter's
textfile directory, and the database sink writes to a `platform` database on the container's
PostgreSQL. `systemctl start db-backup@broken.service` runs the job in the shipped, sandboxed
unit; the receiver listens on the host's loopback (the container shares the network). Then the
README's commands for alerts and the platform's table run as root, as an admin would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.receivers import Receiver

from .conftest import BootContainer, Container, wait_for

pytestmark = pytest.mark.e2e

TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
METRICS = f"{TEXTFILE_DIR}/db_backup.prom"
METRICS_PORT = 9187  # the README's; the container shares the host's network


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as found:
        yield found


@pytest.fixture(scope="module")
def alerting(boot_container: BootContainer, receiver: Receiver) -> Iterator[Container]:
    """A container whose config alerts a generic webhook and writes the metrics textfile."""
    with boot_container("alerts", install=True) as ct:
        ct.exec(["install", "-d", "-m", "0750", "-g", "postgres", "/etc/db-backup/credentials"])
        ct.write_file("/etc/db-backup/credentials/webhook-url", receiver.url("/hook") + "\n", 0o640)
        ct.exec(["chgrp", "postgres", "/etc/db-backup/credentials/webhook-url"])
        # What a DBA does for node_exporter: its textfile directory, writable by the service.
        ct.exec(["install", "-d", "-m", "0775", "-g", "postgres", TEXTFILE_DIR])
        # The platform's database, reached over the local socket as the postgres role.
        psql = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        ct.exec([*psql, "-c", "CREATE DATABASE platform"])
        ct.write_file(
            "/etc/db-backup/credentials/sink-dsn", "host=/var/run/postgresql dbname=platform", 0o640
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/credentials/sink-dsn"])
        ct.write_file(
            "/etc/db-backup/config.yaml",
            f"""
directories: {{logs: /var/log/db-backup}}
storage: {{mode: local}}
notifications:
  language: en
  channels:
    - name: platform
      type: webhook
      url: {{file: /etc/db-backup/credentials/webhook-url}}
metrics:
  textfile_dir: {TEXTFILE_DIR}
  listen: "127.0.0.1:{METRICS_PORT}"
sink:
  dsn: {{file: /etc/db-backup/credentials/sink-dsn}}
jobs:
  - name: broken
    schedule: "0 3 1 1 *"
    databases: [no_such_database]
  - name: nightly
    schedule: "0 3 1 1 *"
    databases: [platform]
""",
            0o640,
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
        ct.exec(["db-backup", "check-config"])
        ct.systemctl("restart", "db-backup.service")  # `metrics.listen` is read at start
        ct.wait_active("db-backup.service")
        yield ct


def test_failed_backup_in_the_unit_alerts_the_webhook_and_writes_the_metrics_file(
    alerting: Container, receiver: Receiver
) -> None:
    started = time.time()
    done = alerting.systemctl("start", "db-backup@broken.service", check=False)
    assert done.returncode != 0  # the run failed, so the oneshot unit fails
    [request] = receiver.wait_for(1, timeout=60)
    alert = request.json()
    assert alert["source"] == "db-backup"
    assert alert["kind"] == "backup"
    assert alert["ok"] is False
    assert alert["report"]["status"] == "FAILED"
    assert alert["job"] == "broken"
    assert alert["database"] == "no_such_database"
    assert "no_such_database" in alert["message"]
    report_path = alert["report_path"]
    assert report_path.startswith("/data/db-backups/reports/")
    report = json.loads(alerting.read_file(report_path))
    assert report["status"] == "FAILED"

    wait_for(lambda: alerting.sh(f"test -s {METRICS}", check=False).returncode == 0, 30)
    mode = alerting.exec(["stat", "-c", "%a %U", METRICS]).stdout.split()
    assert mode[0] in {"644", "640"} and mode[1] == "postgres", mode
    samples = {
        (s.name, s.labels.get("backup_job"), s.labels.get("database")): s.value
        for family in text_string_to_metric_families(alerting.read_file(METRICS))
        for s in family.samples
    }
    assert samples[("db_backup_last_run_success", "broken", "no_such_database")] == 0
    finished = samples[("db_backup_last_run_timestamp_seconds", "broken", "no_such_database")]
    assert finished >= started - 5
    journal = alerting.exec(
        ["journalctl", "-u", "db-backup@broken.service", "-o", "cat", "--no-pager"]
    ).stdout
    assert "backup finished" in journal
    assert receiver.url("/hook") not in journal  # the webhook URL is a secret


def platform_rows(ct: Container) -> list[str]:
    done = ct.exec(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-d", "platform", "-c",
         "SELECT job || '|' || database || '|' || status FROM db_backup_job ORDER BY started_at"]
    )  # fmt: skip
    return done.stdout.split()


def test_readme_commands_for_alerts_and_the_platform_table_work_on_the_installed_package(
    alerting: Container, receiver: Receiver
) -> None:
    if not platform_rows_exist(alerting):
        alerting.systemctl("start", "db-backup@broken.service", check=False)
    before = len(receiver.requests)
    # `sudo db-backup notify-test`: one test message per channel, exit 0 when all arrived.
    done = alerting.exec(["db-backup", "notify-test"], check=False)
    assert done.returncode == 0, done.stderr
    [test_message] = receiver.wait_for(before + 1, timeout=60)[before:]
    assert test_message.json()["kind"] == "test"
    # The failed run's report is in the platform's table (path A, upserted by the unit's run).
    assert "broken|no_such_database|FAILED" in platform_rows(alerting)
    # `sudo db-backup sync-reports` (path B) loads the same report again: no duplicate.
    done = alerting.exec(["db-backup", "sync-reports"], check=False)
    assert done.returncode == 0, done.stderr
    assert platform_rows(alerting).count("broken|no_such_database|FAILED") == 1
    # `sudo db-backup status --from-db`: the fleet view names this host's failed database.
    done = alerting.exec(["db-backup", "status", "--from-db"], check=False)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if "no_such_database" in x)
    assert "FAILED" in line and "broken" in line
    done = alerting.exec(
        [
            "db-backup",
            "status",
            "--from-db",
            "--status",
            "FAILED",
            "--since",
            "2026-11-01",
            "--json",
        ],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    fleet = json.loads(done.stdout)
    assert any(r["database"] == "no_such_database" for r in fleet["reports"]), fleet
    # `sudo db-backup status`: the job's last success is "never", and the failure is listed.
    done = alerting.exec(["db-backup", "status"], check=False)
    assert done.returncode == 0, done.stderr
    assert "no_such_database" in done.stdout


def platform_rows_exist(ct: Container) -> bool:
    done = ct.exec(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-d", "platform", "-c",
         "SELECT count(*) FROM db_backup_job"],
        check=False,
    )  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() not in {"", "0"}


def test_readme_metrics_commands_work_on_the_installed_package(alerting: Container) -> None:
    # `sudo db-backup run nightly && cat /var/lib/prometheus/node-exporter/db_backup.prom`
    done = alerting.sh(f"db-backup run nightly && cat {METRICS}", check=False)
    assert done.returncode == 0, done.stderr
    assert 'db_backup_last_run_success{backup_job="nightly",database="platform"} 1.0' in done.stdout
    # `curl -s http://127.0.0.1:9187/metrics`: the daemon of db-backup.service serves the same.
    alerting.exec(
        ["apt-get", "install", "-y", "--no-install-recommends", "curl"],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        timeout=300,
    )
    wait_for(
        lambda: (
            "db_backup_last_run_success"
            in alerting.sh(f"curl -s http://127.0.0.1:{METRICS_PORT}/metrics", check=False).stdout
        ),
        30,
    )
    scraped = alerting.sh(f"curl -s http://127.0.0.1:{METRICS_PORT}/metrics").stdout
    assert 'db_backup_last_run_success{backup_job="nightly",database="platform"} 1.0' in scraped
