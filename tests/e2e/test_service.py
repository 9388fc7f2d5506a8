"""db-backup.service under a real systemd: start, status line, reload, watchdog, hardening.

Nothing here skips on its own: a daemon that does not start, or a status line that says the wrong
thing, fails. (The tier as a whole skips only when the machine cannot run containers.)
"""

from __future__ import annotations

import re

import pytest

from .conftest import Container, wait_for

UNIT = "db-backup.service"
CONFIG = "/etc/db-backup/config.yaml"
WATCHDOG_DROPIN = "/etc/systemd/system/db-backup.service.d/e2e-watchdog.conf"
# `systemd-analyze security` exposure (0.0 best .. 10.0 worst); the shipped unit scores 1.4 with
# systemd 252. A change that weakens the sandbox beyond this has to raise it on purpose.
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def service(container: Container) -> Container:
    """The shared container, once db-backup.service (shipped config) is active."""
    container.wait_active(UNIT, timeout=60)
    return container


def print_status(ct: Container) -> None:
    print(ct.systemctl("status", UNIT, "--lines=30", check=False).stdout)


def journal_cursor(ct: Container) -> str:
    """Return the cursor of the newest journal entry, to read only what comes after it."""
    out = ct.exec(["journalctl", "-n", "1", "--show-cursor", "--no-pager", "-q"]).stdout
    match = re.search(r"^-- cursor: (\S+)", out, flags=re.M)
    assert match, out
    return match.group(1)


def journal_after(ct: Container, cursor: str) -> str:
    """Return the unit's journal entries after ``cursor``."""
    argv = ["journalctl", "-u", UNIT, "--no-pager", "-q", f"--after-cursor={cursor}"]
    return ct.exec(argv, check=False).stdout


def wait_journal(ct: Container, cursor: str, text: str, timeout: float = 30) -> str:
    """Wait until an entry of the unit after ``cursor`` contains ``text``; return the entries."""

    def entries_with_text() -> str | None:
        entries = journal_after(ct, cursor)
        return entries if text in entries else None

    return wait_for(entries_with_text, timeout, what=f"{text!r} in the journal of {UNIT}")


def test_service_is_active_after_install_with_a_status_line_naming_the_next_run(
    service: Container,
) -> None:
    print_status(service)
    assert service.is_active(UNIT) == "active"
    assert service.unit_property(UNIT, "Type") == "notify"
    # The shipped config has one job, `nightly`; its next run as `db-backup next` computes it.
    upcoming = service.exec(["db-backup", "next", "nightly", "-n", "1"]).stdout
    print(upcoming)
    slot = re.search(r"^\s+(\d{4}-\d\d-\d\d \d\d:\d\d \S+) \(", upcoming, flags=re.M)
    assert slot, upcoming
    expected = f"next nightly {slot.group(1)}"

    def status_naming_the_next_run() -> str | None:
        text = service.unit_property(UNIT, "StatusText")
        return text if expected in text else None

    status_text = wait_for(status_naming_the_next_run, 30, what=f"a STATUS= line with {expected!r}")
    print(f"StatusText={status_text}")
    assert status_text.startswith("1 job(s); "), status_text
    assert "RELOAD FAILED" not in status_text


