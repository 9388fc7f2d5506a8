"""db-backup.service under a real systemd: start, status line, reload, watchdog, hardening.

Skipped (reason "daemon not available in this build") only when ``db-backup daemon --help``
fails in the container; once the daemon exists these run and must pass.
"""

from __future__ import annotations

import time

import pytest

from .conftest import Container, wait_for

UNIT = "db-backup.service"
CONFIG = "/etc/db-backup/config.yaml"
WATCHDOG_DROPIN = "/etc/systemd/system/db-backup.service.d/e2e-watchdog.conf"


@pytest.fixture(scope="module")
def service(container: Container) -> Container:
    """The shared container, once the installed CLI has a daemon command."""
    probe = container.exec(["db-backup", "daemon", "--help"], check=False)
    if probe.returncode != 0:
        pytest.skip("daemon not available in this build")
    container.wait_active(UNIT, timeout=60)
    return container


def print_status(ct: Container) -> None:
    print(ct.systemctl("status", UNIT, "--lines=30", check=False).stdout)


def journal_since(ct: Container, cursor_time: str, priority: str | None = None) -> str:
    argv = ["journalctl", "-u", UNIT, "--no-pager", "--since", cursor_time]
    if priority:
        argv += ["-p", priority]
    return ct.exec(argv, check=False).stdout


def container_now(ct: Container) -> str:
    return ct.exec(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()


def test_service_is_active_after_install_with_a_status_line(service: Container) -> None:
    print_status(service)
    assert service.is_active(UNIT) == "active"
    assert service.unit_property(UNIT, "Type") == "notify"
    status_text = wait_for(
        lambda: service.unit_property(UNIT, "StatusText"), 30, what="a STATUS= line"
    )
    print(f"StatusText={status_text}")
    assert status_text.strip()


def test_reload_with_broken_config_keeps_the_old_one_running(service: Container) -> None:
    good = service.read_file(CONFIG)
    main_pid = service.unit_property(UNIT, "MainPID")
    since = container_now(service)
    time.sleep(1)  # journalctl --since has one-second resolution
    try:
        service.write_file(CONFIG, "jobs: [this is: not\n  - valid: yaml: {\n", mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
        reload = service.systemctl("reload", UNIT, check=False)
        print(f"reload with a broken config: exit {reload.returncode}\n{reload.stderr}")

        def complained() -> str | None:
            errors = journal_since(service, since, priority="err")
            return errors if "-- No entries --" not in errors and errors.strip() else None

        errors = wait_for(complained, 20, what="an error-level journal entry about the config")
        print(errors)
        print(f"StatusText={service.unit_property(UNIT, 'StatusText')}")
        print_status(service)
        assert reload.returncode != 0, "systemctl reload should report the broken config"
        assert service.is_active(UNIT) == "active"
        assert service.unit_property(UNIT, "MainPID") == main_pid
    finally:
        service.write_file(CONFIG, good, mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
    ok = service.systemctl("reload", UNIT, check=False)
    assert ok.returncode == 0, ok.stderr
    service.wait_active(UNIT, timeout=30)
    assert service.unit_property(UNIT, "MainPID") == main_pid


def test_broken_config_at_start_exits_78_and_is_not_restarted_in_a_loop(
    service: Container,
) -> None:
    good = service.read_file(CONFIG)
    since = container_now(service)
    time.sleep(1)  # journalctl --since has one-second resolution
    try:
        service.write_file(CONFIG, "jobs:\n  - name: x\n    schedule: '0 2 L * *'\n", mode=0o640)
        service.exec(["chgrp", "postgres", CONFIG])
        restart = service.systemctl("restart", UNIT, check=False)
        assert restart.returncode != 0, "a daemon that cannot load its config must not start"
        failed_pid = service.unit_property(UNIT, "ExecMainPID")
        time.sleep(7)  # longer than RestartSec=5: a restart would have happened by now
        print_status(service)
        assert service.is_active(UNIT) == "failed"
        assert service.unit_property(UNIT, "ExecMainStatus") == "78"
        assert service.unit_property(UNIT, "ExecMainPID") == failed_pid, "it was restarted"
        errors = journal_since(service, since)
        assert "At 'jobs[0].schedule': not a valid cron expression" in errors
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
        # Still alive after more than one watchdog interval: it pings.
        time.sleep(7)
        assert service.unit_property(UNIT, "MainPID") == main_pid
        assert int(service.unit_property(UNIT, "NRestarts")) == restarts

        service.exec(["kill", "-STOP", main_pid])
        wait_for(
            lambda: int(service.unit_property(UNIT, "NRestarts")) > restarts,
            60,
            what="a watchdog restart",
        )
        service.wait_active(UNIT, timeout=60)
        print_status(service)
        print(journal_since(service, "-2min"))
        assert service.unit_property(UNIT, "MainPID") != main_pid
    finally:
        service.exec(["rm", "-f", WATCHDOG_DROPIN])
        service.systemctl("daemon-reload")
        service.systemctl("restart", UNIT, check=False)
    service.wait_active(UNIT, timeout=60)


def test_security_exposure_report(service: Container) -> None:
    verify = service.exec(["systemd-analyze", "verify", UNIT], check=False)
    print(
        f"systemd-analyze verify {UNIT}: exit {verify.returncode}\n{verify.stdout}{verify.stderr}"
    )
    report = service.exec(["systemd-analyze", "security", "--no-pager", UNIT], check=False)
    print(report.stdout, report.stderr)
    assert report.returncode == 0
    assert "Overall exposure level" in report.stdout
    assert verify.returncode == 0
