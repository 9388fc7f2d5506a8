"""The restore drill as a timer user runs it: db-backup-drill@<job>.timer under a real systemd.

A fresh container with PostgreSQL and the .deb: a backup of a database whose tables belong to a
role other than postgres, then the drill timer fires, the drill service (User=postgres, the
shipped hardening) makes a throwaway cluster under /var/lib/db-backup/drill, restores roles and
the dump into it, writes a SUCCESS drill report that `db-backup status` shows, and leaves no
cluster or server process behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .conftest import BootContainer, Container, wait_for

pytestmark = pytest.mark.e2e

DRILLS = "/data/db-backups/reports/drills"


@pytest.fixture(scope="module")
def drill_ct(boot_container: BootContainer) -> Iterator[Container]:
    with boot_container("drill", install=True) as ct:
        psql = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        ct.exec([*psql, "-c", "CREATE ROLE zz_app_owner LOGIN"])
        ct.exec([*psql, "-c", "CREATE DATABASE drilldb OWNER zz_app_owner"])
        ct.exec([*psql, "-d", "drilldb", "-c",
                 "SET ROLE zz_app_owner; CREATE TABLE items AS SELECT i AS id, md5(i::text) AS body "
                 "FROM generate_series(1, 20000) i"])  # fmt: skip
        ct.write_file(
            "/etc/db-backup/config.yaml",
            """
directories: {logs: /var/log/db-backup}
storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 * * *"
    databases: [drilldb]
    drill:
      checks:
        - {name: items are there, sql: "SELECT count(*) = 20000 FROM items"}
""",
            0o640,
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
        ct.systemctl("daemon-reload")
        ct.systemctl("restart", "db-backup.service")
        ct.wait_active("db-backup.service")
        yield ct


def drill_reports(ct: Container) -> list[dict]:
    out = ct.sh(f'for f in {DRILLS}/*.json; do [ -e "$f" ] && cat "$f" && echo; done || true')
    decoder = json.JSONDecoder()
    found, text = [], out.stdout.strip()
    while text:
        doc, end = decoder.raw_decode(text)
        found.append(doc)
        text = text[end:].strip()
    return found


def test_drill_timer_restores_the_newest_backup_into_a_throwaway_cluster(
    drill_ct: Container,
) -> None:
    drill_ct.systemctl("start", "db-backup@nightly.service")
    assert drill_ct.unit_property("db-backup@nightly.service", "Result") == "success"
    drill_ct.write_file(
        "/etc/systemd/system/db-backup-drill@nightly.timer.d/e2e.conf",
        "[Timer]\nOnCalendar=\nRandomizedDelaySec=0\nOnActiveSec=1s\nAccuracySec=1s\n",
    )
    drill_ct.systemctl("daemon-reload")
    drill_ct.systemctl("enable", "--now", "db-backup-drill@nightly.timer")
    timers = drill_ct.exec(["systemctl", "list-timers", "--all", "db-backup-drill@*"]).stdout
    assert "db-backup-drill@nightly.timer" in timers

    def finished() -> dict | None:
        done = drill_reports(drill_ct)
        return done[0] if done else None

    report = wait_for(finished, 240, what="a drill report from the drill timer's service")
    print(json.dumps(report, indent=2))
    assert report["status"] == "SUCCESS", report["errorMessage"]
    assert report["job"] == "nightly" and report["database"] == "drilldb"
    assert report["trigger"] == "manual" and report["target"]["kind"] == "cluster"
    assert report["checks"] == [{"name": "items are there", "database": "drilldb", "passed": True}]

    def service_done() -> bool:
        return drill_ct.unit_property("db-backup-drill@nightly.service", "ActiveState") in {
            "inactive",
            "failed",
        }

    wait_for(service_done, 60, what="the drill service to finish")
    assert drill_ct.unit_property("db-backup-drill@nightly.service", "Result") == "success"
    journal = drill_ct.exec(
        ["journalctl", "-u", "db-backup-drill@nightly.service", "-o", "json", "--no-pager"]
    ).stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    assert [e for e in entries if e.get("STATUS") == "SUCCESS" and e.get("JOB") == "nightly"]
    leftovers = drill_ct.sh("ls -A /var/lib/db-backup/drill 2>/dev/null || true").stdout.split()
    assert [name for name in leftovers if not name.endswith(".json")] == []
    servers = drill_ct.sh("pgrep -af 'postgres.*/var/lib/db-backup/drill' || true").stdout
    assert servers.strip() == ""
    status = drill_ct.exec(["db-backup", "status"]).stdout
    assert "drill" in status and "nightly/drilldb  SUCCESS" in status
