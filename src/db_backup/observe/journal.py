"""Structured logging to systemd-journald over its native protocol, and a structlog renderer for it.

Each log entry is one AF_UNIX datagram to ``/run/systemd/journal/socket`` holding ``KEY=value``
lines (systemd ``docs/JOURNAL_NATIVE_PROTOCOL.md``). Values that contain a newline, a NUL byte or
bytes that are not UTF-8 use the binary-safe form ``KEY\\n<u64 little-endian length><bytes>\\n``.
Entries too large for one datagram are written to a sealed memfd whose descriptor is passed with
``SCM_RIGHTS``. If journald cannot be reached the entry is written as a line to stderr instead;
logging never raises into the caller.

Event-dict keys become upper-case journal fields (``job`` -> ``JOB``, ``duration_s`` ->
``DURATION_S``), so ``journalctl -u db-backup JOB=nightly STATUS=FAILED`` and ``-o json`` work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import re
import socket
import struct
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "db-backup"

# syslog(3) priorities as journald stores them in PRIORITY=.
LOG_CRIT = 2
LOG_ERR = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_INFO = 6
LOG_DEBUG = 7

_LEVEL_PRIORITIES: dict[str, int] = {
    "critical": LOG_CRIT,
    "fatal": LOG_CRIT,
    "exception": LOG_ERR,
    "error": LOG_ERR,
    "err": LOG_ERR,
    "warning": LOG_WARNING,
    "warn": LOG_WARNING,
    "notice": LOG_NOTICE,
    "info": LOG_INFO,
    "msg": LOG_INFO,
    "log": LOG_INFO,
    "debug": LOG_DEBUG,
}

# Keys the renderer consumes itself rather than turning into fields of the same name.
_META_KEYS = frozenset(
    {"event", "level", "timestamp", "exc_info", "exception", "stack", "stack_info"}
)
# Keys stored as fields but kept out of the human MESSAGE (noise when reading `journalctl`).
_FIELD_ONLY_KEYS = frozenset(
    {"logger", "logger_name", "filename", "module", "thread", "thread_name", "process"}
)
# structlog CallsiteParameterAdder keys -> the journal's well-known code location fields.
_CODE_FIELDS = {"func_name": "CODE_FUNC", "pathname": "CODE_FILE", "lineno": "CODE_LINE"}
_RESERVED_FIELDS = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"})
_INVALID_NAME_CHARS = re.compile(r"[^A-Z0-9_]")
_MAX_FIELD_NAME = 64
_MAX_INLINE_VALUE = 200
_MEMFD_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """Return True when fd 2 is the journal stream systemd connected (``JOURNAL_STREAM``)."""
    env = os.environ if environ is None else environ
    expected = env.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(2)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def field_name(key: str) -> str | None:
    """Return ``key`` as a valid journal field name (upper case, ``[A-Z0-9_]``), or None."""
    name = _INVALID_NAME_CHARS.sub("_", key.upper()).lstrip("_0123456789")
    name = name[:_MAX_FIELD_NAME]
    return name or None


def field_value(value: object) -> bytes:
    """Return the bytes stored for a field value: text as UTF-8, mappings/lists as JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat().encode()
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True).encode()
    return str(value).encode("utf-8", errors="surrogateescape")


def _needs_binary_form(raw: bytes) -> bool:
    """Return True when a value cannot be sent as a plain ``KEY=value`` line."""
    if b"\n" in raw or b"\0" in raw:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def encode_field(name: str, value: bytes) -> bytes:
    """Return one field in the native protocol, choosing the binary-safe form when needed."""
    key = name.encode("ascii")
    if _needs_binary_form(value):
        return key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key + b"=" + value + b"\n"


def encode_entry(
    message: str, priority: int, fields: Mapping[str, object], identifier: str
) -> bytes:
    """Return a whole journal entry: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, then the fields."""
    parts = [
        encode_field("MESSAGE", field_value(message)),
        encode_field("PRIORITY", str(min(max(int(priority), 0), 7)).encode()),
        encode_field("SYSLOG_IDENTIFIER", field_value(identifier)),
    ]
    for key, value in fields.items():
        name = field_name(key)
        if name is None or name in _RESERVED_FIELDS or value is None:
            continue
        parts.append(encode_field(name, field_value(value)))
    return b"".join(parts)


