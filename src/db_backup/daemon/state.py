"""The daemon's state file: when each job last ran and how it ended, kept across restarts.

The file (default ``/var/lib/db-backup/state.json``, systemd ``StateDirectory=``) is a JSON object
mapping job name to ``{"last_run_utc", "last_status", "last_finished_utc"}`` with timestamps in
ISO 8601 UTC with a ``Z`` suffix. It is replaced atomically (temporary file, fsync, rename, fsync of
the directory), so a crash leaves either the old or the new state. A missing file means "no job
has run yet"; an unreadable one is moved aside to ``<name>.corrupt`` and treated as empty, so the
daemon starts instead of crash-looping (the schedule then waits for the next slot).

The reports directory stays the source of truth for the platform; this file only feeds the
scheduler (``last_run_utc`` guards against double runs) and the status line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.fsutil import write_atomically

log = structlog.get_logger(__name__)

Status = Literal["SUCCESS", "FAILED"]
STATUSES: tuple[Status, ...] = ("SUCCESS", "FAILED")
DEFAULT_STATE_FILE = Path("/var/lib/db-backup/state.json")


@dataclass(frozen=True)
class JobState:
    """What the state file remembers about one job."""

    last_run_utc: datetime
    last_status: Status
    last_finished_utc: datetime | None = None

    def to_json(self) -> dict[str, str | None]:
        """Return the JSON object stored for this job."""
        return {
            "last_run_utc": format_utc(self.last_run_utc),
            "last_status": self.last_status,
            "last_finished_utc": (
                None if self.last_finished_utc is None else format_utc(self.last_finished_utc)
            ),
        }

    @classmethod
    def from_json(cls, data: Any) -> JobState:
        """Return the state parsed from its JSON object, raising ValueError if it is malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("expected an object")
        status = data.get("last_status")
        if status not in STATUSES:
            raise ValueError(f"last_status must be SUCCESS or FAILED, got {status!r}")
        last_run = data.get("last_run_utc")
        if not isinstance(last_run, str):
            raise ValueError("last_run_utc must be a timestamp string")
        finished = data.get("last_finished_utc")
        if finished is not None and not isinstance(finished, str):
            raise ValueError("last_finished_utc must be a timestamp string or null")
        return cls(
            last_run_utc=parse_utc(last_run),
            last_status=status,
            last_finished_utc=None if finished is None else parse_utc(finished),
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

    def record(
        self,
        job: str,
        last_run_utc: datetime,
        status: Status,
        finished_utc: datetime | None = None,
    ) -> JobState:
        """Remember a finished run of ``job`` and write the file atomically; return the state.

        Raises OSError if the file cannot be written (the caller decides how loud to be).
        """
        if status not in STATUSES:
            raise ValueError(f"status must be SUCCESS or FAILED, got {status!r}")
        # parse(format()) refuses naive datetimes before anything is touched.
        state = JobState(
            last_run_utc=parse_utc(format_utc(last_run_utc)),
            last_status=status,
            last_finished_utc=None if finished_utc is None else parse_utc(format_utc(finished_utc)),
        )
        with self._lock:
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
