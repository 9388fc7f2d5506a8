"""Many loopback HTTP clients in one thread: a flood of scrapes or a slowloris.

    with Crowd(port, size=300, kind=SLOW):      # 300 connections sending a request for ever
        with Crowd(port, size=64, kind=SCRAPE) as flood:   # 64 GETs always in flight
            time.sleep(10)
        print(flood.tally)

One `selectors` loop drives every connection (no thread per client), so thousands of them cost
the test little; the caller raises RLIMIT_NOFILE when it asks for more than 1024. A connection
the server closes is opened again after `reopen_after` seconds: the crowd stays the size it was
asked to be. Sockets close with SO_LINGER 0, so no TIME_WAIT piles up on the client side.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

SCRAPE = "scrape"
SLOW = "slow"
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: crowd\r\n\r\n"
_LINGER_0 = struct.pack("ii", 1, 0)


@dataclass
class Tally:
    """What the crowd saw: answers (2xx), connections closed without one, failures to connect,
    and the latency of each answer (seconds, connect to close)."""

    opened: int = 0
    answered: int = 0
    unanswered: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass
class _Client:
    sock: socket.socket
    opened: float
    connected: bool = False
    answer: bytes = b""
    next_byte: float = 0.0


class Crowd:
    """`size` clients of one `kind` against 127.0.0.1:`port`, until `stop()`."""

    def __init__(
        self,
        port: int,
        size: int,
        kind: str = SCRAPE,
        slow_every: float = 1.0,
        reopen_after: float = 0.05,
    ) -> None:
        self.port = port
        self.size = size
        self.kind = kind
        self.slow_every = slow_every
        self.reopen_after = reopen_after
        self.tally = Tally()
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._reopen: list[float] = []  # when each closed slot may open again
        self._thread = threading.Thread(target=self._run, name=f"crowd-{kind}", daemon=True)

    def __enter__(self) -> Crowd:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Closes every connection and ends the thread."""
        self._stop.set()
        self._thread.join(10)

    @property
    def open_now(self) -> int:
        """Returns how many connections are open."""
        return len(self._selector.get_map()) if not self._stop.is_set() else 0

    # --- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            for _ in range(self.size):
                self._open()
            while not self._stop.is_set():
                now = time.monotonic()
                due = [at for at in self._reopen if at <= now]
                self._reopen = [at for at in self._reopen if at > now]
                for _ in due:
                    self._open()
                for key, events in self._selector.select(0.05):
                    self._step(key.data, events)
                if self.kind == SLOW:
                    self._trickle(time.monotonic())
        finally:
            for key in list(self._selector.get_map().values()):
                client = key.data
                self._selector.unregister(client.sock)
                client.sock.close()
            self._selector.close()

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.tally.refused += 1
            self._reopen.append(time.monotonic() + self.reopen_after)
            return
        self.tally.opened += 1
        client = _Client(sock, time.monotonic())
        self._selector.register(sock, selectors.EVENT_WRITE, client)

    def _close(self, client: _Client) -> None:
        self._selector.unregister(client.sock)
        client.sock.close()
        self._reopen.append(time.monotonic() + self.reopen_after)

    def _step(self, client: _Client, events: int) -> None:
        if not client.connected:
            if client.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.tally.refused += 1
                self._close(client)
                return
            client.connected = True
            first = REQUEST if self.kind == SCRAPE else b"GET /metrics HTTP/1.1\r\n"
            with contextlib.suppress(OSError):
                client.sock.send(first)
            client.next_byte = time.monotonic() + self.slow_every
            self._selector.modify(client.sock, selectors.EVENT_READ, client)
            return
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            client.answer += data
            return
        if client.answer.startswith(b"HTTP/1.1 2"):
            self.tally.answered += 1
            self.tally.latencies.append(time.monotonic() - client.opened)
        else:
            self.tally.unanswered += 1
        self._close(client)

    def _trickle(self, now: float) -> None:
        """Sends one more header line on every slow connection whose time has come."""
        for key in list(self._selector.get_map().values()):
            client = key.data
            if client.connected and now >= client.next_byte:
                client.next_byte = now + self.slow_every
                with contextlib.suppress(OSError):
                    client.sock.send(b"X-Slow: 1\r\n")
