"""The /metrics server itself, over real loopback sockets: snapshot, formats, limits, refresh.

The metrics are a counter family whose value the test sets; `compute` counts its calls, so the
tests see that a scrape never computes, and that a change is seen at the next scrape.
"""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from db_backup.observe import metrics_http
from db_backup.observe.metrics_http import MetricsServer, listen

pytestmark = pytest.mark.integration


@dataclass
class Source:
    """What the server serves: one gauge, and a stamp that says when it changed."""

    value: float = 1.0
    version: int = 0
    calls: int = 0
    fail: bool = False

    def compute(self) -> list[Metric]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("the index is gone")
        gauge = GaugeMetricFamily("db_backup_test_value", "A value the test sets.")
        gauge.add_metric([], self.value)
        return [gauge]

    def stamp(self) -> tuple[object, ...]:
        return (self.version,)

    def change(self, value: float) -> None:
        self.value = value
        self.version += 1


@pytest.fixture
def source() -> Source:
    return Source()


@pytest.fixture
def server(source: Source) -> Iterator[MetricsServer]:
    started = MetricsServer(listen("127.0.0.1", 0), source.compute, source.stamp)
    yield started
    started.stop()


def _get(server: MetricsServer, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}/metrics")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _value(body: bytes) -> float:
    families = text_string_to_metric_families(body.decode())
    [sample] = [s for f in families for s in f.samples if s.name == "db_backup_test_value"]
    return float(sample.value)


def _raw(server: MetricsServer, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_scrapes_are_answered_from_the_snapshot_without_computing(
    server: MetricsServer, source: Source
) -> None:
    for _ in range(50):
        status, headers, body = _get(server)
        assert status == 200 and _value(body) == 1.0
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert source.calls == 1  # the snapshot taken at start, and nothing since


def test_openmetrics_gzip_and_head_as_prometheus_client_answers_them(
    server: MetricsServer,
) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = _get(server, {"Accept": accept, "Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    text = gzip.decompress(body).decode()
    assert "db_backup_test_value 1.0" in text and text.endswith("# EOF\n")
    head = _raw(server, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
    ],
)
def test_bad_requests_get_an_error_and_the_connection_closed(
    server: MetricsServer, request_bytes: bytes, status: bytes
) -> None:
    answer = _raw(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status)


def test_a_change_is_seen_at_the_next_scrape(server: MetricsServer, source: Source) -> None:
    _get(server)
    source.change(2.0)
    assert _value(_get(server)[2]) == 2.0  # it waited for the new snapshot
    assert source.calls == 2
    server.changed()  # a job ended: renewed at once, whatever the stamp says
    source.value = 3.0
    assert _value(_get(server)[2]) == 3.0


def test_a_failing_computation_keeps_the_last_snapshot(
    server: MetricsServer, source: Source
) -> None:
    source.fail = True
    source.change(5.0)
    status, _, body = _get(server)
    assert status == 200 and _value(body) == 1.0


def test_a_slow_request_is_cut_after_the_header_timeout(
    monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    monkeypatch.setattr(metrics_http, "HEADER_TIMEOUT_S", 0.5)
    server = MetricsServer(listen("127.0.0.1", 0), source.compute, source.stamp)
    try:
        with socket.create_connection(server.address, timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            for _ in range(20):  # a header line every 0.1 s: never idle, never done
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    break
                time.sleep(0.1)
            assert sock.recv(100) == b""  # closed, without an answer
            assert time.monotonic() - started < 1.5
    finally:
        server.stop()


def test_over_the_cap_a_waiting_newcomer_is_closed_and_a_ready_one_answered(
    monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(metrics_http, "EVICT_AFTER_S", 0.5)
    server = MetricsServer(listen("127.0.0.1", 0), source.compute, source.stamp)
    slow = []
    try:
        for _ in range(4):
            sock = socket.create_connection(server.address, timeout=10)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            slow.append(sock)
        time.sleep(0.2)
        assert server.connections == 4
        # A fifth that has not sent all its request: no room, nobody old enough to leave:
        # closed at once.
        with socket.create_connection(server.address, timeout=10) as late:
            late.sendall(b"GET /metrics HTTP/1.1\r\n")
            assert late.recv(100) == b""
        # One that sent its request at once is answered without needing a place.
        assert _raw(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
        # Past EVICT_AFTER_S, a newcomer takes the place of the oldest slow one.
        with socket.create_connection(server.address, timeout=10) as newcomer:
            newcomer.sendall(b"GET /metrics")
            assert slow[0].recv(100) == b""
            newcomer.sendall(b" HTTP/1.1\r\n\r\n")  # the rest of its request: answered
            assert newcomer.recv(100).startswith(b"HTTP/1.1 200")
        assert server.connections <= 4
    finally:
        for sock in slow:
            sock.close()
        server.stop()


def test_stop_closes_every_connection_and_the_port_at_once(source: Source) -> None:
    server = MetricsServer(listen("127.0.0.1", 0), source.compute, source.stamp)
    address = server.address
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    time.sleep(0.1)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1.5
    assert sock.recv(100) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)


def test_connections_that_send_nothing_are_not_even_accepted(server: MetricsServer) -> None:
    silent = [socket.create_connection(server.address, timeout=10) for _ in range(20)]
    try:
        time.sleep(0.3)
        assert server.connections == 0  # TCP_DEFER_ACCEPT: the kernel holds them, not us
        assert _get(server)[0] == 200
    finally:
        for sock in silent:
            sock.close()
