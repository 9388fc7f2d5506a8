"""What a user sees of real backups under a real systemd: schedule, OSS, journal, timer, stop.

One fresh container: PostgreSQL and the .deb installed, the loopback OSS server running on the
host (the container shares the host network), secrets passed with LoadCredential=.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest

from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OssServerProcess,
)

from .conftest import PSQL, BootContainer, Container, use_oss, wait_for

pytestmark = pytest.mark.e2e

UNIT = "db-backup.service"
REPORTS = "/data/db-backups/reports"
DATA = "/data/db-backups/data"


@pytest.fixture(scope="module")
def flow(boot_container: BootContainer, oss: OssServerProcess) -> Iterator[Container]:
    """A container whose daemon runs `minutely` (e2edb, local+OSS) and `slow` (bulkdb, local)."""
    with boot_container("flow", install=True) as ct:
        ct.exec([*PSQL, "-c", "CREATE DATABASE e2edb"])
        ct.exec([*PSQL, "-d", "e2edb", "-c",
                 "CREATE TABLE items AS SELECT i AS id, md5(i::text) AS body "
                 "FROM generate_series(1, 50000) i"])  # fmt: skip
        ct.exec([*PSQL, "-c", "CREATE DATABASE bulkdb"])
        ct.exec([*PSQL, "-d", "bulkdb", "-c",
                 "CREATE TABLE blob AS SELECT i, md5(i::text) || md5((i*3)::text) AS a, "
                 "md5((i*7)::text) AS b FROM generate_series(1, 5000000) i"],
                timeout=300)  # fmt: skip
        storage = use_oss(ct, oss, UNIT, mode="both")
        ct.write_file(
            "/etc/db-backup/config.yaml",
            f"""
directories: {{logs: /var/log/db-backup}}
{storage}daemon: {{max_parallel: 2}}
jobs:
  - name: minutely
    schedule: "* * * * *"
    databases: [e2edb]
  - name: slow
    schedule: "* * * * *"
    databases: bulkdb
    mode: local
    globals: false
