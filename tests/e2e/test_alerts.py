"""A failed backup under the real unit: its alert reaches a webhook, its metrics file appears.

One fresh container with the package: the job `broken` names a database that does not exist,
the webhook URL is a secret file readable by the service, the metrics go to node_exporter's
textfile directory. `systemctl start db-backup@broken.service` runs the job in the shipped,
sandboxed unit; the receiver listens on the host's loopback (the container shares the network).
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
jobs:
  - name: broken
    schedule: "0 3 1 1 *"
    databases: [no_such_database]
""",
            0o640,
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
        ct.exec(["db-backup", "check-config"])
        yield ct


def test_failed_backup_in_the_unit_alerts_the_webhook_and_writes_the_metrics_file(
    alerting: Container, receiver: Receiver
) -> None:
    started = time.time()
    done = alerting.systemctl("start", "db-backup@broken.service", check=False)
    assert done.returncode != 0  # the run failed, so the oneshot unit fails
    [request] = receiver.wait_for(1, timeout=60)
    alert = request.json()
    assert alert["kind"] == "backup"
    assert alert["ok"] is False
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