class JournalSender:
    """Send entries to journald's native socket, falling back to stderr when it is unreachable."""

    def __init__(
        self, socket_path: str = JOURNAL_SOCKET, identifier: str = SYSLOG_IDENTIFIER
    ) -> None:
        """Prepare to send to ``socket_path`` as ``identifier``; the socket opens on first use."""
        self.socket_path = socket_path
        self.identifier = identifier
        self._socket: socket.socket | None = None
        self._fallback_announced = False

    def send(self, message: str, priority: int, fields: Mapping[str, object] | None = None) -> bool:
        """Log one entry; return True if journald got it, False if it went to stderr instead."""
        try:
            data = encode_entry(message, priority, fields or {}, self.identifier)
        except Exception as exc:  # a broken __str__ must not break logging
            self._fallback(f"{message} (journal encoding failed: {exc!r})", priority)
            return False
        try:
            self._send_bytes(data)
        except OSError as exc:
            self._fallback(message, priority, reason=exc)
            return False
        return True

    def _send_bytes(self, data: bytes) -> None:
        """Send an encoded entry as a datagram, or through a memfd if it is too large."""
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.sendto(data, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_via_memfd(data)

    def _send_via_memfd(self, data: bytes) -> None:
        """Write the entry to a sealed memfd and pass the descriptor with SCM_RIGHTS."""
        assert self._socket is not None
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            # journald only trusts an fd from an unprivileged sender if it is a sealed memfd.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _MEMFD_SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self._socket.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def _fallback(self, message: str, priority: int, reason: Exception | None = None) -> None:
        """Write the entry as one stderr line (with a ``<N>`` prefix when stderr is the journal)."""
        with contextlib.suppress(Exception):
            stream = sys.stderr
            if stream is None:
                return
            to_journal = stderr_is_journal()
            prefix = f"<{priority}>" if to_journal else ""
            if reason is not None and not self._fallback_announced:
                self._fallback_announced = True
                stream.write(
                    f"{f'<{LOG_WARNING}>' if to_journal else ''}"
                    f"{self.identifier}: journal socket {self.socket_path} unusable "
                    f"({reason}); logging to stderr\n"
                )
            line = message.replace("\n", "\n" + prefix) if prefix else message
            stream.write(f"{prefix}{self.identifier}: {line}\n")
            stream.flush()

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _inline(value: object) -> str | None:
    """Return ``value`` formatted for the human MESSAGE, or None if it is too big or multi-line."""
    if isinstance(value, Mapping | list | tuple):
        return None
    text = value.isoformat() if isinstance(value, dt.datetime | dt.date) else str(value)
    if "\n" in text or len(text) > _MAX_INLINE_VALUE:
        return None
    if text == "" or any(ch.isspace() or ch in "\"'=" for ch in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _format_exception(event_dict: MutableMapping[str, Any]) -> str | None:
    """Return the traceback text carried by ``exception``/``exc_info``, if any."""
    formatted = event_dict.get("exception")
    if isinstance(formatted, str) and formatted:
        return formatted
    exc_info = event_dict.get("exc_info")
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return "".join(traceback.format_exception(exc_info))
    if isinstance(exc_info, tuple):
        return "".join(traceback.format_exception(*exc_info))
    current = sys.exc_info()
    if current[1] is None:
        return None
    return "".join(traceback.format_exception(*current))


class JournalRenderer:
    """Final structlog processor: send the event to the journal, then drop it.

    ``event`` becomes ``MESSAGE`` followed by the short fields as ``key=value`` (one greppable
    line, e.g. ``job finished job=nightly status=SUCCESS bytes=123``); every key becomes an
    upper-case journal field; the level becomes ``PRIORITY``. A traceback is appended to MESSAGE
    and stored in ``EXCEPTION``. Raises ``structlog.DropEvent`` so nothing else is printed.
    """

    def __init__(self, sender: JournalSender | None = None) -> None:
        """Send through ``sender`` (default: journald's standard socket)."""
        self.sender = sender if sender is not None else JournalSender()

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        """Send ``event_dict`` to the journal and raise ``structlog.DropEvent``."""
        message, priority, fields = self.render(method_name, event_dict)
        self.sender.send(message, priority, fields)
        raise structlog.DropEvent

    @staticmethod
    def render(
        method_name: str, event_dict: MutableMapping[str, Any]
    ) -> tuple[str, int, dict[str, object]]:
        """Return (MESSAGE, PRIORITY, fields) for an event dict without sending anything."""
        level = str(event_dict.get("level") or method_name).lower()
        priority = _LEVEL_PRIORITIES.get(level, LOG_INFO)
        event = event_dict.get("event")
        text = "" if event is None else str(event)

        fields: dict[str, object] = {}
        pairs: list[str] = []
        for key, value in event_dict.items():
            if key in _META_KEYS or value is None:
                continue
            if key in _CODE_FIELDS:
                fields[_CODE_FIELDS[key]] = value
                continue
            name = field_name(key)
            if name is None or name in _RESERVED_FIELDS:
                continue
            fields[name] = value
            if key in _FIELD_ONLY_KEYS:
                continue
            shown = _inline(value)
            if shown is not None:
                pairs.append(f"{key}={shown}")

        if text:
            fields["EVENT"] = text
        message = " ".join([text, *pairs]) if text else " ".join(pairs)
        trace = _format_exception(event_dict)
        if trace:
            fields["EXCEPTION"] = trace.rstrip("\n")
            message = f"{message}\n{trace.rstrip()}"
        return message, priority, fields
