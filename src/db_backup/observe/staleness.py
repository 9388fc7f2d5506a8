"""Staleness: a job whose databases have no SUCCESS within `max_age` is noticed by the daemon.

A job that silently stops running (a disabled timer, a lock that is never released, a full disk
failing every run) writes no new SUCCESS report. The daemon checks, about once a minute and from
the report index (one grouped query, no report is parsed), the newest SUCCESS of every database
each job watches, and when one is older than the job's `max_age` it publishes
`events.Event(kind=STALE, ok=False)` once, says so in its STATUS line, and records it in
`<state>/stale.json`, which the metrics and `db-backup status` read. When a SUCCESS arrives the
condition clears (`ok=True`), once.

Rules:

- The age of a backup is counted from its `startedAt` (the moment its snapshot was taken: what
  a restore gives back), so a long dump never hides staleness.
- `max_age` is per job: a duration (`26h`, `90m`, `2d`, `1d12h`) or seconds; `false` turns the
  check off for that job. The default is twice the longest interval between consecutive runs of
  the schedule (croniter, in the job's zone, over the next eight days): `0 2 * * *` gives 48h,
  and a weekdays-only schedule gives 6 days, so a weekend never alerts.
- The databases a job watches: with an explicit list, those; with `databases: all`, every
  database the job has reported whose newest report is no more than `max_age` older than the
  job's newest report (a dropped database stops being watched once the job has gone on without
  it for `max_age`, and is cleared; a job that stopped entirely keeps all of them). A job that
  has reported nothing is watched as a whole (database "").
- A database that never succeeded counts from when the daemon started watching the job (its
  start, or the reload that added the job), so a fresh install does not alert at once.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from db_backup.util.clock import format_utc, parse_utc
from db_backup.util.units import format_age

if TYPE_CHECKING:
    import sqlite3

    from db_backup.config import Config, JobConfig
    from db_backup.observe.events import Event

STATE_FILE = "stale.json"
CHECK_INTERVAL_SECONDS = 60.0
REREAD_SECONDS = 600.0  # the index is asked again at least this often, changed or not
DEFAULT_HORIZON = timedelta(days=8)  # longer than a week: weekly gaps and weekends are seen
MAX_SLOTS = 6000  # a dense schedule's gaps are known long before the horizon

Key = tuple[str, str]  # job, database ("" for a job that has reported nothing)


@functools.lru_cache(maxsize=256)
def _default_max_age(expr: str, zone: str, day: str) -> timedelta:
    from db_backup.config.schedule import _slots_after  # croniter: only when a default is needed

    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    end = start + DEFAULT_HORIZON
    longest = timedelta(0)
    previous: datetime | None = None
    for count, slot in enumerate(_slots_after(expr, ZoneInfo(zone), start)):
        if previous is not None:
            longest = max(longest, slot - previous)
        previous = slot
        if (slot > end and count >= 1) or count >= MAX_SLOTS:
            break
    return 2 * longest


def default_max_age(schedule: str, zone: ZoneInfo, now: datetime) -> timedelta:
    """Returns twice the longest gap between consecutive runs of `schedule` in the next 8 days."""
    return _default_max_age(schedule, zone.key, now.astimezone(UTC).date().isoformat())


def max_age(job: JobConfig, now: datetime) -> timedelta | None:
    """Returns the job's `max_age` (its own or the schedule's default), None when turned off."""
    if job.max_age is None:
        return default_max_age(job.schedule, job.zone(), now)
    return job.max_age or None


@dataclass(frozen=True)
class Stale:
    """One job and database without a SUCCESS within max_age."""

    job: str
    database: str
    since: datetime  # the newest SUCCESS's start, or when watching began (never succeeded)
    last_success: datetime | None
    max_age: timedelta

    @property
    def label(self) -> str:
        """Returns `job/database` (or the job alone when it has reported nothing)."""
        return f"{self.job}/{self.database}" if self.database else self.job

    def message(self) -> str:
        """Returns the event's message: what is missing, since when and the limit."""
        if self.last_success is None:
            what = f"no successful backup since watching began at {format_utc(self.since)}"
        else:
            what = f"no successful backup since {format_utc(self.last_success)}"
        return f"{self.label}: {what} (max_age {format_age(self.max_age)})"

    def to_json(self) -> dict[str, Any]:
        """Returns the entry as kept in stale.json."""
        return {
            "job": self.job,
            "database": self.database,
            "since": format_utc(self.since),
            "lastSuccess": format_utc(self.last_success) if self.last_success else None,
            "maxAgeSeconds": int(self.max_age.total_seconds()),
        }


