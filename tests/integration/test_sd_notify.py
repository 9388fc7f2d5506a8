"""sd_notify messages as systemd receives them, over a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from db_backup.daemon.sd_notify import SdNotifier, Watchdog, watchdog_interval


class NotifySocket:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        """Wrap a bound socket; ``address`` is the NOTIFY_SOCKET value that reaches it."""
        self.sock = sock
        self.address = address

    def receive(self) -> dict[str, str]:
        """Return the next datagram parsed into its assignments."""
        data = self.sock.recv(65536)
        text = data.decode("utf-8")
        return dict(line.split("=", 1) for line in text.split("\n"))

    def pending(self) -> int:
        """Return how many datagrams are waiting (without blocking)."""
        count = 0
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
                count += 1
        except BlockingIOError:
            return count
        finally:
            self.sock.setblocking(True)


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """Bind a notification socket in a short temp dir and point NOTIFY_SOCKET at it."""
    # tmp_path can exceed the 108-byte sun_path limit; a short mkdtemp cannot.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield NotifySocket(sock, path)
        finally:
            sock.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("idle") is False
    assert Watchdog(notifier, interval=1.0).maybe_ping(True) is False


def test_unreachable_notify_socket_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    notifier = SdNotifier()
    assert not notifier.enabled
    assert notifier.ready() is False


def test_ready_sends_ready_1(notify_socket: NotifySocket) -> None:
    notifier = SdNotifier()
    assert notifier.ready()
    assert notify_socket.receive() == {"READY": "1"}


def test_ready_can_carry_the_first_status_line(notify_socket: NotifySocket) -> None:
    SdNotifier().ready(status="next run nightly at 01:30")
    assert notify_socket.receive() == {"READY": "1", "STATUS": "next run nightly at 01:30"}


def test_status_with_chinese_and_accents_arrives_as_utf8(notify_socket: NotifySocket) -> None:
    assert SdNotifier().status("备份 running ü")
    raw = notify_socket.sock.recv(65536)
    assert raw == "STATUS=备份 running ü".encode()


def test_status_is_flattened_to_one_line(notify_socket: NotifySocket) -> None:
    SdNotifier().status("job failed:\npg_dump: error\r\nconnection refused")
    assert notify_socket.receive() == {
        "STATUS": "job failed: pg_dump: error  connection refused",
    }


def test_very_long_status_is_shortened_to_fit_a_datagram(notify_socket: NotifySocket) -> None:
    SdNotifier().status("数" * 5000)
    status = notify_socket.receive()["STATUS"]
    assert status.endswith("...")
    assert len(status.encode("utf-8")) <= 1024


def test_stopping_sends_stopping_1(notify_socket: NotifySocket) -> None:
    SdNotifier().stopping()
    assert notify_socket.receive() == {"STOPPING": "1"}


def test_reloading_sends_monotonic_usec_in_the_same_datagram(notify_socket: NotifySocket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    SdNotifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = notify_socket.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after
    assert notify_socket.pending() == 0


def test_extend_timeout_is_in_microseconds(notify_socket: NotifySocket) -> None:
    SdNotifier().extend_timeout(90)
    assert notify_socket.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}


def test_send_puts_several_fields_in_one_datagram(notify_socket: NotifySocket) -> None:
    SdNotifier().send(STATUS="ok", ERRNO=0)
    assert notify_socket.receive() == {"STATUS": "ok", "ERRNO": "0"}
    assert notify_socket.pending() == 0


def test_abstract_namespace_socket_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"db-backup-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        notifier = SdNotifier()
        assert notifier.enabled
        notifier.status("备份 abstract")
        assert sock.recv(65536) == "STATUS=备份 abstract".encode()
    finally:
        sock.close()


# --- watchdog ---------------------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": pid}) == 30.0


def test_watchdog_interval_is_none_when_not_ours_or_unset() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "garbage"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        """Start at an arbitrary monotonic time."""
        self.now = 1000.0

    def __call__(self) -> float:
        """Return the current fake monotonic time."""
        return self.now


def test_watchdog_pings_at_most_once_per_interval(notify_socket: NotifySocket) -> None:
    clock = FakeClock()
    watchdog = Watchdog(SdNotifier(), interval=30.0, clock=clock)
    sent = []
    for _ in range(13):  # 0, 10, ..., 120 s
        sent.append(watchdog.maybe_ping(healthy=True))
        clock.now += 10.0
    assert sent == [True, False, False] * 4 + [True]
    assert notify_socket.pending() == 5


def test_watchdog_stays_silent_while_unhealthy(notify_socket: NotifySocket) -> None:
    clock = FakeClock()
    watchdog = Watchdog(SdNotifier(), interval=30.0, clock=clock)
    assert watchdog.maybe_ping(healthy=True)
    assert notify_socket.receive() == {"WATCHDOG": "1"}
    for _ in range(10):
        clock.now += 30.0
        assert watchdog.maybe_ping(healthy=False) is False
    assert notify_socket.pending() == 0
    # Recovery resumes pinging at once.
    assert watchdog.maybe_ping(healthy=True)
    assert notify_socket.receive() == {"WATCHDOG": "1"}


def test_watchdog_reads_watchdog_usec_and_pings_with_real_time(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    watchdog = Watchdog(SdNotifier())
    assert watchdog.interval == pytest.approx(0.1)
    assert watchdog.max_sleep() == pytest.approx(0.05)
    # Asked far more often than the interval, it pings five times, no faster than every 0.1 s.
    started = time.monotonic()
    asked = pings = 0
    while pings < 5:
        assert time.monotonic() - started < 60, f"only {pings} pings in 60 s"
        asked += 1
        pings += watchdog.maybe_ping(healthy=True)
        time.sleep(0.01)
    assert time.monotonic() - started >= 4 * 0.1
    assert asked > pings
    assert notify_socket.pending() == 5


def test_watchdog_for_another_pid_is_disabled(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    watchdog = Watchdog(SdNotifier())
    assert not watchdog.enabled
    assert watchdog.max_sleep() is None
    assert watchdog.maybe_ping(healthy=True) is False
    assert notify_socket.pending() == 0
