"""Tells, as it happens, which files of a directory a writer has closed (Linux inotify).

pg_dump's directory format (`-Fd -j N`) writes one file per table from its worker processes and
closes each when the table is done; a watcher on `IN_CLOSE_WRITE` lets the upload of a finished
table start while the others are still being dumped. An event is a hint, never a proof: a file
may be opened for writing again (pg_dump's final fsync opens every file read-write), so whoever
acts on one still compares the file's stat afterwards.

Python has no inotify binding, so this calls libc through ctypes. Where inotify is unavailable
(another OS, no instances left), `start` returns False and the caller works without hints.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from db_backup.util import polling

log = structlog.get_logger("db_backup.backup.closed_files")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class ClosedFiles:
    """Calls `on_closed(names)`, from a thread of its own, with the files closed in `directory`.

    `on_closed` gets plain names (the directory is watched, not its subdirectories), those of
    every event the kernel had queued at once, in order. When the
    kernel's event queue overflows, `on_overflow` is called: events were lost, and the caller
    must look at every file again.
    """

    def __init__(
        self,
        directory: Path,
        on_closed: Callable[[list[str]], None],
        on_overflow: Callable[[], None] = lambda: None,
    ) -> None:
        self.directory = directory
        self.on_closed = on_closed
        self.on_overflow = on_overflow
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Starts watching; returns False (and watches nothing) where inotify cannot be used."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError) as exc:
            log.info("no inotify here; files are uploaded after the dump", reason=str(exc))
            return False
        fd = init(os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            log.info("inotify_init1 failed", reason=os.strerror(ctypes.get_errno()))
            return False
        mask = IN_CLOSE_WRITE | IN_MOVED_TO
        if add_watch(fd, os.fsencode(self.directory), mask) < 0:
            reason = os.strerror(ctypes.get_errno())
            os.close(fd)
            log.info("inotify_add_watch failed", path=str(self.directory), reason=reason)
            return False
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
            self._fd = fd
            self._thread = threading.Thread(target=self._run, name="closed-files", daemon=True)
            self._thread.start()
        except (OSError, RuntimeError) as exc:
            self._thread = None
            for opened in (fd, self._wake_r, self._wake_w):
                if opened >= 0:
                    with contextlib.suppress(OSError):
                        os.close(opened)
            self._fd = self._wake_r = self._wake_w = -1
            log.info("cannot start watching", path=str(self.directory), reason=str(exc))
            return False
        return True

    def stop(self) -> None:
        """Delivers the events already queued, then stops the thread and closes the descriptors."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        while True:
            ready, _ = polling.ready([self._fd, self._wake_r])
            if self._fd in ready:
                self._deliver()
            if self._wake_r in ready:
                self._deliver()  # whatever arrived with the stop
                return

    def _deliver(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            events = parse_events(data)
            names = [name for name, mask in events if name and not mask & IN_IGNORED]
            try:
                if any(mask & IN_Q_OVERFLOW for _, mask in events):
                    self.on_overflow()
                elif names:
                    self.on_closed(names)
            except Exception as exc:  # a callback's failure must not stop the watch
                log.error("a closed-file callback failed", names=names, error=repr(exc))


def parse_events(data: bytes) -> list[tuple[str, int]]:
    """Splits a read from an inotify descriptor into (name, mask) pairs."""
    events = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((os.fsdecode(raw), mask))
    return events
