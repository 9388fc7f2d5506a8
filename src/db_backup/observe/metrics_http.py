"""The daemon's /metrics endpoint: a snapshot served by one event loop, bounded in every way.

Whoever can reach the port (any local user, on loopback) must not be able to slow the backups
down, so the endpoint costs the daemon a fixed amount whatever comes in:

- Two threads, always: one I/O thread multiplexes every connection with `selectors` (epoll: no
  descriptor-number limit, unlike select()), one refresher thread computes the metrics. No
  thread per connection or per request.
- At most `MAX_CONNECTIONS` connections. When full, a newcomer takes the place of the oldest
  connection still sending its request after `EVICT_AFTER_S` (a slow client or a slowloris: a
  scraper sends its request at once), or is closed at once when there is none.
- The request line and headers must arrive within `HEADER_TIMEOUT_S` in all, at most
  `MAX_HEADER_BYTES`; the whole exchange ends within `REQUEST_TIMEOUT_S`. Answers close the
  connection.
- A scrape is answered from a snapshot of the metrics (its encodings cached), never computed for
  the request. The refresher renews it when the daemon says something changed (`changed()`)
  or the sources did (the reports and drills directories, the stale and failure-count files:
  a few `stat` calls per scrape), at most once per
  `MIN_REFRESH_INTERVAL_S`, and every `REFRESH_EVERY_S` anyway. A scrape that finds the
  sources changed waits for the new snapshot, `FRESH_WAIT_S` at most, so a report written by
  another process shows at the next scrape. The refresher reads the report index as a scrape
  used to, but once per change at most, not once per request.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from db_backup.config import Config

log = structlog.get_logger("db_backup.observe.metrics")

MAX_CONNECTIONS = 64
EVICT_AFTER_S = 0.5
HEADER_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 8192
MIN_REFRESH_INTERVAL_S = 1.0
REFRESH_EVERY_S = 60.0
FRESH_WAIT_S = 5.0
ACCEPTS_PER_ROUND = 64  # then the connections already open get their turn
_CACHED_ENCODINGS = 8  # Accept headers vary; the usual few are kept encoded

Stamp = tuple[object, ...]


class _Frozen(Collector):
    """A collector that yields the families it was given (a snapshot's registry)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        """Yields the snapshot's families."""
        return iter(self.families)


@dataclass
class Snapshot:
    """The metrics as computed once, with the encodings asked for so far."""

    families: list[Metric]
    _registry: CollectorRegistry = field(init=False)
    _encoded: dict[tuple[str, bool], tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Frozen(self.families))

    def body(self, accept: str, accept_encoding: str, names: list[str]) -> tuple[bytes, list[str]]:
        """Returns the answer's body and headers for these request headers, as
        prometheus-client's own handler would make them (format by Accept, gzip, name[])."""
        zipped = gzip_accepted(accept_encoding)
        encoder, content_type = choose_encoder(accept)
        headers = [f"Content-Type: {content_type}"]
        if zipped:
            headers.append("Content-Encoding: gzip")
        if names:  # a filtered scrape: rare, so not cached
            output = encoder(self._registry.restricted_registry(names))
            return (gzip.compress(output) if zipped else output), headers
        cached = self._encoded.get((accept, zipped))
        if cached is None:
            output = encoder(self._registry)
            cached = (gzip.compress(output) if zipped else output, content_type)
            if len(self._encoded) < _CACHED_ENCODINGS:
                self._encoded[(accept, zipped)] = cached
        return cached[0], headers


def sources_stamp(config: Config) -> Stamp:
    """Returns what changes when the metrics' sources change: (inode, mtime, size) of the
    reports and drills directories and of the stale and failure-count files."""
    from db_backup.observe.events import FAILURES_FILE
    from db_backup.observe.staleness import STATE_FILE
    from db_backup.reports.drills import drills_dir

    state = config.directories.state
    paths = (config.directories.reports, drills_dir(config), state / STATE_FILE)
    stamps: list[tuple[int, int, int] | None] = []
    for path in (*paths, state / FAILURES_FILE):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def _racy(stamp: Stamp) -> bool:
    """Returns whether a stamped change is so recent that another in the same clock tick would
    not show (the next look refreshes again)."""
    recent = time.time_ns() - 1_000_000_000
    return any(isinstance(item, tuple) and item[1] >= recent for item in stamp)


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    request: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None  # the answer, once there is one
    parked: float | None = None  # waiting for a fresh snapshot since (monotonic)
    needs: int = 0  # parked: the number of the refresh whose snapshot it waits for
    linger: bool = False  # an error answer: the rest of the request is read, not reset
    draining: bool = False  # answered (and FIN sent): reading what is left until the client ends
    head: tuple[str, str, str, list[str]] | None = None  # method, accept, encoding, names


class MetricsServer:
    """/metrics on `sock`, served from a snapshot of `compute()` (see the module's text)."""

    def __init__(
        self,
        sock: socket.socket,
        compute: Callable[[], list[Metric]],
        stamp: Callable[[], Stamp],
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._compute = compute
        self._stamp = stamp
        self._snapshot: Snapshot | None = None
        self._snapshot_stamp: Stamp | None = None
        self._want = threading.Event()
        self._stopping = threading.Event()
        self._last_refresh = 0.0
        self._begun = 0  # refreshes begun
        self._done = 0  # the number of the refresh that made the current snapshot
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._conns: dict[int, _Conn] = {}
        self._warned = 0.0  # when "not accepted" was last logged
        self._selector = selectors.DefaultSelector()
        self.refresh()  # the first snapshot, before anyone can ask
        self._threads = [
            threading.Thread(target=self._serve, name="db-backup-metrics-io", daemon=True),
            threading.Thread(target=self._refresh_loop, name="db-backup-metrics", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """Returns the (host, port) actually bound (port 0 in the config picks a free one)."""
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def connections(self) -> int:
        """Returns how many connections are open now."""
        return len(self._conns)

    def changed(self) -> None:
        """Says the metrics' sources changed (a job ended): the snapshot is renewed soon."""
        self._snapshot_stamp = None
        self._want.set()

    def stop(self) -> None:
        """Stops serving, closes every connection and the socket; returns within a second."""
        self._stopping.set()
        self._want.set()
        self._poke()
        for thread in self._threads:
            thread.join(timeout=1)
        if not self._threads[0].is_alive():  # else the I/O thread may still use them
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    # --- the snapshot --------------------------------------------------------------------

    def refresh(self) -> bool:
        """Computes a new snapshot now; returns False (the old one kept) when that failed."""
        self._begun += 1
        number = self._begun
        stamp = self._stamp()  # before computing: a change meanwhile shows in the next stamp
        started = time.monotonic()
        try:
            families = self._compute()
        except Exception as exc:  # keep serving the last good snapshot
            log.error("metrics not computed", error=f"{type(exc).__name__}: {exc}")
            return False
        else:
            self._snapshot = Snapshot(families)
            self._snapshot_stamp = None if _racy(stamp) else stamp
            log.debug("metrics snapshot renewed", took_s=round(time.monotonic() - started, 3))
            return True
        finally:
            self._last_refresh = time.monotonic()
            self._done = number  # parked scrapes get what there is now, even after a failure
            self._poke()

    def _refresh_loop(self) -> None:
        while not self._stopping.is_set():
            self._want.wait(REFRESH_EVERY_S)
            self._want.clear()
            if self._stopping.is_set():
                return
            pause = self._last_refresh + MIN_REFRESH_INTERVAL_S - time.monotonic()
            if pause > 0 and self._stopping.wait(pause):
                return
            self.refresh()

    def _stale(self) -> bool:
        """Returns whether the sources changed since the snapshot (a few stats); asks the
        refresher for a new one when they did."""
        try:
            stale = self._snapshot_stamp is None or self._stamp() != self._snapshot_stamp
        except Exception:  # a config without its directories: nothing to wait for
            stale = False
        if stale:
            self._want.set()
        return stale

    # --- the event loop ------------------------------------------------------------------

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
            os.write(self._wake_w, b"\0")

    def _serve(self) -> None:
        selector = self._selector
        selector.register(self.sock, selectors.EVENT_READ, "listen")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, events in selector.select(0.25):
                    if key.data == "listen":
                        self._accept(time.monotonic())
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    elif events & selectors.EVENT_READ:
                        self._read(key.data)
                    else:
                        self._write(key.data)
                self._tend(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            selector.close()
            self.sock.close()

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_ROUND):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the backlog waits, the loop goes on
                if now - self._warned > 60:
                    self._warned = now
                    log.warning("metrics connection not accepted", error=exc.strerror)
                return
            sock.setblocking(False)
            conn = _Conn(sock, now)
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            # A scraper's request is usually there already: answered now, it needs no place.
            self._read(conn)
            over = self._waiting(conn) and len(self._conns) > MAX_CONNECTIONS
            if over and not self._evict(now, conn):
                self._close(conn)  # over the cap and nobody to make room: closed at once

    def _waiting(self, conn: _Conn) -> bool:
        """Returns whether `conn` is open and still sending its request."""
        return conn.head is None and self._conns.get(conn.sock.fileno()) is conn

    def _evict(self, now: float, newcomer: _Conn) -> bool:
        """Closes the oldest connection still sending its request after EVICT_AFTER_S."""
        slow = [
            c
            for c in self._conns.values()
            if c is not newcomer and c.head is None and now - c.opened > EVICT_AFTER_S
        ]
        if not slow:
            return False
        self._close(min(slow, key=lambda c: c.opened))
        return True

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if conn.head is not None or conn.draining:
            return  # parked or answered: what follows the request is not wanted
        conn.request += data
        end = conn.request.find(b"\r\n\r\n")
        if (end if end >= 0 else len(conn.request)) > MAX_HEADER_BYTES:
            self._answer(conn, "431 Request Header Fields Too Large", [], b"", linger=True)
            return
        if end < 0:
            return
        parsed = _parse(bytes(conn.request[:end]))
        if parsed is None:
            self._answer(conn, "400 Bad Request", [], b"", linger=True)
            return
        method, path, accept, encoding, names = parsed
        if method not in {"GET", "HEAD"}:
            self._answer(conn, "405 Method Not Allowed", ["Allow: GET, HEAD"], b"", linger=True)
        elif path == "/favicon.ico":
            self._answer(conn, "200 OK", [], b"")
        else:
            conn.head = (method, accept, encoding, names)
            # Parked only while there is room: over the cap the snapshot there is will do.
            if len(self._conns) <= MAX_CONNECTIONS and self._stale():
                conn.parked = time.monotonic()
                conn.needs = self._begun + 1  # a refresh begun after the change
            else:
                self._answer_metrics(conn)

    def _answer_metrics(self, conn: _Conn) -> None:
        snapshot = self._snapshot
        assert conn.head is not None
        method, accept, encoding, names = conn.head
        conn.parked = None
        if snapshot is None:
            self._answer(conn, "503 Service Unavailable", [], b"metrics not computed yet\n")
            return
        body, headers = snapshot.body(accept, encoding, names)
        self._answer(conn, "200 OK", headers, body, head_only=method == "HEAD")

    def _answer(
        self,
        conn: _Conn,
        status: str,
        headers: list[str],
        body: bytes,
        head_only: bool = False,
        linger: bool = False,
    ) -> None:
        """Sends the answer and ends the connection: at once, or with `linger` (the request
        may not all have been read) by sending FIN and reading the rest until the client
        closes, so the unread bytes do not turn the close into a reset that loses the answer."""
        conn.linger = linger
        lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.out = memoryview(head if head_only else head + body)
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        if conn.out is None:
            return
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        if not conn.linger:
            self._close(conn)
            return
        conn.out, conn.draining = None, True
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _tend(self, now: float) -> None:
        """Answers parked scrapes whose snapshot came (or waited long enough), ends the slow."""
        for conn in list(self._conns.values()):
            if conn.parked is not None:
                if self._done >= conn.needs or now - conn.parked >= FRESH_WAIT_S:
                    self._answer_metrics(conn)
            elif conn.head is None and now - conn.opened > HEADER_TIMEOUT_S:
                self._close(conn)  # a request that never ends: no answer
            elif now - conn.opened > REQUEST_TIMEOUT_S:
                self._close(conn)  # an answer nobody reads

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.sock.close()


def _parse(head: bytes) -> tuple[str, str, str, str, list[str]] | None:
    """Returns (method, path, Accept, Accept-Encoding, name[] values) of a request's head."""
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/"):
        return None
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    parts = urllib.parse.urlsplit(target)
    names = urllib.parse.parse_qs(parts.query).get("name[]", [])
    return method, parts.path, headers.get("accept", ""), headers.get("accept-encoding", ""), names


def listen(host: str, port: int) -> socket.socket:
    """Returns a listening TCP socket on (host, port), IPv4 or IPv6 as the host resolves;
    raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accept() only once the client has sent something: a scraper's request is then there
        # to be answered at once, and a connection that sends nothing costs no descriptor.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(HEADER_TIMEOUT_S))
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    host: str, port: int, config: Callable[[], Config], compute: Callable[[Config], list[Metric]]
) -> MetricsServer:
    """Returns the endpoint serving `compute(config())` on (host, port); raises OSError."""
    return MetricsServer(
        listen(host, port),
        lambda: compute(config()),
        lambda: (id(config()), *sources_stamp(config())),
    )
