"""The daemon as systemd runs it: real sd_notify socket, real signals, real pg_dump runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.config import load
from db_backup.daemon.loop import Clock, Daemon, utc_now
from db_backup.daemon.sd_notify import SdNotifier
from tests.conftest import CLI, Setup
from tests.support.pgcluster import Cluster, locked_table, wait_for_lock_wait
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.unread: list[dict[str, str]] = []

    def collect(self, seconds: float) -> list[dict[str, str]]:
        """Receives datagrams for `seconds` and returns them parsed."""
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                raw = self.sock.recv(8192)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in raw.decode("utf-8").split("\n") if line)
            self.messages.append((time.monotonic(), fields))
            got.append(fields)
        self.unread.extend(got)
        return got

    def wait_for(self, key: str, timeout: float = 30, value: str | None = None) -> dict[str, str]:
        """Returns the first datagram carrying `key` (with `value`, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.unread:
                fields = self.unread.pop(0)
                if key in fields and (value is None or fields[key] == value):
                    return fields
            if time.monotonic() >= deadline:
                break
            self.collect(min(0.5, deadline - time.monotonic()))
        raise AssertionError(f"no {key} datagram within {timeout} s; got {self.messages[-5:]}")

    def wait_for_status(
        self, predicate: Callable[[str], bool], what: str, count: int = 1, timeout: float = 60
    ) -> str:
        """Returns the `count`-th STATUS line received so far or later that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [m["STATUS"] for _, m in self.messages if predicate(m.get("STATUS", ""))]
            if len(matching) >= count:
                return matching[count - 1]
            if time.monotonic() >= deadline:
                statuses = [m["STATUS"] for _, m in self.messages if "STATUS" in m]
                raise AssertionError(f"no STATUS {what} within {timeout} s; got {statuses[-5:]}")
            self.collect(min(0.5, deadline - time.monotonic()))

    def drain(self) -> list[dict[str, str]]:
        """Returns the datagrams already queued, without waiting for more.

        A datagram sent on a local socket is queued before `send` returns, so after a call that
        would have sent something, this shows whether it did.
        """
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                raw = self.sock.recv(8192)
                fields = dict(line.split("=", 1) for line in raw.decode().split("\n") if line)
                self.messages.append((time.monotonic(), fields))
                got.append(fields)
        except BlockingIOError:
            return got
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


def start_daemon(
    setup: Setup, notify: NotifySocket, watchdog_usec: int = 1_000_000
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": str(watchdog_usec),
        "DB_BACKUP_LOG_FORMAT": "json",
    }
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [CLI, "--config", str(setup.path), "daemon"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_daemon(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def process_state(pid: int) -> str:
    """Returns the one-letter state of process `pid` (R, S, T for stopped, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def missed_state(setup: Setup, *jobs: str, minutes_ago: int = 10) -> None:
    """Makes `jobs` miss a daily slot 5 minutes ago (last run `minutes_ago`): catch-up runs them.

    The next slot is a day away, so no scheduled run interferes with the test.
    """
    slot = datetime.now(UTC) - timedelta(minutes=5)
    for job in setup.document["jobs"]:
        if job["name"] in jobs and job.get("schedule") != "* * * * *":
            job["schedule"] = f"{slot.minute} {slot.hour} * * *"
            job["timezone"] = "UTC"
    setup.write()
    write_state(setup, *jobs, minutes_ago=minutes_ago)


def write_state(setup: Setup, *jobs: str, minutes_ago: int) -> None:
    """Writes a state file saying `jobs` last ran successfully `minutes_ago`."""
    setup.state.mkdir(parents=True, exist_ok=True)
    last = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {
        j: {"last_run_utc": last, "last_status": "SUCCESS", "last_finished_utc": last} for j in jobs
    }
    (setup.state / "state.json").write_text(json.dumps(document))


def wait_for_reports(setup: Setup, count: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = setup.reports_json() if setup.reports.exists() else []
        if len(reports) >= count:
            return reports
        time.sleep(0.2)
    raise AssertionError(f"expected {count} report(s) within {timeout} s")


def test_ready_status_watchdog_reload_and_stopping(setup: Setup, notify: NotifySocket) -> None:
    setup.job()["schedule"] = "0 3 * * *"
    setup.write()
    started = time.monotonic()
    proc = start_daemon(setup, notify, watchdog_usec=1_000_000)
    try:
        ready = notify.wait_for("READY")
        assert ready["STATUS"].startswith("1 job(s); next nightly ")
        # The idle loop wakes for the watchdog (WATCHDOG_USEC=1 s: a ping every 0.25 s), not
        # just every 30 s: four pings come within seconds, and never more than one per 0.25 s.
        for _ in range(4):
            notify.wait_for("WATCHDOG", timeout=10, value="1")
        assert time.monotonic() - started >= 3 * 0.25

        # A good config: RELOADING with MONOTONIC_USEC, then READY with the new schedule.
        setup.job()["schedule"] = "15 4 * * *"
        setup.write()
        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        after = notify.wait_for("READY")
        assert " 04:15 " in after["STATUS"]

        # A bad config: refused, the old schedule stays, STATUS says so.
        setup.path.write_text("jobs: [ {name: broken, schedule: '99 * * * *'")
        proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        refused = notify.wait_for("READY")
        assert (
            "RELOAD FAILED, old config kept" in refused["STATUS"] and " 04:15 " in refused["STATUS"]
        )
        assert proc.poll() is None

        # Frozen and thawed (a paused VM, a debugger), the loop feeds the watchdog again.
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(proc.pid) == "T", "the daemon to be stopped")
        notify.drain()
        notify.unread.clear()
        os.kill(proc.pid, signal.SIGCONT)
        notify.wait_for("WATCHDOG", timeout=10)
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    stopping = [m for _, m in notify.messages if "STOPPING" in m] + notify.collect(0.5)
    assert any(m.get("STOPPING") == "1" for m in stopping)
    assert "config reload refused; keeping the running config" in stderr


def test_catch_up_runs_a_missed_job_once_not_per_missed_slot(
    setup: Setup, notify: NotifySocket
) -> None:
    setup.job()["schedule"] = "* * * * *"  # ten slots were missed
    setup.job()["globals"] = False
    setup.write()
    missed_state(setup, "nightly", minutes_ago=10)
    proc = start_daemon(setup, notify)
    try:
        report = min(wait_for_reports(setup, 1), key=lambda r: r["startedAt"])
        # The loop reaps a finished run and starts what is due in the same tick, then sends
        # STATUS: a status that shows the run's result and nothing running proves the loop came
        # round after the catch-up run without starting it again.
        notify.wait_for_status(
            lambda s: "last nightly SUCCESS 0:00 ago" in s and "running " not in s,
            "after the catch-up run",
        )
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    # The job's own next slot (the next whole minute) may legitimately have run by now; a
    # second catch-up run would have started before it (a run cut short by the stop has a
    # report too).
    started = datetime.fromisoformat(report["startedAt"].replace("Z", "+00:00"))
    next_slot = started.replace(second=0, microsecond=0) + timedelta(minutes=1)
    early = [
        r
        for r in setup.reports_json()
        if datetime.fromisoformat(r["startedAt"].replace("Z", "+00:00")) < next_slot
    ]
    assert len(early) == 1, "catch-up ran more than once"
    assert report["status"] == "SUCCESS" and report["trigger"] == "schedule"
    state = json.loads((setup.state / "state.json").read_text())
    assert state["nightly"]["last_status"] == "SUCCESS"


def test_no_catch_up_when_the_missed_slot_is_outside_the_window(
    setup: Setup, notify: NotifySocket
) -> None:
    setup.job()["schedule"] = "0 0 1 1 *"
    setup.document["daemon"] = {"catch_up_window_hours": 1}
    setup.write()
    write_state(setup, "nightly", minutes_ago=60 * 24 * 400)  # missed 1 Jan, long ago
    proc = start_daemon(setup, notify)
    try:
        ready = notify.wait_for("READY")
        # A tick has run (it feeds the watchdog after starting what is due).
        notify.wait_for("WATCHDOG")
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    assert "next nightly " in ready["STATUS"] and "-01-01 00:00" in ready["STATUS"]
    assert "catching up a missed run" not in stderr and "job started" not in stderr
    assert not setup.reports.exists() or setup.reports_json() == []


def test_sigterm_during_a_real_dump_reports_failed_and_leaves_nothing(
    setup: Setup, notify: NotifySocket, slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    missed_state(setup, "nightly")
    proc = start_daemon(setup, notify)
    try:
        notify.wait_for("STATUS", value=None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not setup.temporaries():
            time.sleep(0.05)
        assert setup.temporaries(), "the dump did not start"
        started = time.monotonic()
        code, stderr = stop_daemon(proc)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, stderr
    assert took < 20
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert "db-backup daemon stopping (SIGTERM)" in report["errorMessage"]
    assert setup.data_files() == []


def test_a_dump_cut_short_by_sigterm_runs_again_at_the_next_start_and_succeeds(
    setup: Setup, notify: NotifySocket, slow_db: str
) -> None:
    # What a package upgrade does to the daemon: SIGTERM in the middle of a real dump, then a
    # new daemon. The slot was missed 5 minutes ago and the next one is a day away.
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    missed_state(setup, "nightly")
    proc = start_daemon(setup, notify)
    try:
        wait_until(lambda: bool(setup.temporaries()), "the dump to start")
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    assert "run cut short by the stop; it runs again at the next start" in stderr
    state = json.loads((setup.state / "state.json").read_text())["nightly"]
    assert state["last_status"] == "FAILED" and state["pending"]["trigger"] == "rerun"

    restarted = time.monotonic()
    proc = start_daemon(setup, notify)
    try:
        reports = wait_for_reports(setup, 2, timeout=120)
        notify.wait_for_status(
            lambda s: "last nightly SUCCESS" in s and "running " not in s, "after the re-run"
        )
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    cut, rerun = sorted(reports, key=lambda r: r["startedAt"])
    assert cut["status"] == "FAILED" and "daemon stopping (SIGTERM)" in cut["errorMessage"]
    assert rerun["status"] == "SUCCESS", rerun["errorMessage"]
    assert (rerun["trigger"], rerun["attempt"]) == ("rerun", cut["attempt"])
    started = datetime.fromisoformat(rerun["startedAt"].replace("Z", "+00:00"))
    print(
        f"re-run started {started.timestamp() - time.time() + time.monotonic() - restarted:.2f} s after the restart"
    )
    state = json.loads((setup.state / "state.json").read_text())["nightly"]
    assert state["last_status"] == "SUCCESS" and "pending" not in state and "running" not in state
    assert len(setup.reports_json()) == 2, "the re-run ran once"


def test_two_jobs_with_max_parallel_one_never_overlap(
    setup: Setup, notify: NotifySocket, slow_db: str
) -> None:
    first = setup.job()
    first["databases"] = slow_db
    first["globals"] = False
    second = {**first, "name": "second", "databases": "shop"}
    setup.document["jobs"].append(second)
    setup.document["daemon"] = {"max_parallel": 1}
    setup.write()
    missed_state(setup, "nightly", "second")
    proc = start_daemon(setup, notify)
    try:
        reports = wait_for_reports(setup, 2, timeout=120)
    finally:
        stop_daemon(proc)
    spans = sorted(
        (
            datetime.fromisoformat(r["startedAt"].replace("Z", "+00:00")),
            datetime.fromisoformat(r["finishedAt"].replace("Z", "+00:00")),
        )
        for r in reports
    )
    assert spans[0][1] <= spans[1][0], f"runs overlapped: {spans}"
    assert {r["job"] for r in reports} == {"nightly", "second"}


def test_job_hung_past_its_timeout_is_killed_and_reported(
    setup: Setup, notify: NotifySocket, cluster: Cluster
) -> None:
    # Another session holds an exclusive lock: pg_dump waits for it, producing nothing.
    with locked_table(cluster, "shop", "customers"):
        setup.job()["timeout_seconds"] = 3
        setup.job()["globals"] = False
        setup.write()
        missed_state(setup, "nightly")
        proc = start_daemon(setup, notify)
        try:
            [report] = wait_for_reports(setup, 1, timeout=60)
            assert proc.poll() is None, "the daemon must keep running"
        finally:
            stop_daemon(proc)
    assert report["status"] == "FAILED"
    assert "timed out after 3 s" in report["errorMessage"]
    assert setup.data_files() == []


def test_failed_run_is_retried_with_its_own_report(setup: Setup, notify: NotifySocket) -> None:
    setup.job()["databases"] = "does_not_exist"
    setup.job()["globals"] = False
    setup.job()["retry"] = {"attempts": 1, "delay_seconds": 1}
    setup.write()
    missed_state(setup, "nightly")
    proc = start_daemon(setup, notify)
    try:
        reports = wait_for_reports(setup, 2, timeout=60)
        # A failed run is reaped, and its retry planned, in the tick that then sends STATUS:
        # the second "failed, nothing running" status comes after the last retry decision.
        notify.wait_for_status(
            lambda s: "last nightly FAILED" in s and "running " not in s,
            "after the retry failed",
            count=2,
        )
    finally:
        code, stderr = stop_daemon(proc)
    assert code == 0, stderr
    assert len(setup.reports_json()) == 2, "only one extra attempt was configured"
    assert stderr.count("retry planned") == 1
    assert sorted(r["attempt"] for r in reports) == [1, 2]
    assert {r["trigger"] for r in reports} == {"schedule", "retry"}
    assert all(r["status"] == "FAILED" for r in reports)


def test_wall_clock_jumps_run_a_due_job_once_and_never_rerun_it(setup: Setup) -> None:
    setup.job()["schedule"] = "0 2 * * *"
    setup.job()["timezone"] = "Europe/Berlin"
    setup.job()["globals"] = False
    setup.write()
    config = load(str(setup.path))
    daemon = Daemon(str(setup.path), config, SdNotifier({}))
    start = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    daemon.state.load()
    daemon._schedule_all(start, catch_up=True)
    due = daemon.due["nightly"]
    assert due == datetime(2026, 3, 11, 1, 0, tzinfo=UTC)  # 02:00 CET

    def run_ticks(now: datetime) -> None:
        daemon.tick(now)
        for running in list(daemon.running.values()):
            assert running.thread is not None
            running.thread.join(60)
        daemon.tick(now)

    run_ticks(due - timedelta(hours=3))
    assert not setup.reports.exists() or setup.reports_json() == []
    jumped = due + timedelta(days=1, hours=5)  # the clock jumps forward past two slots
    run_ticks(jumped)
    assert len(setup.reports_json()) == 1
    run_ticks(due - timedelta(hours=1))  # and back again, before the slot that already ran
    run_ticks(due + timedelta(minutes=1))
    assert len(setup.reports_json()) == 1, "a backwards jump re-ran a job"
    assert daemon.due["nightly"] > jumped


class SteppedMonotonic(Clock):
    """The real wall clock, and a monotonic clock that moves only when the test steps it."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def step(self, seconds: float) -> None:
        self.seconds += seconds


def test_watchdog_is_not_fed_while_a_real_dump_is_stalled_on_a_lock(
    setup: Setup,
    notify: NotifySocket,
    cluster: Cluster,
    slow_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    missed_state(setup, "nightly")  # due at once
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")  # a ping per (stepped) second
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    config = load(str(setup.path))
    clock = SteppedMonotonic()
    daemon = Daemon(
        str(setup.path), config, SdNotifier({"NOTIFY_SOCKET": str(notify.path)}), clock=clock
    )
    interval, stall = 1.0, config.daemon.stall_seconds

    def tick_pings() -> bool:
        """Steps a watchdog interval, runs one loop iteration, returns whether it pinged."""
        clock.step(interval)
        daemon.tick(utc_now())
        return any(m.get("WATCHDOG") == "1" for m in notify.drain())

    # A session holding ACCESS EXCLUSIVE on the table stalls the real pg_dump: no byte flows.
    with locked_table(cluster, slow_db, "blob"):
        daemon.start()
        daemon.tick(utc_now())
        running = daemon.running["nightly"]
        wait_for_lock_wait(cluster, "db-backup/nightly")
        assert tick_pings(), "a job that has not been quiet for stall_seconds is healthy"
        clock.step(stall)
        assert not daemon.healthy()
        assert not tick_pings() and not tick_pings(), "the watchdog was fed during a stall"
        assert running.bytes == 0 and "nightly" in daemon.running
    # The lock is gone: bytes flow, and the loop feeds the watchdog again while the dump runs.
    wait_until(lambda: running.bytes > 0, "the dump to produce bytes")
    assert tick_pings()
    assert "nightly" in daemon.running, "the dump ended before the check; use a bigger database"
    assert daemon.shutdown() == 0
    [report] = setup.reports_json()
    assert report["status"] == "FAILED" and "daemon stopping" in report["errorMessage"]
