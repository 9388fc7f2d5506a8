"""An upgrade that lands while the daemon runs a backup: the backup still ends SUCCESS.

The package's postinst restarts the daemon onto the new code. The dump running then is stopped
(its report says FAILED, "daemon stopping"), the daemon records that it owes a re-run, and the
new daemon runs it again at once, not at the next slot; it ends SUCCESS. The dump is made to be
running for as long as the test needs by a session holding a lock on the table it reads (pg_dump
waits for it, as it would behind a long migration); the lock is released after the upgrade.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from .conftest import PSQL, BootContainer, Container, deb_version, install_deb, wait_for

pytestmark = pytest.mark.e2e

UNIT = "db-backup.service"
REPORTS = "/data/db-backups/reports"
STATE = "/var/lib/db-backup/state.json"
LOCKER = "e2e-locker.service"


@pytest.fixture(scope="module")
def busy(boot_container: BootContainer) -> Iterator[Container]:
    """A container with the .deb installed and a database `busydb` whose table can be locked."""
    with boot_container("upgrade-busy", install=True) as ct:
        ct.exec([*PSQL, "-c", "CREATE DATABASE busydb"])
        ct.exec([*PSQL, "-d", "busydb", "-c",
                 "CREATE TABLE t AS SELECT i, md5(i::text) AS body FROM generate_series(1, 20000) i"])  # fmt: skip
        yield ct


def lock_table(ct: Container) -> None:
    """Holds ACCESS EXCLUSIVE on busydb.t from a transient unit until `unlock_table`."""
    ct.exec(["systemd-run", f"--unit={LOCKER}", "--uid=postgres", "--setenv=PGAPPNAME=e2e-locker",
             "--", "psql", "-X", "-d", "busydb", "-c",
             "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(900);"])  # fmt: skip
    granted = (
        "SELECT count(*) FROM pg_locks WHERE granted AND mode = 'AccessExclusiveLock' "
        "AND relation = 't'::regclass"
    )

    def held() -> bool:
        out = ct.exec([*PSQL, "-d", "busydb", "-A", "-t", "-c", granted], check=False).stdout
        return out.strip() == "1"

    wait_for(held, 30, what="the lock on busydb.t")


def unlock_table(ct: Container) -> None:
    """Ends the locking session (the server would hold the lock through pg_sleep otherwise)."""
    ct.exec([*PSQL, "-c", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE application_name = 'e2e-locker'"])  # fmt: skip
    ct.systemctl("stop", LOCKER, check=False)


def reports(ct: Container) -> list[dict]:
    out = ct.sh(f'for f in {REPORTS}/*.json; do [ -e "$f" ] && cat "$f" && echo; done || true')
    decoder, found, text = json.JSONDecoder(), [], out.stdout.strip()
    while text:
        document, end = decoder.raw_decode(text)
        found.append(document)
        text = text[end:].strip()
    return sorted(found, key=lambda r: r["startedAt"])


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def start_the_nights_backup(ct: Container) -> None:
    """Configures job `nightly` (busydb, local) with a slot missed 2 minutes ago; restarts.

    The daemon catches the missed run up as soon as it starts.
    """
    now = datetime.fromisoformat(ct.exec(["date", "-u", "+%Y-%m-%dT%H:%M:%S+00:00"]).stdout.strip())
    slot = now - timedelta(minutes=2)
    ct.write_file(
        "/etc/db-backup/config.yaml",
        f"""
directories: {{logs: /var/log/db-backup}}
storage: {{mode: local}}
jobs:
  - name: nightly
    schedule: "{slot.minute} {slot.hour} * * *"
    timezone: UTC
    databases: [busydb]
    globals: false
""",
        0o640,
    )
    ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
    yesterday = (slot - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ct.systemctl("stop", UNIT)
    ct.write_file(STATE, json.dumps({"nightly": {"last_run_utc": yesterday,
                                                 "last_status": "SUCCESS",
                                                 "last_finished_utc": yesterday}}), 0o600)  # fmt: skip
    ct.exec(["chown", "postgres:postgres", STATE])
    ct.systemctl("start", UNIT)


def test_a_backup_cut_short_by_the_upgrade_is_run_again_at_once_and_succeeds(
    busy: Container, upgrade_deb_path: Path
) -> None:
    lock_table(busy)
    start_the_nights_backup(busy)
    wait_for(lambda: "running nightly" in busy.unit_property(UNIT, "StatusText"), 60,
             what="the daemon running the night's backup")  # fmt: skip
    before = busy.unit_property(UNIT, "ExecMainStartTimestampMonotonic")

    # What unattended-upgrades (or an admin) does at night: the documented non-interactive call.
    started = time.monotonic()
    output = install_deb(busy, upgrade_deb_path)
    print(output.stdout)
    print(
        f"apt-get install of the upgrade, during the backup, took {time.monotonic() - started:.1f} s"
    )
    assert busy.exec(["dpkg-query", "-W", "-f=${Version}", "db-backup"]).stdout == (
        deb_version(upgrade_deb_path)
    )
    busy.wait_active(UNIT)
    assert busy.unit_property(UNIT, "ExecMainStartTimestampMonotonic") != before

    # The new daemon took the owed run up at once (it waits on the lock, as the first did).
    wait_for(lambda: "running nightly" in busy.unit_property(UNIT, "StatusText"), 60,
             what="the re-run")  # fmt: skip
    unlock_table(busy)
    wait_for(lambda: any(r["status"] == "SUCCESS" for r in reports(busy)), 120,
             what="the re-run's SUCCESS report")  # fmt: skip

    cut, rerun = reports(busy)
    assert (
        cut["status"] == "FAILED" and "db-backup daemon stopping (SIGTERM)" in cut["errorMessage"]
    )
    assert (cut["trigger"], cut["attempt"]) == ("schedule", 1)
    assert rerun["status"] == "SUCCESS"
    assert (rerun["trigger"], rerun["attempt"]) == ("rerun", 1)
    gap = (utc(rerun["startedAt"]) - utc(cut["finishedAt"])).total_seconds()
    print(f"re-run started {gap:.1f} s after the cut-short run's report")
    assert gap < 60, "the re-run must not wait for the next slot (tomorrow)"

    # The loop records the run's end in the state file at its next tick after the report.
    def recorded_success() -> dict | None:
        state = json.loads(busy.read_file(STATE))["nightly"]
        return state if state["last_status"] == "SUCCESS" else None

    state = wait_for(recorded_success, 30, what="the state file to record the re-run")
    assert "pending" not in state and "running" not in state
    journal = busy.exec(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]).stdout
    assert "run cut short by the stop; it runs again at the next start" in journal
    assert "owed run planned" in journal