""",
            0o640,
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
        ct.systemctl("daemon-reload")
        ct.systemctl("restart", UNIT)
        ct.wait_active(UNIT)
        yield ct


def reports(ct: Container) -> list[dict]:
    out = ct.sh(f'for f in {REPORTS}/*.json; do [ -e "$f" ] && cat "$f" && echo; done || true')
    decoder = json.JSONDecoder()
    found, text = [], out.stdout.strip()
    while text:
        doc, end = decoder.raw_decode(text)
        found.append(doc)
        text = text[end:].strip()
    return found


def test_scheduled_run_uploads_to_oss_restores_and_logs_journal_fields(
    flow: Container, oss: OssServerProcess
) -> None:
    def success() -> dict | None:
        done = [r for r in reports(flow) if r["job"] == "minutely" and r["status"] == "SUCCESS"]
        return done[0] if done else None

    report = wait_for(success, 130, what="a SUCCESS report of the minutely job")
    print(json.dumps(report, indent=2))
    assert report["mode"] == "both" and report["tool"] == "oss2"
    name = Path(report["local"]["file"]).name
    assert report["remote"]["urls"] == [f"oss://{OSS_BUCKET}/postgres/backups/{name}"]
    check = flow.sh(f"cd {DATA} && sha256sum -c {name}.sha256")
    assert check.stdout.strip() == f"{name}: OK"

    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss.endpoint, OSS_BUCKET
    )
    remote = bucket.get_object(f"postgres/backups/{name}").read()
    local = flow.exec(["sha256sum", f"{DATA}/{name}"]).stdout.split()[0]
    assert hashlib.sha256(remote).hexdigest() == local == report["local"]["checksumSha256"]

    flow.exec(["runuser", "-u", "postgres", "--", "createdb", "e2e_restored"])
    flow.exec(["runuser", "-u", "postgres", "--", "pg_restore", "-d", "e2e_restored",
               "--exit-on-error", f"{DATA}/{name}"])  # fmt: skip
    count = flow.exec(["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-d",
                       "e2e_restored", "-c", "SELECT count(*) FROM items"]).stdout.strip()  # fmt: skip
    assert count == "50000"

    journal = flow.exec(["journalctl", "-u", UNIT, "-o", "json", "--no-pager"]).stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    finished = [e for e in entries if e.get("JOB") == "minutely" and e.get("DATABASE") == "e2edb"
                and e.get("STATUS") == "SUCCESS"]  # fmt: skip
    assert finished, "no journal entry with JOB/DATABASE/STATUS fields"
    entry = finished[0]
    assert int(entry["BYTES"]) == report["local"]["sizeBytes"]
    assert entry["SYSLOG_IDENTIFIER"] == "db-backup" and entry["PRIORITY"] == "6"
    assert entry["REPORT"].startswith(REPORTS)
    assert OSS_ACCESS_KEY_SECRET not in journal
    assert flow.exec(["sh", "-c", "ls /var/log/db-backup/backup_*.log"]).returncode == 0


def test_timer_run_is_excluded_while_the_daemon_runs_the_job_then_stop_is_clean(
    flow: Container,
) -> None:
    def slow_running() -> bool:
        return "running slow" in flow.unit_property(UNIT, "StatusText")

    wait_for(slow_running, 130, what="the daemon running the slow job")
    flow.write_file(
        "/etc/systemd/system/db-backup@slow.timer.d/e2e.conf",
        "[Timer]\nOnCalendar=\nRandomizedDelaySec=0\nOnActiveSec=1s\nAccuracySec=1s\n",
    )
    flow.systemctl("daemon-reload")
    flow.systemctl("start", "db-backup@slow.timer")

    def timer_service_done() -> bool:
        # One `systemctl show` reads the properties together: read one by one, they could mix
        # the state before the start with a start time after it.
        shown = flow.systemctl(
            "show", "-p", "ActiveState", "-p", "ExecMainExitTimestampMonotonic",
            "db-backup@slow.service",
        ).stdout  # fmt: skip
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        return props.get("ActiveState") in {"failed", "inactive"} and props.get(
            "ExecMainExitTimestampMonotonic"
        ) not in {None, "", "0"}

    wait_for(timer_service_done, 60, what="the timer's run of the slow job to exit")

    def timer_log_with_the_refusal() -> str | None:
        log = flow.exec(["journalctl", "-u", "db-backup@slow.service", "--no-pager"]).stdout
        return log if "job 'slow' is already running" in log else None

    timer_log = wait_for(timer_log_with_the_refusal, 30, what="the timer run's refusal logged")
    print(timer_log)
    assert flow.unit_property("db-backup@slow.service", "ExecMainStatus") == "75"
    assert slow_running(), "the daemon's run must go on undisturbed"

    # Stop the service in the middle of that dump.
    # Files being written live in <data>/.db-backup-tmp/, named <job>.<file>.
    temporaries = f"ls -A {DATA}/.db-backup-tmp 2>/dev/null"
    assert flow.sh(f"{temporaries} | grep -c '^slow\\.' || true").stdout.strip() != "0"
    started = time.monotonic()
    flow.systemctl("stop", UNIT)
    took = time.monotonic() - started
    print(f"systemctl stop took {took:.1f} s")
    assert took < 90, "TimeoutStopSec=90 in db-backup.service"
    assert flow.is_active(UNIT) == "inactive"
    assert flow.unit_property(UNIT, "Result") == "success"
    leftovers = flow.sh(f"{temporaries} || true").stdout.strip()
    assert leftovers == ""
    failed = [r for r in reports(flow) if r["job"] == "slow" and r["status"] == "FAILED"]
    assert failed and "db-backup daemon stopping (SIGTERM)" in failed[-1]["errorMessage"]
    dumps = flow.sh(f"ls {DATA} | grep '^bulkdb_.*\\.dump$' || true").stdout.split()
    good = [r for r in reports(flow) if r["job"] == "slow" and r["status"] == "SUCCESS"]
    assert len(dumps) == len(good), "a stopped dump left a file that looks like a backup"
    flow.systemctl("start", UNIT)
    flow.wait_active(UNIT)
