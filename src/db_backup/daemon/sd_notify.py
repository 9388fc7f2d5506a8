"""sd_notify glue: readiness, status line, reload/stop notifications and a loop-fed watchdog.

Built on the ``sdnotify`` package for finding and connecting the notification socket
(``NOTIFY_SOCKET``, including abstract ``@name`` sockets). Messages are encoded as UTF-8 here and
written to that socket directly, because ``sdnotify`` encodes latin-1 and silently drops anything
else (a Chinese STATUS line would vanish); systemd itself accepts UTF-8.

Everything is a no-op when ``NOTIFY_SOCKET`` is unset, so the same code runs in a terminal.
systemd 252 (Debian 12) knows READY, STATUS, RELOADING, STOPPING, WATCHDOG and
EXTEND_TIMEOUT_USEC; ``MONOTONIC_USEC`` is sent with RELOADING for systemd >= 253 and ignored by
older versions.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import sdnotify
import structlog

log = structlog.get_logger(__name__)

# systemd reads notification datagrams into a buffer of this size (NOTIFY_BUFFER_MAX, PIPE_BUF)
# and drops anything larger, so long status lines are shortened to fit.
_MAX_DATAGRAM = 4096
_MAX_STATUS_BYTES = 1024


def _single_line(text: str) -> str:
    """Return ``text`` with line breaks collapsed to spaces, as the protocol is line based."""
    return " ".join(text.replace("\r", "\n").split("\n")).strip()


def _truncate_utf8(text: str, limit: int) -> str:
    """Return ``text`` cut to at most ``limit`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", errors="ignore") + "..."


class SdNotifier:
    """Send sd_notify messages to the service manager; does nothing outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Connect to ``NOTIFY_SOCKET`` from ``environ`` (default ``os.environ``) if it is set."""
        env = os.environ if environ is None else environ
        self.address: str | None = env.get("NOTIFY_SOCKET") or None
        self._socket: socket.socket | None = None
        if self.address is None:
            return
        if not self.address.startswith(("/", "@")):
            log.warning("notify socket ignored", notify_socket=self.address, reason="unsupported")
            return
        try:
            notifier = self._connect(self.address)
        except OSError as exc:
            log.warning("notify socket unusable", notify_socket=self.address, error=str(exc))
            return
        self._socket = notifier.socket
        # A service manager that stops reading must not freeze the scheduler loop: a full
        # queue makes a send fail (and the message is dropped) instead of blocking.
        self._socket.setblocking(False)

    @staticmethod
    def _connect(address: str) -> sdnotify.SystemdNotifier:
        """Return an ``sdnotify`` notifier connected to ``address`` (raising on failure)."""
        saved = os.environ.get("NOTIFY_SOCKET")
        if saved == address:
            return sdnotify.SystemdNotifier(debug=True)
        # SystemdNotifier only reads the process environment; point it at our address briefly.
        os.environ["NOTIFY_SOCKET"] = address
        try:
            return sdnotify.SystemdNotifier(debug=True)
        finally:
            if saved is None:
                del os.environ["NOTIFY_SOCKET"]
            else:
                os.environ["NOTIFY_SOCKET"] = saved

    @property
    def enabled(self) -> bool:
        """Return True when messages actually go to a service manager."""
        return self._socket is not None

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` assignments in one datagram; return True if it was delivered.

        Values are made single-line (the protocol separates assignments with newlines); a
        ``STATUS`` value is shortened to fit systemd's datagram buffer.
        """
        if self._socket is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = _single_line(str(value))
            if key == "STATUS":
                text = _truncate_utf8(text, _MAX_STATUS_BYTES)
            lines.append(f"{key}={text}")
        payload = "\n".join(lines).encode("utf-8")
        if len(payload) > _MAX_DATAGRAM:
            log.warning("sd_notify message too long, not sent", size=len(payload))
            return False
        try:
            self._socket.sendall(payload)
        except BlockingIOError:
            log.debug("sd_notify queue full, message dropped", notify_socket=self.address)
            return False
        except OSError as exc:
            log.warning("sd_notify send failed", notify_socket=self.address, error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status line."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status`` (UTF-8, newlines flattened)."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """Send one watchdog keep-alive (``WATCHDOG=1``)."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=status)

    def reloading(self) -> bool:
        """Tell systemd a configuration reload started (``RELOADING=1`` with ``MONOTONIC_USEC``).

        Follow it with ``ready()`` when the reload is finished, whether it succeeded or not.
        """
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before a start/stop timeout fires (``EXTEND_TIMEOUT_USEC``)."""
        return self.send(EXTEND_TIMEOUT_USEC=max(0, int(seconds * 1_000_000)))

    def close(self) -> None:
        """Close the notification socket; later messages are dropped."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return how often to ping the watchdog in seconds (half of ``WATCHDOG_USEC``), or None.

    None when no watchdog is configured, the value is unusable, or ``WATCHDOG_PID`` names another
    process (the watchdog is meant for the main process only).
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class Watchdog:
    """Feed the systemd watchdog from the scheduler loop, only while the daemon is healthy.

    There is deliberately no background thread: if the loop hangs, or keeps reporting an unhealthy
    state (a job making no progress), pings stop and ``WatchdogSec=`` restarts the service.
    """

    def __init__(
        self,
        notifier: SdNotifier,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Use ``interval`` seconds between pings (default: ``watchdog_interval()``)."""
        self.notifier = notifier
        self.interval = watchdog_interval() if interval is None else interval
        self._clock = clock
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        """Return True when a watchdog is configured and the notifier is connected."""
        return self.interval is not None and self.notifier.enabled

    def max_sleep(self) -> float | None:
        """Return the longest the loop may sleep between ``maybe_ping`` calls, or None.

        Half the ping interval (a quarter of ``WatchdogSec``) keeps two pings at most 1.5 intervals
        apart even when a wake-up lands just before the interval has elapsed.
        """
        if not self.enabled or self.interval is None:
            return None
        return self.interval / 2

    def maybe_ping(self, healthy: bool) -> bool:
        """Send ``WATCHDOG=1`` if healthy and an interval has passed since the last ping.

        Returns True when a ping was sent.
        """
        if not healthy or not self.enabled or self.interval is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        if self.notifier.watchdog():
            self._last_ping = now
            return True
        return False
