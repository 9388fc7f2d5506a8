"""A refused reload as systemd and the journal see it: the first problem in STATUS, all in the log."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Setup
from tests.integration.test_daemon import NotifySocket, start_daemon, stop_daemon

pytestmark = pytest.mark.integration


@pytest.fixture
def notify_sock(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


def test_refused_reload_puts_the_first_problem_in_status_and_every_problem_in_the_log(
    setup: Setup, notify_sock: NotifySocket
) -> None:
    setup.job()["schedule"] = "15 4 * * *"
    setup.write()
    proc = start_daemon(setup, notify_sock)
    try:
        notify_sock.wait_for("READY")
        setup.path.write_text(
            """storage: {mode: local}
jobs:
  - name: nightly
    schedule: "0 2 L * *"
    timezone: Mars/Olympus
    databases: shop
    colour: blue
""",
            encoding="utf-8",
        )
        proc.send_signal(signal.SIGHUP)
        notify_sock.wait_for("RELOADING")
        refused = notify_sock.wait_for("READY")
        assert proc.poll() is None
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    status = refused["STATUS"]
    assert status.startswith(
        f"1 job(s); RELOAD FAILED, old config kept: {setup.path}: "
        "At 'jobs[0].colour': unknown key (known here: "
    )
    assert "(+2 more problem(s), see the journal); next nightly " in status
    assert " 04:15 " in status  # the old schedule still runs

    [refusal] = [
        event
        for event in map(json.loads, filter(None, stderr.splitlines()))
        if event.get("event") == "config reload refused; keeping the running config"
    ]
    assert refusal["level"] == "error"
    problems = refusal["problems"]
    assert len(problems) == 3
    assert problems[0].startswith("At 'jobs[0].colour': unknown key")
    assert problems[1].startswith("At 'jobs[0].schedule': not a valid cron expression: '0 2 L * *'")
    assert problems[2].startswith("At 'jobs[0].timezone': unknown time zone 'Mars/Olympus'")


def test_reload_that_needs_a_restart_says_so_in_status_until_the_restart(
    setup: Setup, notify_sock: NotifySocket
) -> None:
    proc = start_daemon(setup, notify_sock)
    try:
        notify_sock.wait_for("READY")
        setup.document["metrics"] = {"listen": "127.0.0.1:0"}
        setup.write()
        proc.send_signal(signal.SIGHUP)
        notify_sock.wait_for("RELOADING")
        reloaded = notify_sock.wait_for("READY")
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    assert reloaded["STATUS"].startswith(
        "1 job(s); RESTART NEEDED for metrics.listen unset -> 127.0.0.1:0; next nightly "
    )
