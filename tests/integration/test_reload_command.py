"""`db-backup reload --pid PID` (ExecReload= of db-backup.service): validate, then SIGHUP.

It replaces `/bin/kill -HUP $MAINPID`, which needs procps, a package the .deb does not depend on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from db_backup.cli import EXIT_CONFIG, EXIT_FAILED
from tests.conftest import CLI, RunCli, Setup

pytestmark = pytest.mark.integration

BAD_SCHEDULE = "61 * * * *"


def wait_until(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def daemon(setup: Setup, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A running `db-backup daemon` on the setup config; yields it and its JSON log file."""
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [CLI, "--config", str(setup.path), "daemon"],
            stdout=sink,
            stderr=sink,
            env={**os.environ, "DB_BACKUP_LOG_FORMAT": "json"},
        )
    try:
        wait_until(lambda: "daemon started" in log.read_text(), 60, "the daemon to start")
        yield proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


class HupRecorder:
    """A process whose command line looks like `db-backup daemon` and which logs every SIGHUP."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "hups.log"
        code = (
            "import signal, sys, time\n"
            "log = open(sys.argv[1], 'a', buffering=1)\n"
            "signal.signal(signal.SIGHUP, lambda *_: log.write('HUP\\n'))\n"
            "log.write('ready\\n')\n"
            "time.sleep(120)\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(self.log), "/usr/bin/db-backup", "daemon"]
        )
        wait_until(lambda: self.log.exists() and "ready" in self.log.read_text(), 30, "ready")

    def hups(self) -> int:
        return self.log.read_text().count("HUP")


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[HupRecorder]:
    made = HupRecorder(tmp_path)
    yield made
    made.proc.kill()
    made.proc.wait()


def test_reload_command_signals_the_daemon_which_reloads(
    setup: Setup, daemon: tuple[subprocess.Popen[bytes], Path], run_cli: RunCli
) -> None:
    proc, log = daemon
    done = run_cli("--config", str(setup.path), "reload", "--pid", str(proc.pid))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: "config reloaded" in log.read_text(), 30, "the daemon to reload")
    assert proc.poll() is None


def test_reload_command_refuses_a_broken_config_and_sends_no_signal(
    setup: Setup, recorder: HupRecorder, run_cli: RunCli
) -> None:
    setup.job()["schedule"] = BAD_SCHEDULE
    setup.write()
    refused = run_cli("--config", str(setup.path), "reload", "--pid", str(recorder.proc.pid))
    assert refused.returncode == EXIT_CONFIG
    assert "jobs[0].schedule" in refused.stderr
    # The witness: a valid config sends exactly one SIGHUP, so the refused one sent none.
    setup.job()["schedule"] = "0 2 * * *"
    setup.write()
    done = run_cli("--config", str(setup.path), "reload", "--pid", str(recorder.proc.pid))
    assert done.returncode == 0, done.stderr
    wait_until(lambda: recorder.hups() >= 1, 30, "the SIGHUP of the valid reload")
    assert recorder.hups() == 1


def test_reload_command_never_signals_a_process_that_is_not_a_db_backup_daemon(
    setup: Setup, run_cli: RunCli
) -> None:
    # `sleep` dies of SIGHUP: if one were sent it would be gone, killed by that signal.
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        done = run_cli("--config", str(setup.path), "reload", "--pid", str(sleeper.pid))
        assert done.returncode == EXIT_FAILED
        assert f"process {sleeper.pid} is not a db-backup daemon" in done.stderr
        assert "nothing sent" in done.stderr
    finally:
        sleeper.terminate()
        assert sleeper.wait(timeout=30) == -signal.SIGTERM  # it was alive until now


def test_reload_command_says_when_the_process_does_not_exist(setup: Setup, run_cli: RunCli) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = run_cli("--config", str(setup.path), "reload", "--pid", str(gone.pid))
    assert done.returncode == EXIT_FAILED
    assert f"no process {gone.pid}" in done.stderr
