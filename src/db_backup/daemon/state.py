"""The daemon's state file: when each job last ran, how it ended, and what runs it still owes.

The file (default ``/var/lib/db-backup/state.json``, systemd ``StateDirectory=``) is a JSON object
mapping job name to ``{"last_run_utc", "last_status", "last_finished_utc"}`` with timestamps in
ISO 8601 UTC with a ``Z`` suffix, plus two keys present only while they apply:

- ``running`` ``{"started_utc", "attempt", "trigger"}``: a run has started and is not recorded
  as finished yet. Found at start-up, it means the daemon stopped or died during that run.
- ``pending`` ``{"due_utc", "attempt", "trigger"}``: a run owed before the next slot, a
  ``retry`` of a FAILED run or the ``rerun`` of a run that a stop interrupted, so that neither
  is lost when the daemon restarts (an upgrade, a reboot).

It is replaced atomically (temporary file, fsync, rename, fsync of the directory), so a crash
leaves either the old or the new state. A missing file means "no job has run yet"; an unreadable
one is moved aside to ``<name>.corrupt`` and treated as empty, so the daemon starts instead of
crash-looping (the schedule then waits for the next slot).

The reports directory stays the source of truth for the platform; this file only feeds the
scheduler (``last_run_utc`` guards against double runs, ``running``/``pending`` carry owed runs
across restarts) and the status line. The decisions about owed runs are the pure functions at
the end (``retry_after``, ``rerun_after_stop``, ``settle_interrupted``, ``why_dropped``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog

from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.fsutil import write_atomically

log = structlog.get_logger(__name__)

Status = Literal["SUCCESS", "FAILED"]
STATUSES: tuple[Status, ...] = ("SUCCESS", "FAILED")
DEFAULT_STATE_FILE = Path("/var/lib/db-backup/state.json")
RETRY = "retry"  # trigger of a retry after a FAILED run (job.retry)
RERUN = "rerun"  # trigger of the re-run of a run that a stop of the daemon interrupted
OWED_TRIGGERS = (RETRY, RERUN)


def _time(data: Mapping[str, Any], key: str) -> datetime:
    """Returns the UTC timestamp at `key` of `data`, raising ValueError if it is not one."""
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a timestamp string")
    return parse_utc(value)


def _attempt(data: Mapping[str, Any]) -> int:
    value = data.get("attempt")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError("attempt must be a positive integer")
    return value


@dataclass(frozen=True)
class RunMark:
    """A run that started and is not recorded as finished: the daemon is in it, or died in it."""

    started_utc: datetime
    attempt: int
    trigger: str  # schedule, retry or rerun

    def to_json(self) -> dict[str, Any]:
        """Returns the JSON object stored under `running`."""
        return {
            "started_utc": format_utc(self.started_utc),
            "attempt": self.attempt,
            "trigger": self.trigger,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunMark:
        """Returns the mark parsed from its JSON object, raising ValueError if it is malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("trigger"), str):
            raise ValueError("running must be an object with a trigger")
        return cls(_time(data, "started_utc"), _attempt(data), data["trigger"])


@dataclass(frozen=True)
class Pending:
    """A run owed before the job's next slot: a retry, or the re-run of an interrupted run."""

    due_utc: datetime
    attempt: int
    trigger: str  # RETRY or RERUN

    def to_json(self) -> dict[str, Any]:
        """Returns the JSON object stored under `pending`."""
        return {
            "due_utc": format_utc(self.due_utc),
            "attempt": self.attempt,
            "trigger": self.trigger,
        }

    @classmethod
    def from_json(cls, data: Any) -> Pending:
        """Returns the owed run parsed from its JSON object, raising ValueError if malformed."""
        if not isinstance(data, Mapping) or data.get("trigger") not in OWED_TRIGGERS:
            raise ValueError(f"pending must be an object with a trigger in {OWED_TRIGGERS}")
        return cls(_time(data, "due_utc"), _attempt(data), data["trigger"])


