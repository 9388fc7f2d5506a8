"""The daemon's /metrics under a flood of scrapes and a slowloris while a real backup runs.

Issue 21, item 4: before, every connection held a thread and a descriptor, thousands of scrape
threads queued on the report index ahead of the backup, and the watchdog went hungry. Here the
real daemon (the installed command, sd_notify socket and watchdog as under systemd) dumps a
database of a few seconds while 300 slow connections and 48 scrapes always in flight hit its
endpoint (loopback only, bounded in count and time).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db_backup.observe.metrics_http import MAX_CONNECTIONS
from tests.conftest import CLI, Setup
from tests.support.crowd import SCRAPE, SLOW, Crowd
from tests.support.pgcluster import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 4_000_000  # WatchdogSec=4: pings every 1 s, two at most 2 s apart
ATTACK_SECONDS = 10.0


class Pings:
    """Drains an sd_notify datagram socket in a thread, keeping when each WATCHDOG=1 came."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.watchdog: list[float] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.sock.recv(8192)
            except TimeoutError:
                continue
            for line in raw.decode("utf-8", "replace").split("\n"):
                if line == "WATCHDOG=1":
                    self.watchdog.append(time.monotonic())
                elif line == "READY=1":
                    self.ready.set()

    def largest_gap(self, start: float, end: float) -> float:
        """Returns the longest time without a ping between `start` and `end`."""
        moments = [start, *(t for t in self.watchdog if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(moments))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def pings(tmp_path: Path) -> Iterator[Pings]:
    found = Pings(tmp_path / "notify.sock")
    yield found
    found.close()


def _threads_and_fds(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line for line in status.splitlines() if line.startswith("Threads:"))[8:])
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def _scrape(port: int, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as answer:
        return str(answer.read().decode())


def _answers(port: int) -> bool:
    try:
        return "db_backup_" in _scrape(port)
    except OSError:
        return False


def _due_now(setup: Setup) -> None:
    """Makes the job miss a daily slot 5 minutes ago: catch-up runs it once, at start."""
    slot = datetime.now(UTC) - timedelta(minutes=5)
    setup.job().update(schedule=f"{slot.minute} {slot.hour} * * *", timezone="UTC")
    setup.write()
    last = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    setup.state.mkdir(parents=True, exist_ok=True)
    state = {"nightly": {"last_run_utc": last, "last_status": "SUCCESS"}}
    (setup.state / "state.json").write_text(json.dumps(state))


def test_a_flood_and_a_slowloris_stop_neither_the_backup_nor_the_watchdog(
    setup: Setup, slow_db: str, pings: Pings, tmp_path: Path
) -> None:
    port = free_port()
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.document["metrics"] = {"listen": f"127.0.0.1:{port}"}
    _due_now(setup)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "DB_BACKUP_LOG_FORMAT": "json",
    }
    env.pop("WATCHDOG_PID", None)
    daemon = subprocess.Popen(
        [CLI, "--config", str(setup.path), "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert pings.ready.wait(60), "no READY=1"
        wait_until(lambda: _answers(port), "the first scrape")
        most_threads = most_fds = 0
        answered: list[float] = []
        attempts = 0
        started = time.monotonic()
        with Crowd(port, 300, SLOW) as slow, Crowd(port, 48, SCRAPE) as flood:
            while time.monotonic() - started < ATTACK_SECONDS:
                threads, fds = _threads_and_fds(daemon.pid)
                most_threads, most_fds = max(most_threads, threads), max(most_fds, fds)
                asked = time.monotonic()
                attempts += 1
                try:  # a normal scrape, as Prometheus makes it, beside the crowd
                    if "db_backup_" in _scrape(port, timeout=2):
                        answered.append(time.monotonic() - asked)
                except OSError:
                    pass
                time.sleep(0.5)
            ended = time.monotonic()
        # The crowd was really there: the slow ones were cut off, the flood got answers.
        assert slow.tally.unanswered > 0 and slow.tally.answered == 0
        assert flood.tally.answered > 100
        # Most normal scrapes are answered within their 2 s: a scraper sends its request at
        # once, and is answered before a slow connection would be.
        assert len(answered) >= attempts / 2, (attempts, answered)
        assert most_threads <= 12, most_threads  # main, relay, 2 for /metrics, the job's
        assert most_fds <= MAX_CONNECTIONS + 40, most_fds  # the cap, and the job's own
        assert pings.largest_gap(started, ended) < WATCHDOG_USEC / 2 / 1e6
        report = wait_until(lambda: _report(setup), "the backup's report", timeout=180)
        assert report["status"] == "SUCCESS", report["errorMessage"]
        assert "db_backup_last_run_success" in _scrape(port)
    finally:
        stopping = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        took = time.monotonic() - stopping
    assert code == 0
    assert took < 10


def _report(setup: Setup) -> dict[str, Any]:
    """Returns the first report, {} while there is none."""
    reports = setup.reports_json() if setup.reports.exists() else []
    return reports[0] if reports else {}