@dataclass(frozen=True)
class JobReports:
    """What the index says about one job: per database, the newest report and newest SUCCESS."""

    newest: dict[str, datetime]
    newest_success: dict[str, datetime]


def reports_by_job(conn: sqlite3.Connection) -> dict[str, JobReports]:
    """Returns, per job, the newest report and newest SUCCESS per database (one query)."""
    from db_backup.reports.index import EPOCH, decode, encode
    from db_backup.reports.model import SUCCESS

    found: dict[str, JobReports] = {}
    rows = conn.execute(
        "SELECT job, database, max(started_us), "
        "max(CASE WHEN status = ? THEN started_us END) "
        "FROM reports WHERE problem IS NULL GROUP BY job, database",
        (encode(SUCCESS),),
    )
    for job, database, newest_us, success_us in rows:
        entry = found.setdefault(decode(job), JobReports({}, {}))
        name = decode(database)
        entry.newest[name] = EPOCH + timedelta(microseconds=newest_us)
        if success_us is not None:
            entry.newest_success[name] = EPOCH + timedelta(microseconds=success_us)
    return found


def watched_databases(job: JobConfig, reports: JobReports | None, limit: timedelta) -> list[str]:
    """Returns the databases of `job` whose staleness is watched (see the module's rules)."""
    if not job.discovers_databases:
        return list(job.databases)
    if reports is None or not reports.newest:
        return [""]
    latest = max(reports.newest.values())
    return sorted(db for db, newest in reports.newest.items() if latest - newest <= limit)


def evaluate(
    config: Config,
    by_job: Mapping[str, JobReports],
    now: datetime,
    watching_since: Mapping[str, datetime],
) -> tuple[dict[Key, Stale], set[Key]]:
    """Returns (the stale databases, every watched key) of `config`'s jobs at `now`.

    `watching_since` maps a job to when the daemon began watching it (a database that never
    succeeded counts from then; a job missing from it counts from `now`).
    """
    stale: dict[Key, Stale] = {}
    watched: set[Key] = set()
    for job in config.jobs:
        limit = max_age(job, now)
        if limit is None:
            continue
        reports = by_job.get(job.name)
        for database in watched_databases(job, reports, limit):
            key = (job.name, database)
            watched.add(key)
            last = reports.newest_success.get(database) if reports else None
            since = last if last is not None else watching_since.get(job.name, now)
            if now - since > limit:
                stale[key] = Stale(job.name, database, since, last, limit)
    return stale, watched


# --- what the daemon keeps and others read ---------------------------------------------------