@dataclass(frozen=True)
class JobState:
    """What the state file remembers about one job (None: not known, or nothing owed)."""

    last_run_utc: datetime | None = None
    last_status: Status | None = None
    last_finished_utc: datetime | None = None
    running: RunMark | None = None
    pending: Pending | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object stored for this job (`running`/`pending` only when set)."""
        document: dict[str, Any] = {}
        if self.last_run_utc is not None:
            document = {
                "last_run_utc": format_utc(self.last_run_utc),
                "last_status": self.last_status,
                "last_finished_utc": (
                    None if self.last_finished_utc is None else format_utc(self.last_finished_utc)
                ),
            }
        if self.running is not None:
            document["running"] = self.running.to_json()
        if self.pending is not None:
            document["pending"] = self.pending.to_json()
        return document

    @classmethod
    def from_json(cls, data: Any) -> JobState:
        """Return the state parsed from its JSON object, raising ValueError if it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("expected an object")
        running = None if data.get("running") is None else RunMark.from_json(data["running"])
        pending = None if data.get("pending") is None else Pending.from_json(data["pending"])
        if "last_run_utc" not in data and "last_status" not in data:
            if running is None and pending is None:
                raise ValueError("nothing recorded")
            return cls(running=running, pending=pending)  # a first run that never finished
        status = data.get("last_status")
        if status not in STATUSES:
            raise ValueError(f"last_status must be SUCCESS or FAILED, got {status!r}")
        finished = data.get("last_finished_utc")
        if finished is not None and not isinstance(finished, str):
            raise ValueError("last_finished_utc must be a timestamp string or null")
        return cls(
            last_run_utc=_time(data, "last_run_utc"),
            last_status=status,
            last_finished_utc=None if finished is None else parse_utc(finished),
            running=running,
            pending=pending,
        )


class StateStore:
    """Load and atomically persist per-job run state in one JSON file."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_FILE) -> None:
        """Use the state file at ``path``; nothing is read until ``load()``."""
        self.path = Path(path)
        self._jobs: dict[str, JobState] = {}
        self._lock = threading.Lock()

    @property
    def corrupt_path(self) -> Path:
        """Return where an unreadable state file is moved aside to."""
        return self.path.with_name(self.path.name + ".corrupt")

    def load(self) -> dict[str, JobState]:
        """Read the file and return job name -> state; missing or corrupt files give ``{}``."""
        with self._lock:
            self._jobs = self._read()
            return dict(self._jobs)

    def _read(self) -> dict[str, JobState]:
        """Return the parsed file contents, quarantining the file if it cannot be parsed."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("state file unreadable", path=str(self.path), error=str(exc))
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            self._quarantine(raw, str(exc))
            return {}
        jobs: dict[str, JobState] = {}
        for name, entry in data.items():
            try:
                jobs[str(name)] = JobState.from_json(entry)
            except ValueError as exc:
                log.warning(
                    "state entry ignored", path=str(self.path), job=str(name), error=str(exc)
                )
        return jobs

    def _quarantine(self, raw: bytes, reason: str) -> None:
        """Keep a copy of a corrupt state file next to it and log where it went."""
        try:
            self._write_atomically(self.corrupt_path, raw)
        except OSError as exc:
            log.error("state file corrupt", path=str(self.path), error=reason, copy_error=str(exc))
            return
        log.warning(
            "state file corrupt, starting with empty state",
            path=str(self.path),
            copy=str(self.corrupt_path),
            error=reason,
        )

    def get(self, job: str) -> JobState | None:
        """Return the remembered state of ``job`` (as of the last load or record), or None."""
        with self._lock:
            return self._jobs.get(job)

    def last_run_utc(self, job: str) -> datetime | None:
        """Return when ``job`` last started (UTC), or None if it never ran."""
        state = self.get(job)
        return None if state is None else state.last_run_utc

    def all(self) -> dict[str, JobState]:
        """Return job name -> state as of the last load or change."""
        with self._lock:
            return dict(self._jobs)

    def record(
        self,
        job: str,
        last_run_utc: datetime,
        status: Status,
        finished_utc: datetime | None = None,
        pending: Pending | None = None,
    ) -> JobState:
        """Remember a finished run of ``job`` and the run it owes now, if any; return the state.

        The job's ``running`` mark is cleared. Raises OSError if the file cannot be written (the
        caller decides how loud to be); memory is then unchanged too.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be SUCCESS or FAILED, got {status!r}")
        # _utc (parse of format) refuses naive datetimes before anything is touched.
        state = JobState(
            last_run_utc=_utc(last_run_utc),
            last_status=status,
            last_finished_utc=None if finished_utc is None else _utc(finished_utc),
            pending=None if pending is None else replace(pending, due_utc=_utc(pending.due_utc)),
        )
        return self._change(job, lambda _old: state)

    def mark_running(self, job: str, started_utc: datetime, attempt: int, trigger: str) -> JobState:
        """Remember that a run of ``job`` started, before it does anything; return the state.

        What the job owed is cleared (this run is it). Raises OSError like ``record``.
        """
        mark = RunMark(_utc(started_utc), attempt, trigger)
        return self._change(job, lambda old: replace(old, running=mark, pending=None))

    def clear_running(self, job: str) -> None:
        """Forget the ``running`` mark of a run that did not happen (its lock was held elsewhere)."""
        if (current := self.get(job)) is not None and current.running is not None:
            self._change(job, lambda old: replace(old, running=None))

    def set_pending(self, job: str, pending: Pending | None) -> None:
        """Remember (or, with None, forget) the run ``job`` owes; raises OSError like ``record``."""
        self._change(job, lambda old: replace(old, pending=pending))

    def settle_interrupted(self, now: datetime) -> dict[str, JobState]:
        """Settle every run the file still marks as running (``settle_interrupted``), save once.

        For the daemon's start: returns the settled jobs' new states. Raises OSError like
        ``record`` (memory then keeps the marks, so the next start settles them).
        """
        with self._lock:
            settled = {
                name: settle_interrupted(state, now)
                for name, state in self._jobs.items()
                if state.running is not None
            }
            if settled:
                jobs = {**self._jobs, **settled}
                self._save(jobs)
                self._jobs = jobs
        return settled

    def _change(self, job: str, change: Callable[[JobState], JobState]) -> JobState:
        """Apply ``change`` to the job's state (an empty one if none), save, and return it."""
        with self._lock:
            state = change(self._jobs.get(job, JobState()))
            jobs = dict(self._jobs)
            jobs[job] = state
            self._save(jobs)
            self._jobs = jobs
        return state

    def _save(self, jobs: Mapping[str, JobState]) -> None:
        """Write all job states to the file atomically."""
        document = {name: jobs[name].to_json() for name in sorted(jobs)}
        payload = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
        self._write_atomically(self.path, payload)

    @staticmethod
    def _write_atomically(target: Path, payload: bytes) -> None:
        """Replace ``target`` with ``payload`` atomically, mode 0600 (see ``write_atomically``)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, payload, 0o600)


def _utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC as the file stores it; ValueError for a naive datetime."""
    return parse_utc(format_utc(moment))


