"""What was already said, per channel, and what is still to be said: streaks and pending alerts.

The state lives in `<state>/notify-state.json`, so it survives processes (a timer's `db-backup run`
is one process per run) and is shared by the daemon and manual runs: every read-change-write
holds an exclusive lock on a lock file beside it. It keeps two things:

- `entries`: what is failing now, per (kind, job, database): when the streak began, how many
  failures, and per channel when that channel was last told (written only once the channel
  took the message, so a channel that did not get it hears the next failure as the first).
- `pending`: per key, the newest alert decided but not yet delivered, with the channels still
  to take it and the state each gets. A run that ends before every channel answered leaves
  its alert here; the next run (or the daemon) sends it, and a newer alert for the same key
  replaces it (the newest news is what a channel should get).

The decisions are pure functions over these plain dictionaries (`fail`, `succeed`); `DedupState`
only locks, reads and writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from db_backup.observe.alerts.messages import FAILED, RECOVERED, REMINDER, SUCCEEDED
from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.fsutil import write_atomically

log = structlog.get_logger("db_backup.observe.alerts")

STATE_FILE = "notify-state.json"
VERSION = 2
# A `told` of format 1 (one time for all channels) is kept under this name: it counts for every
# channel that has no time of its own.
EVERY_CHANNEL = "*"

Entry = dict[str, Any]  # {"since": iso, "failures": int, "told": {channel: iso}}
Pending = dict[str, Any]  # {"id", "queued": iso, "alert": {...}, "channels": {channel: state}}


@dataclass(frozen=True)
class Decision:
    """What to tell about one event: per channel the alert state ("" for nothing), the
    failures of the streak so far and since when."""

    state: str  # the most telling state among `states`, "" when nobody is told
    failures: int = 0
    since: datetime | None = None
    states: Mapping[str, str] = field(default_factory=dict)


def _told_at(entry: Entry, channel: str) -> datetime | None:
    told = entry.get("told") or {}
    moment = told.get(channel) or told.get(EVERY_CHANNEL)
    return parse_utc(moment) if moment else None


def _overall(states: Mapping[str, str]) -> str:
    for state in (FAILED, REMINDER, RECOVERED, SUCCEEDED):
        if state in states.values():
            return state
    return ""


def fail(
    entry: Entry | None,
    pending: Pending | None,
    now: datetime,
    remind_every: timedelta | None,
    channels: Sequence[str],
    held: Collection[str] = (),
) -> tuple[Entry, Decision]:
    """Returns the streak after one more failure and what each of `channels` is to hear.

    A channel hears FAILED when it was never told of this streak, REMINDER once
    `remind_every` has passed since it was last told (never when None), nothing otherwise.
    A channel with an alert still pending for the key hears that alert's state again, with the
    newer content, unless this process is sending that alert now (`held`): then the sender
    has it, and it is not piled on.
    """
    if entry is None:
        entry = {"since": format_utc(now), "failures": 0, "told": {}}
    else:
        entry = {**entry, "told": dict(entry.get("told") or {})}
    entry["failures"] = int(entry["failures"]) + 1
    since = parse_utc(entry["since"])
    waiting = (pending or {}).get("channels") or {}
    states: dict[str, str] = {}
    for channel in channels:
        told = _told_at(entry, channel)
        if channel in waiting and waiting[channel] in {FAILED, REMINDER}:
            states[channel] = "" if channel in held else waiting[channel]
        elif told is None:
            states[channel] = FAILED
        elif remind_every is not None and now - told >= remind_every:
            states[channel] = REMINDER
        else:
            states[channel] = ""
    told_now = {c: s for c, s in states.items() if s}
    return entry, Decision(_overall(told_now), entry["failures"], since, told_now)


def succeed(entry: Entry | None, channels: Sequence[str]) -> Decision:
    """Returns what a success tells: RECOVERED to `channels` after a streak, else SUCCEEDED."""
    if entry is None:
        return Decision(SUCCEEDED, states=dict.fromkeys(channels, SUCCEEDED))
    states = dict.fromkeys(channels, RECOVERED)
    return Decision(RECOVERED, int(entry["failures"]), parse_utc(entry["since"]), states)


def after_delivery(
    entry: Entry | None,
    pending: Pending | None,
    item_id: str,
    channel: str,
    state: str,
    since: datetime | None,
    told_at: datetime | None,
) -> tuple[Entry | None, Pending | None]:
    """Returns the streak and the pending alert of a key once `channel` took alert `item_id`
    (`told_at` set) or was given up on (`told_at` None).

    The channel leaves the pending alert only if that alert is still `item_id` (a newer one
    must still go out); a FAILED or REMINDER taken counts as told for the streak it was about.
    """
    if pending is not None and pending.get("id") == item_id:
        waiting = {c: s for c, s in (pending.get("channels") or {}).items() if c != channel}
        pending = {**pending, "channels": waiting} if waiting else None
    if (
        entry is not None
        and told_at is not None
        and state in {FAILED, REMINDER}
        and since is not None
        and parse_utc(entry["since"]) == since
    ):
        told = dict(entry.get("told") or {})
        told[channel] = format_utc(told_at)
        entry = {**entry, "told": told}
    return entry, pending


def new_pending(alert: Mapping[str, Any], states: Mapping[str, str], now: datetime) -> Pending:
    """Returns a pending alert: its id, when it was queued, the alert and each channel's state."""
    return {
        "id": uuid.uuid4().hex,
        "queued": format_utc(now),
        "alert": dict(alert),
        "channels": {c: s for c, s in states.items() if s},
    }


