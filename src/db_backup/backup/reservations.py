"""Space that running dumps may still write, so two dumps never count on the same free bytes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog

from db_backup.util.fsutil import describe_os_error, disk_size, write_atomically

log = structlog.get_logger("db_backup.backup.reservations")


class Reservations:
    """Space that running dumps may still write, one small JSON file per dump.

    `<state>/capacity/reservations/<pid>-<thread>-<n>.json` holds the device, the bytes and the
    paths the dump writes; what it has written so far is taken off (it is already out of the
    free space). A file whose process is gone is ignored and removed.
    """

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, state: Path) -> None:
        self.directory = state / "capacity" / "reservations"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialises check-and-reserve across threads and processes (a flock)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory.parent / "reservations.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def reserved(self, device: int) -> int:
        """Returns the bytes live reservations on `device` may still write."""
        total = 0
        for path in self.directory.glob("*.json"):
            try:
                entry = json.loads(path.read_bytes())
                pid, dev, size = int(entry["pid"]), int(entry["device"]), int(entry["bytes"])
                written = [Path(p) for p in entry["paths"]]
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # not ours to understand: it reserves nothing
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            if dev == device:
                total += max(0, size - sum(disk_size(p) for p in written))
        return total

    def reserve(self, device: int, size: int, paths: list[Path]) -> Path:
        """Records a reservation; returns its token (its file) for `release`."""
        with Reservations._counter_lock:
            Reservations._counter += 1
            number = Reservations._counter
        token = self.directory / f"{os.getpid()}-{threading.get_ident()}-{number}.json"
        document = {
            "pid": os.getpid(),
            "device": device,
            "bytes": size,
            "paths": [str(p) for p in paths],
        }
        write_atomically(token, json.dumps(document).encode(), 0o640)
        return token

    def release(self, token: Path) -> None:
        """Removes a reservation (a failure is only logged: a dead pid frees it anyway)."""
        try:
            token.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("reservation not removed", error=describe_os_error(exc, token))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
