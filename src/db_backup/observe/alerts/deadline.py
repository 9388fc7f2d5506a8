"""A hard limit on one delivery attempt: at its end, every socket the attempt opened is shut.

A socket timeout bounds each read, not the whole exchange: a server that trickles one byte
every few seconds, or an SMTP server that answers each command just in time, keeps a sender
busy for ever. `Deadline` shuts the attempt's sockets down when its time is up, so the blocked
read returns at once and the attempt fails as a timeout (and is tried again, or left for later).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Deadline:
    """Shuts down the sockets handed to `watch` once `seconds` have passed since `__enter__`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = max(0.0, seconds)
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.name = "db-backup-alert-deadline"

    def watch(self, sock: socket.socket) -> None:
        """Shuts `sock` down when the deadline passes (at once when it has passed already)."""
        with self._lock:
            if not self.expired:
                self._sockets.append(sock)
                return
        _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        with self._lock:
            self._sockets = []


def _shut(sock: socket.socket) -> None:
    """Ends both directions of `sock`: a read blocked on it returns (the owner closes it)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