@dataclass
class State:
    """The whole state file as plain dictionaries, changed in place inside a transaction."""

    entries: dict[str, Entry]
    pending: dict[str, Pending]


class DedupState:
    """The failure streaks and pending alerts on disk, changed under a lock."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self._lock_path = state_dir / f".{STATE_FILE}.lock"
        self._thread_lock = threading.Lock()

    def decide(
        self,
        key: str,
        ok: bool,
        now: datetime,
        remind_every: timedelta | None,
        channels: Sequence[str] = (EVERY_CHANNEL,),
    ) -> Decision:
        """Records one outcome for `key` (nothing is queued); returns what to say about it."""
        with self.transaction() as state:
            if ok:
                decision = succeed(state.entries.pop(key, None), channels)
                state.pending.pop(key, None)
                return decision
            entry, decision = fail(
                state.entries.get(key), state.pending.get(key), now, remind_every, channels
            )
            state.entries[key] = entry
            return decision

    def entries(self) -> dict[str, dict[str, Any]]:
        """Returns the current streaks (for tests and status)."""
        with self.transaction() as state:
            copied: dict[str, dict[str, Any]] = json.loads(json.dumps(state.entries))
            return copied

    def pending(self) -> dict[str, Pending]:
        """Returns the alerts still to be delivered, by key."""
        with self.transaction() as state:
            copied: dict[str, Pending] = json.loads(json.dumps(state.pending))
            return copied

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Yields the state under the lock and writes it back if it changed; raises OSError."""
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                state = self._read()
                before = json.dumps([state.entries, state.pending], sort_keys=True)
                yield state
                after = json.dumps([state.entries, state.pending], sort_keys=True)
                if after != before:
                    document = {
                        "version": VERSION,
                        "entries": state.entries,
                        "pending": state.pending,
                    }
                    data = json.dumps(document, indent=1, sort_keys=True).encode()
                    write_atomically(self.path, data + b"\n", 0o640)

    def _read(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State({}, {})
        except OSError as exc:
            log.warning(
                "alert state unreadable, starting afresh",
                path=str(self.path),
                error=exc.strerror,
            )
            return State({}, {})
        try:
            return parse(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "alert state corrupt, starting afresh (failures in progress alert again)",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc}",
            )
            return State({}, {})


def parse(raw: bytes) -> State:
    """Returns the state of a state file's bytes (format 1 or 2); raises ValueError & co."""
    document = json.loads(raw)
    entries = dict(document["entries"])
    for key, entry in entries.items():  # every field this module reads, checked once
        parse_utc(entry["since"])
        int(entry["failures"])
        told = entry.get("told")
        if told is None or isinstance(told, str):  # format 1: one time for every channel
            told = {EVERY_CHANNEL: told} if told else {}
        for moment in told.values():
            parse_utc(moment)
        entries[key] = {**entry, "told": dict(told)}
    pending = dict(document.get("pending") or {})
    for item in pending.values():
        parse_utc(item["queued"])
        str(item["id"])
        dict(item["alert"])
        for state in dict(item["channels"]).values():
            if state not in {FAILED, REMINDER, RECOVERED, SUCCEEDED}:
                raise ValueError(f"unknown alert state {state!r}")
    return State(entries, pending)