def test_reload_with_broken_config_keeps_the_old_one_running(service: Container) -> None:
    good = service.read_file(CONFIG)
    main_pid = service.unit_property(UNIT, "MainPID")
    # Valid YAML, one mistake the schema check finds: the journal must name its place.
    broken = re.sub(r'schedule: "[^"]*"', 'schedule: "61 * * * *"', good, count=1)
    assert broken != good
    cursor = journal_cursor(service)
    try:
        service.write_file(CONFIG, broken, mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
        reload = service.systemctl("reload", UNIT, check=False)
        print(f"reload with a broken config: exit {reload.returncode}\n{reload.stderr}")
        # The journal says that the reload failed, and why (the mistake and its place).
        wait_journal(service, cursor, "Reload failed for db-backup.service")
        entries = wait_journal(service, cursor, "At 'jobs[0].schedule'")
        print(entries)
        print_status(service)
        assert reload.returncode != 0, "systemctl reload should report the broken config"
        assert service.is_active(UNIT) == "active"
        assert service.unit_property(UNIT, "MainPID") == main_pid
        # Refused before any signal: the daemon never saw a reload.
        assert "config reload" not in journal_after(service, cursor)
    finally:
        service.write_file(CONFIG, good, mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
    cursor = journal_cursor(service)
    ok = service.systemctl("reload", UNIT, check=False)
    assert ok.returncode == 0, ok.stderr
    wait_journal(service, cursor, "config reloaded")
    service.wait_active(UNIT, timeout=30)
    assert service.unit_property(UNIT, "MainPID") == main_pid


def test_broken_config_at_start_exits_78_and_is_not_restarted_in_a_loop(
    service: Container,
) -> None:
    good = service.read_file(CONFIG)
    cursor = journal_cursor(service)
    restarts = service.unit_property(UNIT, "NRestarts")
    try:
        service.write_file(CONFIG, "jobs:\n  - name: x\n    schedule: '0 2 L * *'\n", mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
        restart = service.systemctl("restart", UNIT, check=False)
        assert restart.returncode != 0, "a daemon that cannot load its config must not start"
        # RestartPreventExitStatus=78 decides at exit: the unit goes straight to "failed" instead
        # of "activating (auto-restart)", so no waiting for RestartSec is needed to see it.
        wait_for(
            lambda: service.unit_property(UNIT, "SubState") == "failed",
            30,
            what="the unit to end in state failed",
        )
        print_status(service)
        assert service.unit_property(UNIT, "ExecMainStatus") == "78"
        assert service.unit_property(UNIT, "NRestarts") == restarts, "it was restarted"
        errors = wait_journal(service, cursor, "not a valid cron expression")
        assert "At 'jobs[0].schedule'" in errors
    finally:
        service.write_file(CONFIG, good, mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
        service.systemctl("restart", UNIT, check=False)
    service.wait_active(UNIT, timeout=60)


def test_frozen_daemon_is_restarted_by_the_watchdog(service: Container) -> None:
    # A short watchdog keeps the test short; TimeoutAbortSec bounds the SIGABRT -> SIGKILL step.
    service.write_file(WATCHDOG_DROPIN, "[Service]\nWatchdogSec=5s\nTimeoutAbortSec=10s\n")
    try:
        service.systemctl("daemon-reload")
        service.systemctl("restart", UNIT)
        service.wait_active(UNIT, timeout=60)
        assert service.unit_property(UNIT, "WatchdogUSec") in ("5s", "5000000")
        restarts = int(service.unit_property(UNIT, "NRestarts"))
        main_pid = service.unit_property(UNIT, "MainPID")
        # systemd stamps WatchdogTimestamp at every WATCHDOG=1. Watch pings arrive until they
        # span more than one interval (5 s): the daemon lived through it because it pinged.
        pings: set[int] = set()

        def pinged_longer_than_the_interval() -> bool:
            pings.add(int(service.unit_property(UNIT, "WatchdogTimestampMonotonic") or 0))
            seen = sorted(p for p in pings if p)
            return len(seen) >= 3 and seen[-1] - seen[0] > 5_000_000

        wait_for(pinged_longer_than_the_interval, 60, what="watchdog pings over 5 s")
        assert service.unit_property(UNIT, "MainPID") == main_pid
        assert int(service.unit_property(UNIT, "NRestarts")) == restarts

        # The shell's own kill: /bin/kill is procps, which a minimal host does not have.
        service.exec(["/bin/sh", "-c", 'kill -STOP "$1"', "sh", main_pid])
        wait_for(
            lambda: int(service.unit_property(UNIT, "NRestarts")) > restarts,
            60,
            what="a watchdog restart",
        )
        service.wait_active(UNIT, timeout=60)
        print_status(service)
        assert service.unit_property(UNIT, "MainPID") != main_pid
    finally:
        service.exec(["rm", "-f", WATCHDOG_DROPIN])
        service.systemctl("daemon-reload")
        service.systemctl("restart", UNIT, check=False)
    service.wait_active(UNIT, timeout=60)


def test_unit_verifies_and_its_security_exposure_stays_at_most_2_0(service: Container) -> None:
    verify = service.exec(["systemd-analyze", "verify", UNIT], check=False)
    print(
        f"systemd-analyze verify {UNIT}: exit {verify.returncode}\n{verify.stdout}{verify.stderr}"
    )
    assert verify.returncode == 0
    report = service.exec(["systemd-analyze", "security", "--no-pager", UNIT], check=False)
    print(report.stdout, report.stderr)
    assert report.returncode == 0
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report.stdout)
    assert match, report.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE, report.stdout
