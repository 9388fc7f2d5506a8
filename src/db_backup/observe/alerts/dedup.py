"""What was already said: one alert per failure streak, reminders, and the recovery.

The state lives in `<state>/notify-state.json`, so it survives processes (a timer's `db-backup run`
is one process per run) and is shared by the daemon and manual runs: every read-change-write
holds an exclusive lock on a lock file beside it. Only what is failing now is kept, per
(kind, job, database): when the streak began, how many failures, when it was last told.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from db_backup.observe.alerts.messages import FAILED, RECOVERED, REMINDER, SUCCEEDED
from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.fsutil import write_atomically

log = structlog.get_logger("db_backup.observe.alerts")

STATE_FILE = "notify-state.json"
VERSION = 1


@dataclass(frozen=True)
class Decision:
    """Whether and how to tell about one event: the alert state, failures so far, since when."""

    state: str  # FAILED | REMINDER | RECOVERED | SUCCEEDED
    failures: int = 0
    since: datetime | None = None


class DedupState:
    """The failure streaks on disk; `decide` is the one operation."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self._lock_path = state_dir / f".{STATE_FILE}.lock"
        self._thread_lock = threading.Lock()

    def decide(self, key: str, ok: bool, now: datetime, remind_every: timedelta | None) -> Decision:
        """Records one outcome for `key`; returns what to say about it.

        A failure starts a streak and is told (FAILED); later failures of the streak are
        counted and told again only once `remind_every` has passed since the last telling
        (REMINDER), never when it is None. A success ends a streak (RECOVERED) or is plain
        (SUCCEEDED). Returns a Decision whose state is "" when nothing is to be said.
        """
        with self._locked() as entries:
            entry = entries.get(key)
            if ok:
                if entry is None:
                    return Decision(SUCCEEDED)
                del entries[key]
                return Decision(RECOVERED, int(entry["failures"]), parse_utc(entry["since"]))
            if entry is None:
                entries[key] = {"since": format_utc(now), "failures": 1, "told": format_utc(now)}
                return Decision(FAILED, 1, now)
            entry["failures"] = int(entry["failures"]) + 1
            since = parse_utc(entry["since"])
            told = entry.get("told")
            if told is None:  # the first alert was never delivered: this one is the first
                entry["told"] = format_utc(now)
                return Decision(FAILED, entry["failures"], since)
            if remind_every is not None and now - parse_utc(told) >= remind_every:
                entry["told"] = format_utc(now)
                return Decision(REMINDER, entry["failures"], since)
            return Decision("", entry["failures"], since)

    def undelivered(self, key: str, since: datetime) -> None:
        """Forgets that the streak of `key` starting at `since` was told (no channel took it),
        so the next failure alerts again instead of waiting for the reminder."""
        with self._locked() as entries:
            entry = entries.get(key)
            if entry is not None and parse_utc(entry["since"]) == since:
                entry["told"] = None

    def entries(self) -> dict[str, dict[str, Any]]:
        """Returns the current streaks (for tests and status)."""
        with self._locked() as entries:
            copied: dict[str, dict[str, Any]] = json.loads(json.dumps(entries))
            return copied

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                entries = self._read()
                before = json.dumps(entries, sort_keys=True)
                yield entries
                after = json.dumps(entries, sort_keys=True)
                if after != before:
                    document = {"version": VERSION, "entries": entries}
                    data = json.dumps(document, indent=1, sort_keys=True).encode()
                    write_atomically(self.path, data + b"\n", 0o640)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning(
                "alert state unreadable, starting afresh",
                path=str(self.path),
                error=exc.strerror,
            )
            return {}
        try:
            document = json.loads(raw)
            entries = document["entries"]
            for entry in entries.values():  # every field this module reads, checked once
                parse_utc(entry["since"])
                int(entry["failures"])
                if entry.get("told") is not None:
                    parse_utc(entry["told"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "alert state corrupt, starting afresh (failures in progress alert again)",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc}",
            )
            return {}
        return dict(entries)