def load_state(state_dir: Path) -> dict[Key, dict[str, Any]]:
    """Returns the stale entries the daemon recorded (empty when none or unreadable)."""
    try:
        document = json.loads((state_dir / STATE_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    entries = document.get("stale", []) if isinstance(document, dict) else []
    found: dict[Key, dict[str, Any]] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("job"), str):
            found[(entry["job"], str(entry.get("database", "")))] = entry
    return found


def still_stale(entry: Mapping[str, Any], newest_success: datetime | None) -> bool:
    """Returns whether a recorded entry still holds given the newest SUCCESS known now.

    A SUCCESS written after the daemon's last check (a manual run) ends it at once for the
    metrics and `status`, before the daemon's next check publishes the clearing.
    """
    if newest_success is None:
        return True
    recorded = entry.get("lastSuccess")
    try:
        return recorded is not None and newest_success <= parse_utc(str(recorded))
    except ValueError:
        return False


def current_stale(state_dir: Path, by_job: Mapping[str, JobReports]) -> dict[Key, dict[str, Any]]:
    """Returns the recorded stale entries that still hold (see `still_stale`)."""
    found = {}
    for key, entry in load_state(state_dir).items():
        reports = by_job.get(key[0])
        newest = reports.newest_success.get(key[1]) if reports else None
        if still_stale(entry, newest):
            found[key] = entry
    return found


def _write_state(state_dir: Path, stale: Iterable[Stale], checked: datetime) -> None:
    from db_backup.util.fsutil import write_atomically

    document = {
        "checkedAt": format_utc(checked),
        "stale": [s.to_json() for s in sorted(stale, key=lambda s: (s.job, s.database))],
    }
    data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    write_atomically(state_dir / STATE_FILE, data, 0o640)


Publish = Callable[["Config", "Event"], None]


class StaleWatch:
    """The daemon's staleness check: publishes transitions, keeps stale.json and STATUS text."""

    def __init__(self, config: Config, now: datetime, publish: Publish | None = None) -> None:
        self.config = config
        self.watching_since: dict[str, datetime] = {job.name: now for job in config.jobs}
        self.stale: dict[Key, Stale] = {}
        self._publish = publish
        self._last_check: float | None = None
        self._recorded = load_state(config.directories.state)  # alerted before a restart
        # The index's answer, kept while the reports directory is unchanged (a report written
        # or removed changes its mtime): a check then costs one stat.
        self._by_job: tuple[tuple[int, int], float, dict[str, JobReports]] | None = None

    def reconfigure(self, config: Config, now: datetime) -> None:
        """Takes a reloaded config; jobs new to it are watched from `now`."""
        self.config = config
        names = {job.name for job in config.jobs}
        self.watching_since = {name: self.watching_since.get(name, now) for name in sorted(names)}
        self._last_check = None  # check at the next tick
        self._by_job = None

    def due(self, monotonic: float) -> bool:
        """Returns whether a check is due (about once a minute, or after `request`)."""
        return self._last_check is None or monotonic - self._last_check >= CHECK_INTERVAL_SECONDS

    def request(self) -> None:
        """Asks for a check at the next tick (a job or drill just finished)."""
        self._last_check = None

    def check(self, now: datetime, monotonic: float) -> list[Event]:
        """Checks every job now; publishes and returns the transitions (raised and cleared)."""
        from db_backup.observe import events
        from db_backup.reports.index import default_path, snapshot

        self._last_check = monotonic
        state = self.config.directories.state
        reports_dir = self.config.directories.reports
        listing = _directory_signature(reports_dir)
        cached = self._by_job
        if cached is None or cached[0] != listing or monotonic - cached[1] > REREAD_SECONDS:
            with snapshot(reports_dir, default_path(state)) as snap:
                cached = (listing, monotonic, reports_by_job(snap.conn))
            self._by_job = cached
        by_job = cached[2]
        current, watched = evaluate(self.config, by_job, now, self.watching_since)
        before = dict(self.stale)
        known = set(before) | set(self._recorded)
        changes: list[Event] = []
        for key, entry in sorted(current.items()):
            if key not in known:
                changes.append(
                    events.Event(
                        kind=events.STALE,
                        job=entry.job,
                        database=entry.database,
                        ok=False,
                        message=entry.message(),
                        details={**entry.to_json(), "ageSeconds": _seconds(now - entry.since)},
                    )
                )
        for key in sorted(known - set(current)):
            if key[0] not in self.watching_since:
                continue  # the job left the config: nothing to clear for anyone
            job, database = key
            label = f"{job}/{database}" if database else job
            message = (
                f"{label}: a successful backup again"
                if key in watched
                else f"{label}: no longer watched (the job's recent runs leave this database out)"
            )
            changes.append(
                events.Event(
                    kind=events.STALE, job=job, database=database, ok=True, message=message
                )
            )
        self.stale = current
        self._recorded = {}
        if changes or set(before) != set(current) or not (state / STATE_FILE).exists():
            try:  # first (the metrics read it), but an unwritable one never swallows an alert
                _write_state(state, current.values(), now)
            except OSError as exc:
                _log_unwritten(state / STATE_FILE, exc)
        publish = self._publish or events.publish
        for event in changes:
            _log(event)
            publish(self.config, event)
        return changes

    def status_parts(self, now: datetime, limit: int = 3) -> list[str]:
        """Returns `STALE job/db 2d` for the stalest few (and how many more) for STATUS."""
        ordered = sorted(self.stale.values(), key=lambda s: (s.since, s.job, s.database))
        parts = [f"STALE {s.label} {format_age(now - s.since)}" for s in ordered[:limit]]
        if len(ordered) > limit:
            parts.append(f"+{len(ordered) - limit} more stale")
        return parts


def _directory_signature(directory: Path) -> tuple[int, int]:
    try:
        st = directory.stat()
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def _seconds(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def _log(event: Event) -> None:
    import structlog

    log = structlog.get_logger("db_backup.observe.staleness")
    if event.ok:
        log.info(
            "staleness cleared",
            job=event.job,
            database=event.database or None,
            message=event.message,
        )
    else:
        log.error(
            "job is stale", job=event.job, database=event.database or None, message=event.message
        )


def _log_unwritten(path: Path, exc: OSError) -> None:
    import structlog

    from db_backup.util.fsutil import describe_os_error

    structlog.get_logger("db_backup.observe.staleness").error(
        "stale state not written", error=describe_os_error(exc, path)
    )
