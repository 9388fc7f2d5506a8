"""`db-backup reload --pid PID` (ExecReload= of db-backup.service): validate, then SIGHUP.

It replaces `/bin/kill -HUP $MAINPID`, which needs procps, a package the .deb does not depend on.
"""

from __future__ import annotations

import json
import os
import shutil
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


# -- a reload that tells the truth: the daemon's answer decides the exit status ----------------


def _age_recipient(tmp_path: Path) -> str:
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()


def _reloads(log: Path) -> int:
    return log.read_text().count('"config reloaded"')


@pytest.mark.skipif(not shutil.which("age-keygen"), reason="age is not installed")
def test_reload_refuses_what_check_config_refuses_and_the_daemon_keeps_its_config(
    setup: Setup, daemon: tuple[subprocess.Popen[bytes], Path], run_cli: RunCli, tmp_path: Path
) -> None:
    proc, log = daemon
    reload = ("--config", str(setup.path), "reload", "--pid", str(proc.pid))
    state = json.loads((setup.state / "reload.json").read_text())
    assert state["pid"] == proc.pid and state["outcome"] == "reloaded"  # ready for reloads

    # A {file:} secret that cannot be read: refused, no signal, exit 78.
    setup.job()["connection"]["password"] = {"file": str(tmp_path / "no-such.pass")}
    setup.write()
    refused = run_cli(*reload)
    assert refused.returncode == EXIT_CONFIG, refused.stderr
    assert "At 'jobs[0].connection.password': cannot read" in refused.stderr
    assert "No such file or directory" in refused.stderr

    # An age recipient with a bad checksum (last character changed): refused as well.
    del setup.job()["connection"]["password"]
    recipient = _age_recipient(tmp_path)
    broken = recipient[:-1] + ("q" if recipient[-1] != "q" else "p")
    setup.document["storage"]["encryption"] = {"age": {"recipients": [broken]}}
    setup.write()
    refused = run_cli(*reload)
    assert refused.returncode == EXIT_CONFIG, refused.stderr
    assert "Traceback" not in refused.stderr
    time.sleep(0.5)
    assert _reloads(log) == 0, "no reload may have happened"

    # A good config: the daemon reloads and says so; the command waited for that answer.
    setup.document["storage"]["encryption"] = {"age": {"recipients": [recipient]}}
    setup.write()
    done = run_cli(*reload)
    assert done.returncode == 0, done.stderr
    assert _reloads(log) == 1  # already there when the command returned
    assert json.loads((setup.state / "reload.json").read_text())["serial"] == state["serial"] + 1


def test_reload_the_daemon_refuses_fails_and_a_change_needing_a_restart_is_said(
    setup: Setup, daemon: tuple[subprocess.Popen[bytes], Path], run_cli: RunCli, tmp_path: Path
) -> None:
    proc, log = daemon
    reload = ("--config", str(setup.path), "reload", "--pid", str(proc.pid))
    # metrics.listen cannot change without a restart: reloaded, and said.
    setup.document["metrics"] = {"listen": "127.0.0.1:0"}
    setup.write()
    done = run_cli(*reload)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: reloaded, but metrics.listen unset -> 127.0.0.1:0 takes effect only after "
        "`systemctl restart db-backup`"
    ) in done.stderr
    [event] = [
        json.loads(line) for line in log.read_text().splitlines() if '"config reloaded"' in line
    ]
    assert event["restart_needed"] == ["metrics.listen unset -> 127.0.0.1:0"]

    # The daemon's own check refuses (here: a directory it cannot write, which the command,
    # as root before the signal, does not check): the reload fails with the daemon's reason.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    setup.document["directories"]["data"] = str(blocker / "data")
    setup.write()
    refused = run_cli(*reload)
    assert refused.returncode == EXIT_CONFIG, refused.stderr
    assert "reload refused by the daemon, old config kept: directory not writable" in (
        refused.stderr
    )
    assert proc.poll() is None


def test_a_credential_the_running_service_lacks_fails_the_reload_saying_restart(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"  # what systemd gave the service when it started
    creds.mkdir()
    env = {**os.environ, "DB_BACKUP_LOG_FORMAT": "json", "CREDENTIALS_DIRECTORY": str(creds)}
    log = tmp_path / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [CLI, "--config", str(setup.path), "daemon"], stdout=sink, stderr=sink, env=env
        )
    try:
        wait_until(lambda: "daemon started" in log.read_text(), 60, "the daemon to start")
        # A LoadCredential= added to the unit after the start: the service does not have it.
        setup.job()["connection"]["password"] = {"credential": "pg-new"}
        setup.write()
        refused = run_cli(
            "--config", str(setup.path), "reload", "--pid", str(proc.pid),
            env={"CREDENTIALS_DIRECTORY": str(creds)},
        )  # fmt: skip
        assert refused.returncode == EXIT_CONFIG, refused.stderr
        assert (
            "reload refused by the daemon, old config kept: At 'jobs[0].connection.password': "
            f"credential 'pg-new' is not in $CREDENTIALS_DIRECTORY ({creds}): systemd loads "
            "credentials when the service starts; after adding LoadCredential= run "
            "`systemctl restart db-backup`"
        ) in refused.stderr
        assert _reloads(log) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
