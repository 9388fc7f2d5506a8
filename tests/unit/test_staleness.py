"""Staleness: durations, the default max_age from the schedule, and the real daemon loop on a
clock the test controls, with real report files and the real event seam.

The daemon's job runner is replaced by one that writes a real report (SUCCESS or FAILED, as the
test decides by the simulated time) into the reports directory, so the staleness check reads
what it reads in production: the report index over real JSON files. Events reach a consumer
registered in `events.CONSUMERS`, as the notifiers and the metrics do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from db_backup.backup.run import RunResult
from db_backup.config import Config, JobConfig, loads, parse_duration
from db_backup.daemon.loop import Daemon
from db_backup.daemon.sd_notify import SdNotifier
from db_backup.observe import events, staleness
from db_backup.observe.staleness import default_max_age
from db_backup.reports.model import FAILED, SUCCESS, Report, stem, write_report
from db_backup.util.names import host_label
from tests.unit.test_schedule import SimulatedClock, utc

UTC_ZONE = ZoneInfo("UTC")
SHANGHAI = ZoneInfo("Asia/Shanghai")

# --- durations and defaults -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("26h", 26 * 3600),
        ("90m", 5400),
        ("2d", 172800),
        ("1d12h", 129600),
        ("1w", 604800),
        (600, 600),
    ],
)
def test_durations_are_read_in_their_units(given: object, seconds: int) -> None:
    assert parse_duration(given) == timedelta(seconds=seconds)


def test_false_turns_the_check_off_and_nonsense_is_refused() -> None:
    assert parse_duration(False) is None
    for bad in ("26", "h", "2 days", -5, 0, True, "0m"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("schedule", "zone", "expected"),
    [
        ("0 2 * * *", SHANGHAI, timedelta(days=2)),
        ("0 * * * *", UTC_ZONE, timedelta(hours=2)),
        ("*/15 * * * *", UTC_ZONE, timedelta(minutes=30)),
        # Friday 02:00 to Monday 02:00 is the longest gap: a weekend must not alert.
        ("0 2 * * 1-5", UTC_ZONE, timedelta(days=6)),
        ("0 9-17 * * 1-5", UTC_ZONE, timedelta(hours=2 * 64)),  # Fri 17:00 to Mon 09:00
        ("0 0 1 1 *", UTC_ZONE, timedelta(days=2 * 365)),
        ("0 3 * * 0", SHANGHAI, timedelta(days=14)),
    ],
)
def test_default_max_age_is_twice_the_longest_gap_of_the_schedule(
    schedule: str, zone: ZoneInfo, expected: timedelta
) -> None:
    assert default_max_age(schedule, zone, utc(2026, 3, 4, 10)) == expected


def test_default_max_age_counts_real_hours_across_a_dst_change() -> None:
    # Berlin springs forward on 2026-03-29: 02:30 local does not exist that day, and the daily
    # run comes at 03:00 CEST, 23.5 real hours after the previous one; the longest gap stays 24h.
    berlin = ZoneInfo("Europe/Berlin")
    assert default_max_age("30 2 * * *", berlin, utc(2026, 3, 27)) == timedelta(hours=48)


# --- the daemon on a simulated clock -------------------------------------------------------------

seen: list[events.Event] = []


class Recorder:
    """A consumer that keeps every event (registered through events.CONSUMERS)."""

    name = "test-recorder"

    def handle(self, event: events.Event) -> None:
        seen.append(event)

    def close(self, timeout: float) -> None:
        pass


def recording_consumer(_config: Config) -> Recorder:
    return Recorder()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[events.Event]]:
    """The events published through the real seam during the test."""
    seen.clear()
    monkeypatch.setattr(events, "CONSUMERS", (f"{__name__}:recording_consumer",))
    yield seen
    events.shutdown(timeout=1)


class StatusLines(SdNotifier):
    """Keeps every STATUS text with the simulated time it was sent."""

    def __init__(self, clock: SimulatedClock) -> None:
        super().__init__({})
        self.clock = clock
        self.lines: list[tuple[datetime, str]] = []

    def status(self, text: str) -> bool:
        self.lines.append((self.clock.now(), text))
        return True

    def ready(self, status: str | None = None) -> bool:
        if status:
            self.lines.append((self.clock.now(), status))
        return True


class ReportWriter:
    """Stands in for run_job: writes a real report per database, FAILED until `fixed_at`."""

    def __init__(self, clock: SimulatedClock, reports: Path, fixed_at: datetime | None) -> None:
        self.clock = clock
        self.reports = reports
        self.fixed_at = fixed_at

    def __call__(self, config: Config, job: JobConfig, **_: Any) -> RunResult:
        now = self.clock.now()
        ok = self.fixed_at is not None and now >= self.fixed_at
        documents = []
        for database in job.databases:
            write_report_at(self.reports, job.name, database, now, SUCCESS if ok else FAILED)
            documents.append({"status": SUCCESS if ok else FAILED})
        return RunResult(job.name, reports=documents)


def write_report_at(reports: Path, job: str, database: str, started: datetime, status: str) -> Path:
    host = host_label()
    report = Report(
        job=job,
        database=database,
        host="localhost",
        port=5432,
        mode="local",
        tool="pg_dump",
        stem=stem(database, started, host),
        started=started,
        finished=started + timedelta(minutes=3),
        status=status,
        error_message="" if status == SUCCESS else "pg_dump: connection refused",
    )
    return write_report(reports, report)


def make_config(root: Path, job: dict[str, Any]) -> Config:
    directories = {name: root / name for name in ("data", "reports", "state")}
    for directory in directories.values():
        directory.mkdir(parents=True, exist_ok=True)
    document = {
        "run_as": None,
        "directories": {name: str(path) for name, path in directories.items()},
        "storage": {"mode": "local"},
        "daemon": {"catch_up_window_hours": 0},
        "jobs": [{"timezone": "UTC", **job}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return loads(path.read_text(encoding="utf-8"), source=str(path))


def run_daemon(
    config: Config, start: datetime, end: datetime, fixed_at: datetime | None
) -> tuple[Daemon, StatusLines]:
    clock = SimulatedClock(start, end)
    notifier = StatusLines(clock)
    runner = ReportWriter(clock, config.directories.reports, fixed_at)
    daemon = Daemon(config.source, config, notifier, clock=clock, runner=runner)
    clock.daemon = daemon
    daemon.start()
    assert daemon.run() == 0
    return daemon, notifier


def stale_events(recorded: list[events.Event]) -> list[events.Event]:
    return [e for e in recorded if e.kind == events.STALE]


def test_a_job_that_keeps_failing_goes_stale_once_and_clears_once(
    tmp_path: Path, recorded: list[events.Event]
) -> None:
    config = make_config(
        tmp_path, {"name": "nightly", "schedule": "0 2 * * *", "databases": ["shop"]}
    )
    last_good = utc(2026, 5, 1, 2)
    write_report_at(config.directories.reports, "nightly", "shop", last_good, SUCCESS)
    # Every nightly run fails from 05-02 on; the 05-06 run succeeds again.
    daemon, notifier = run_daemon(
        config, utc(2026, 5, 1, 12), utc(2026, 5, 6, 12), fixed_at=utc(2026, 5, 6)
    )
    raised, cleared = stale_events(recorded)
    assert (raised.ok, raised.job, raised.database) == (False, "nightly", "shop")
    assert raised.message == (
        "nightly/shop: no successful backup since 2026-05-01T02:00:00Z (max_age 2d)"
    )
    assert raised.details["maxAgeSeconds"] == 48 * 3600
    (raised_at,) = [t for t, line in notifier.lines if "STALE nightly/shop 2d" in line][:1]
    # Raised within about a minute of max_age passing, not at the next run.
    assert last_good + timedelta(hours=48) < raised_at <= last_good + timedelta(hours=48, minutes=2)
    assert (cleared.ok, cleared.job, cleared.database) == (True, "nightly", "shop")
    assert cleared.message == "nightly/shop: a successful backup again"
    stale_lines = [t for t, line in notifier.lines if "STALE" in line]
    assert max(stale_lines) < utc(2026, 5, 6, 2, 5)  # cleared right after the good run
    assert daemon.stale.stale == {}
    state = json.loads((config.directories.state / staleness.STATE_FILE).read_text())
    assert state["stale"] == []
    # Failures alone (every night) published nothing else.
    assert [e.kind for e in recorded if e.kind != events.STALE] == []


def test_status_line_says_stale_with_its_age(tmp_path: Path, recorded: list[events.Event]) -> None:
    config = make_config(
        tmp_path,
        {"name": "nightly", "schedule": "0 2 * * *", "databases": ["app"], "max_age": "26h"},
    )
    write_report_at(config.directories.reports, "nightly", "app", utc(2026, 5, 1, 2), SUCCESS)
    daemon, notifier = run_daemon(config, utc(2026, 5, 1, 12), utc(2026, 5, 3, 3), fixed_at=None)
    assert daemon.status_text(utc(2026, 5, 3, 3)).startswith("1 job(s); STALE nightly/app 2d;")
    assert [e.ok for e in stale_events(recorded)] == [False]
    entry = json.loads((config.directories.state / staleness.STATE_FILE).read_text())["stale"]
    assert entry == [
        {
            "job": "nightly",
            "database": "app",
            "since": "2026-05-01T02:00:00Z",
            "lastSuccess": "2026-05-01T02:00:00Z",
            "maxAgeSeconds": 26 * 3600,
        }
    ]
    assert any(line.startswith("1 job(s); STALE nightly/app 26h") for _, line in notifier.lines)


def test_a_fresh_install_counts_from_the_daemon_start_not_at_once(
    tmp_path: Path, recorded: list[events.Event]
) -> None:
    # No report at all, a yearly schedule far away and max_age 1 hour: stale one hour after the
    # daemon started watching, not at its start.
    config = make_config(
        tmp_path,
        {"name": "yearly", "schedule": "0 0 1 1 *", "databases": "all", "max_age": "1h"},
    )
    start = utc(2026, 6, 1, 8)
    run_daemon(config, start, start + timedelta(minutes=50), fixed_at=None)
    assert stale_events(recorded) == []
    run_daemon(config, start, start + timedelta(minutes=65), fixed_at=None)
    (raised,) = stale_events(recorded)
    assert (raised.job, raised.database, raised.ok) == ("yearly", "", False)
    assert "no successful backup since watching began at 2026-06-01T08:00:00Z" in raised.message


def test_a_restarted_daemon_does_not_alert_again_for_what_it_already_reported(
    tmp_path: Path, recorded: list[events.Event]
) -> None:
    config = make_config(
        tmp_path,
        {"name": "nightly", "schedule": "0 2 * * *", "databases": ["shop"], "max_age": "1d"},
    )
    write_report_at(config.directories.reports, "nightly", "shop", utc(2026, 5, 1, 2), SUCCESS)
    run_daemon(config, utc(2026, 5, 2, 3), utc(2026, 5, 2, 4), fixed_at=None)
    assert [e.ok for e in stale_events(recorded)] == [False]
    run_daemon(config, utc(2026, 5, 2, 5), utc(2026, 5, 2, 6), fixed_at=None)
    assert [e.ok for e in stale_events(recorded)] == [False]  # still one: known from stale.json


def test_max_age_false_turns_the_check_off(tmp_path: Path, recorded: list[events.Event]) -> None:
    config = make_config(
        tmp_path,
        {"name": "nightly", "schedule": "0 2 * * *", "databases": ["shop"], "max_age": False},
    )
    write_report_at(config.directories.reports, "nightly", "shop", utc(2026, 5, 1, 2), FAILED)
    run_daemon(config, utc(2026, 5, 1, 3), utc(2026, 5, 9), fixed_at=None)
    assert stale_events(recorded) == []


def test_a_database_the_job_stopped_dumping_is_cleared_not_stale_forever(
    tmp_path: Path, recorded: list[events.Event]
) -> None:
    # databases: all; "old" was dropped after 05-01 and the job goes on with "shop" only.
    config = make_config(
        tmp_path, {"name": "nightly", "schedule": "0 2 * * *", "databases": "all", "max_age": "1d"}
    )
    reports = config.directories.reports
    write_report_at(reports, "nightly", "old", utc(2026, 5, 1, 2), SUCCESS)
    write_report_at(reports, "nightly", "shop", utc(2026, 5, 1, 2), SUCCESS)
    daemon = Daemon(
        config.source,
        config,
        SdNotifier({}),
        clock=SimulatedClock(utc(2026, 5, 2, 3), utc(2026, 5, 9)),
    )
    daemon.stale.check(utc(2026, 5, 2, 3), 0.0)
    assert sorted((e.database, e.ok) for e in stale_events(recorded)) == [
        ("old", False),
        ("shop", False),
    ]
    for day in (3, 4):
        write_report_at(reports, "nightly", "shop", utc(2026, 5, day, 2), SUCCESS)
    daemon.stale.check(utc(2026, 5, 4, 3), 100.0)
    assert [(e.database, e.ok, e.message) for e in stale_events(recorded)[2:]] == [
        (
            "old",
            True,
            "nightly/old: no longer watched (the job's recent runs leave this database out)",
        ),
        ("shop", True, "nightly/shop: a successful backup again"),
    ]


def test_still_stale_ends_with_a_newer_success_than_the_daemon_saw() -> None:
    entry = {"lastSuccess": "2026-05-01T02:00:00Z"}
    assert staleness.still_stale(entry, None)
    assert staleness.still_stale(entry, datetime(2026, 5, 1, 2, tzinfo=UTC))
    assert not staleness.still_stale(entry, datetime(2026, 5, 3, 2, tzinfo=UTC))
    assert not staleness.still_stale({"lastSuccess": None}, datetime(2026, 5, 3, tzinfo=UTC))


def test_an_unwritable_stale_state_never_swallows_the_alert(
    tmp_path: Path, recorded: list[events.Event]
) -> None:
    config = make_config(
        tmp_path, {"name": "nightly", "schedule": "0 2 * * *", "databases": ["shop"]}
    )
    (config.directories.state / staleness.STATE_FILE).mkdir()  # cannot be replaced by a file
    write_report_at(config.directories.reports, "nightly", "shop", utc(2026, 5, 1, 2), SUCCESS)
    watch = staleness.StaleWatch(config, utc(2026, 5, 1, 3))
    assert len(watch.check(utc(2026, 5, 9), 0.0)) == 1
    assert [(e.kind, e.ok) for e in recorded] == [(events.STALE, False)]
    assert watch.status_parts(utc(2026, 5, 9)) == ["STALE nightly/shop 7d"]
