"""The inotify watcher: which closes it reports, and how it reads the kernel's events."""

from __future__ import annotations

import os
import struct
import threading
import time
from pathlib import Path

from db_backup.backup.closed_files import IN_CLOSE_WRITE, IN_Q_OVERFLOW, ClosedFiles, parse_events


def test_parse_events_splits_names_padded_with_nuls() -> None:
    def event(mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name))
        return struct.pack("iIII", 1, mask, 0, len(padded)) + padded

    data = event(IN_CLOSE_WRITE, b"toc.dat") + event(IN_Q_OVERFLOW, b"")
    assert parse_events(data) == [("toc.dat", IN_CLOSE_WRITE), ("", IN_Q_OVERFLOW)]


def test_reports_files_closed_after_writing_and_not_those_only_read(tmp_path: Path) -> None:
    closed: list[str] = []
    arrived = threading.Event()

    def on_closed(names: list[str]) -> None:
        closed.extend(names)
        arrived.set()

    (tmp_path / "old.dat").write_bytes(b"before the watch")
    watcher = ClosedFiles(tmp_path, on_closed)
    assert watcher.start()
    try:
        (tmp_path / "old.dat").read_bytes()  # read-only: no event
        with (tmp_path / "3001.dat.gz").open("wb") as handle:
            handle.write(b"data")
            time.sleep(0.05)
            assert closed == []  # still open
        assert arrived.wait(10)
    finally:
        watcher.stop()
    assert closed == ["3001.dat.gz"]
    watcher.stop()  # twice is harmless


def test_stop_delivers_what_was_queued(tmp_path: Path) -> None:
    closed: list[str] = []
    watcher = ClosedFiles(tmp_path, closed.extend)
    assert watcher.start()
    for n in range(20):
        fd = os.open(tmp_path / f"{n}.dat", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    watcher.stop()
    assert sorted(closed, key=lambda s: int(s.split(".")[0])) == [f"{n}.dat" for n in range(20)]