# --- decisions about owed runs (pure) ---------------------------------------------------------


def retry_after(
    attempt: int, attempts: int, delay: timedelta, now: datetime, next_slot: datetime
) -> tuple[Pending | None, str]:
    """Return the retry owed after FAILED attempt ``attempt``, or None and why there is none.

    ``attempts`` extra attempts are allowed (``job.retry.attempts``). A retry that would be due
    at or after the job's next slot is dropped: the scheduled run comes first.
    """
    if attempt > attempts:
        return None, "no attempt left"
    due = now + delay
    if due >= next_slot:
        return None, "the next scheduled run comes first"
    return Pending(due, attempt + 1, RETRY), ""


def rerun_after_stop(mark: RunMark, stopped_utc: datetime) -> Pending | None:
    """Return the re-run owed for a run a stop cut short: the same attempt, due at ``stopped_utc``.

    None when the run was itself a re-run: an interrupted run is run again once, so a run that
    every start ends up killing (a watchdog stall, a crash) cannot loop.
    """
    if mark.trigger == RERUN:
        return None
    return Pending(stopped_utc, mark.attempt, RERUN)


def settle_interrupted(state: JobState, now: datetime) -> JobState:
    """Return ``state`` with the run it still marks as running settled (unchanged without one).

    Found at start-up, such a mark is a run the daemon never recorded as finished: it died in it
    (a crash, SIGKILL, the watchdog, a power cut). The run counts as FAILED, started at its mark,
    so the schedule and catch-up count from it and never run it a second time, and its re-run is
    owed (``rerun_after_stop``) from ``now``.
    """
    mark = state.running
    if mark is None:
        return state
    return JobState(mark.started_utc, "FAILED", pending=rerun_after_stop(mark, now))


def why_dropped(pending: Pending, now: datetime, next_slot: datetime, window: timedelta) -> str:
    """Return why a run owed from before the daemon's start is not run ("": it is run).

    The job's next slot comes first when it is due no later than the owed run (a catch-up run
    due now is that run). A run owed for longer than the catch-up window is dropped, as a missed
    slot that old would be.
    """
    if next_slot <= max(now, pending.due_utc):
        return "the next scheduled run comes first"
    if now - pending.due_utc > window:
        return f"owed since {format_utc(pending.due_utc)}, longer ago than the catch-up window"
    return ""
