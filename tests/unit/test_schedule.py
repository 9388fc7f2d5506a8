"""Schedule math and the real daemon loop: DST changeovers, catch-up and clock jumps.

The pure functions are tested directly. The DST, catch-up and clock-jump behaviour is tested by
driving the real `Daemon.run()` loop with a simulated clock: time advances only when the loop
sleeps, so days of schedule pass in milliseconds. The job itself is not run (that needs
PostgreSQL; tests/integration/test_daemon.py runs real dumps from the daemon): a recorder takes
its place and notes when the loop started it.
"""

from __future__ import annotations

import itertools
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from croniter import croniter

from db_backup.backup.run import RunResult
from db_backup.config import Config, JobConfig, loads
from db_backup.config.schedule import (
    due_at_start,
    missed_run,
    next_run_after,
    next_runs,
    sleep_seconds_until,
    validate_cron,
    validate_timezone,
)
from db_backup.daemon import loop as daemon_module
from db_backup.daemon.loop import Clock, Daemon
from db_backup.daemon.sd_notify import SdNotifier
from db_backup.daemon.state import StateStore
from db_backup.reports.model import SUCCESS

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
SHANGHAI = ZoneInfo("Asia/Shanghai")

WAKE_LATENCY = timedelta(milliseconds=250)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """Return an aware UTC datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


class SimulatedClock(Clock):
    """Wall and monotonic time that move only while the daemon loop sleeps.

    Every sleep oversleeps by `WAKE_LATENCY`, as a loaded machine does. `jumps` are wall-clock
    steps (NTP, an operator): once the wall clock reaches `at` it is set to `to`. When the wall
    clock reaches `end` (after the last jump) the clock delivers SIGTERM to the loop through the
    daemon's own handler, so `run()` returns through its real shutdown.
    """

    def __init__(
        self, start: datetime, end: datetime, jumps: Sequence[tuple[datetime, datetime]] = ()
    ) -> None:
        self.wall = start
        self.mono = 1000.0
        self.end = end
        self.jumps = list(jumps)
        self.daemon: Daemon | None = None

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def wait(self, wake: threading.Event, seconds: float) -> None:
        assert self.daemon is not None
        # A started job finishes within this sleep and wakes the loop, as a real one would.
        for running in list(self.daemon.running.values()):
            assert running.thread is not None
            running.thread.join(timeout=30)
        slept = timedelta(0) if wake.is_set() else timedelta(seconds=seconds)
        self.wall += slept + WAKE_LATENCY
        self.mono += (slept + WAKE_LATENCY).total_seconds()
        if self.jumps and self.wall >= self.jumps[0][0]:
            self.wall = self.jumps.pop(0)[1]
        if not self.jumps and self.wall >= self.end:
            self.daemon._on_stop(signal.SIGTERM, None)


class JobRecorder:
    """Stands in for `run_job`: records the simulated time each run started and succeeds."""

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.runs: list[datetime] = []
        self.triggers: list[str] = []

    def __call__(self, config: Config, job: JobConfig, **kwargs: Any) -> RunResult:
        self.runs.append(self.clock.now())
        self.triggers.append(kwargs["trigger"])
        return RunResult(job.name, reports=[{"status": SUCCESS}])


class Simulation:
    """The real `Daemon` for one job `nightly`, on a simulated clock, with its own directories."""

    def __init__(
        self,
        root: Path,
        expr: str,
        tz: ZoneInfo,
        start: datetime,
        end: datetime,
        *,
        last_run: datetime | None = None,
        jumps: Sequence[tuple[datetime, datetime]] = (),
    ) -> None:
        self.tz = tz
        directories = {name: root / name for name in ("data", "reports", "state")}
        for directory in directories.values():
            directory.mkdir(parents=True)
        document = {
            "directories": {name: str(directory) for name, directory in directories.items()},
            "storage": {"mode": "local"},
            "daemon": {"catch_up_window_hours": 6},
            "jobs": [
                {"name": "nightly", "schedule": expr, "timezone": tz.key, "databases": "shop"}
            ],
        }
        path = root / "config.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        config = loads(path.read_text(encoding="utf-8"), source=str(path))
        if last_run is not None:
            StateStore(directories["state"] / "state.json").record(
                "nightly", last_run, "SUCCESS", last_run
            )
        self.clock = SimulatedClock(start, end, jumps)
        self.recorder = JobRecorder(self.clock)
        self.daemon = Daemon(
            str(path), config, SdNotifier({}), clock=self.clock, runner=self.recorder
        )
        self.clock.daemon = self.daemon
        self.daemon.start()

    @property
    def runs(self) -> list[datetime]:
        """Returns the instants (UTC) at which the loop started the job."""
        return self.recorder.runs

    def run(self) -> None:
        """Runs the real loop until the simulated clock reaches the end."""
        assert self.daemon.run() == 0
        assert self.daemon.running == {}

    def local_days(self) -> Counter[date]:
        """Returns how many runs happened on each local calendar date."""
        return Counter(run.astimezone(self.tz).date() for run in self.runs)


Simulate = Callable[..., Simulation]


@pytest.fixture
def simulate(tmp_path: Path) -> Iterator[Simulate]:
    """Returns a function that builds a `Simulation` in a fresh directory and runs it.

    The daemon fsyncs its state file after every run; on a tmpfs that costs nothing, which keeps
    the long simulations fast.
    """
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as directory:
        counter = itertools.count()

        def _simulate(
            expr: str, tz: ZoneInfo, start: datetime, end: datetime, **kwargs: Any
        ) -> Simulation:
            root = Path(directory) / str(next(counter))
            simulation = Simulation(root, expr, tz, start, end, **kwargs)
            simulation.run()
            return simulation

        yield _simulate


def assert_distinct_instants(runs: list[datetime]) -> None:
    """Assert that no two runs happened for the same UTC instant or minute slot."""
    minutes = [run.replace(second=0, microsecond=0) for run in runs]
    assert len(set(minutes)) == len(minutes), runs


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr", ["30 1 * * *", "*/15 * * * *", "0 3 * * mon-fri", "0 0 29 2 *", "@daily", "@hourly"]
)
def test_valid_cron_expressions_have_no_error(expr: str) -> None:
    assert validate_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("61 * * * *", "out of range"),
        ("0 25 * * *", "out of range"),
        ("0 0 31 2 *", "can never occur"),
        ("*/0 * * * *", "step"),
        ("0 0 * * * *", "has 6 fields; expected 5"),
        ("* * * *", "has 4 fields; expected 5"),
        ("@reboot", "unknown cron alias '@reboot'"),
        ("", "empty cron expression"),
        ("every day", "has 2 fields"),
        ("a b c d e", "not a valid cron expression: 'a b c d e'"),
    ],
)
def test_invalid_cron_expressions_are_explained(expr: str, expected: str) -> None:
    error = validate_cron(expr)
    assert error is not None
    assert expected in error


@pytest.mark.parametrize(
    ("expr", "field", "extension"),
    [
        ("0 2 L * *", "day-of-month field 'L'", "'L' (last day"),
        ("0 2 15W * *", "day-of-month field '15W'", "'W' (nearest weekday)"),
        ("0 2 LW * *", "day-of-month field 'LW'", "'LW' (last weekday of the month)"),
        ("0 2 ? * 1", "day-of-month field '?'", "'?' (no specific value"),
        ("0 2 * * 5#2", "day-of-week field '5#2'", "'#' (nth weekday of the month)"),
        ("0 2 * * 5L", "day-of-week field '5L'", "'L' (last day"),
        ("H 2 * * *", "minute field 'H'", "'H' (hashed value)"),
    ],
)
def test_croniter_extensions_are_refused_naming_the_field_and_the_extension(
    expr: str, field: str, extension: str
) -> None:
    error = validate_cron(expr) or ""
    assert error.startswith(f"not a valid cron expression: {expr!r} ({field}: {extension}")
    assert "is a croniter extension, not Vixie cron" in error


def test_croniter_would_accept_what_validation_refuses() -> None:
    # The reason for the check: croniter itself takes these and gives them a meaning.
    for expr in ("0 2 L * *", "0 2 15W * *", "0 2 ? * 1", "0 2 * * 5#2"):
        croniter.expand(expr, strict=True)
        assert validate_cron(expr) is not None


@pytest.mark.parametrize(
    "expr",
    ["0 2 * * 7", "0 2 * * sun,sat", "0 2 * jan-mar mon-fri", "0 2 1-10/3 * *", "5,35 */2 * * *"],
)
def test_every_vixie_form_is_accepted(expr: str) -> None:
    assert validate_cron(expr) is None


def test_a_misspelled_name_is_not_mistaken_for_an_extension() -> None:
    assert validate_cron("0 2 * * thurs") == (
        "not a valid cron expression: '0 2 * * thurs' (day-of-week field 'thurs' is not Vixie "
        "cron syntax; use numbers, month or day names, '*', ',', '-' and '/')"
    )


def test_valid_timezone_has_no_error() -> None:
    assert validate_timezone("Asia/Shanghai") is None
    assert validate_timezone("UTC") is None


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_invalid_timezone_is_explained(name: str) -> None:
    error = validate_timezone(name)
    assert error is not None
    assert "IANA" in error


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_run_after("30 1 * * *", BERLIN, None, datetime(2024, 1, 1))


# --- next runs --------------------------------------------------------------------------------


def test_next_runs_are_aware_and_in_the_job_zone() -> None:
    runs = next_runs("30 1 * * *", SHANGHAI, utc(2024, 1, 1, 0, 0), 3)
    assert [run.isoformat() for run in runs] == [
        "2024-01-02T01:30:00+08:00",
        "2024-01-03T01:30:00+08:00",
        "2024-01-04T01:30:00+08:00",
    ]
    assert all(run.tzinfo == SHANGHAI for run in runs)


def test_next_runs_with_zero_count_is_empty() -> None:
    assert next_runs("@daily", BERLIN, utc(2024, 1, 1), 0) == []


def test_next_run_is_strictly_after_last_run_and_now() -> None:
    slot = utc(2024, 1, 2, 0, 30)  # 01:30 Berlin
    assert next_run_after("30 1 * * *", BERLIN, slot, slot) == utc(2024, 1, 3, 0, 30)
    assert next_run_after("30 1 * * *", BERLIN, None, slot) == utc(2024, 1, 3, 0, 30)


# --- DST: daily jobs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "expr", "start", "end", "changeover", "expected_local"),
    [
        # Spring forward: 02:00 -> 03:00; the 02:30 slot does not exist and fires at 03:00.
        (BERLIN, "30 2 * * *", utc(2024, 3, 29), utc(2024, 4, 3), date(2024, 3, 31), "03:00"),
        (NEW_YORK, "30 2 * * *", utc(2024, 3, 8), utc(2024, 3, 13), date(2024, 3, 10), "03:00"),
        (SYDNEY, "30 2 * * *", utc(2024, 10, 3), utc(2024, 10, 9), date(2024, 10, 6), "03:00"),
        # Fall back: the slot is inside the repeated hour; it runs on the first pass only.
        (BERLIN, "30 2 * * *", utc(2024, 10, 25), utc(2024, 10, 30), date(2024, 10, 27), "02:30"),
        (NEW_YORK, "30 1 * * *", utc(2024, 11, 1), utc(2024, 11, 6), date(2024, 11, 3), "01:30"),
        (SYDNEY, "30 2 * * *", utc(2024, 4, 4), utc(2024, 4, 10), date(2024, 4, 7), "02:30"),
        # Slot next to (not inside) the changeover.
        (BERLIN, "30 1 * * *", utc(2024, 10, 25), utc(2024, 10, 30), date(2024, 10, 27), "01:30"),
        (BERLIN, "30 3 * * *", utc(2024, 3, 29), utc(2024, 4, 3), date(2024, 3, 31), "03:30"),
    ],
)
def test_daily_job_runs_exactly_once_every_day_across_dst(
    simulate: Simulate,
    tz: ZoneInfo,
    expr: str,
    start: datetime,
    end: datetime,
    changeover: date,
    expected_local: str,
) -> None:
    daemon = simulate(expr, tz, start, end)

    days = daemon.local_days()
    first, last = min(days), max(days)
    every_day = {first + timedelta(days=n) for n in range((last - first).days + 1)}
    assert set(days) == every_day, "a day was skipped"
    assert set(days.values()) == {1}, f"a day ran twice: {days}"
    assert changeover in days
    [on_changeover] = [r for r in daemon.runs if r.astimezone(tz).date() == changeover]
    assert on_changeover.astimezone(tz).strftime("%H:%M") == expected_local
    assert_distinct_instants(daemon.runs)


def test_fall_back_run_happens_on_the_first_pass_through_the_repeated_hour() -> None:
    # 2024-10-27 02:30 CEST is 00:30 UTC; 02:30 CET (01:30 UTC) is skipped.
    after = utc(2024, 10, 26, 12, 0)
    first = next_run_after("30 2 * * *", BERLIN, None, after)
    assert first == utc(2024, 10, 27, 0, 30)
    second = next_run_after("30 2 * * *", BERLIN, first, first)
    assert second == utc(2024, 10, 28, 1, 30)


# --- DST: hourly and sub-hourly jobs ----------------------------------------------------------


def test_hourly_job_runs_every_real_hour_on_fall_back_day(simulate: Simulate) -> None:
    daemon = simulate("0 * * * *", BERLIN, utc(2024, 10, 26, 12, 0), utc(2024, 10, 28, 12, 0))

    days = daemon.local_days()
    assert days[date(2024, 10, 27)] == 25  # the repeated 02:00 runs in both passes
    slots = [run.replace(second=0, microsecond=0) for run in daemon.runs]
    gaps = {b - a for a, b in itertools.pairwise(slots)}
    assert gaps == {timedelta(hours=1)}
    assert_distinct_instants(daemon.runs)


def test_hourly_job_skips_only_the_missing_hour_on_spring_forward_day(simulate: Simulate) -> None:
    daemon = simulate("0 * * * *", NEW_YORK, utc(2024, 3, 9, 12, 0), utc(2024, 3, 11, 12, 0))

    assert daemon.local_days()[date(2024, 3, 10)] == 23
    slots = [run.replace(second=0, microsecond=0) for run in daemon.runs]
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(hours=1)}


def test_job_pinned_to_the_repeated_hour_runs_as_on_a_normal_day(simulate: Simulate) -> None:
    daemon = simulate("*/15 2 * * *", BERLIN, utc(2024, 10, 26, 12, 0), utc(2024, 10, 28, 12, 0))

    days = daemon.local_days()
    assert days[date(2024, 10, 27)] == 4
    assert days[date(2024, 10, 28)] == 4


def test_every_six_hours_across_sydney_fall_back(simulate: Simulate) -> None:
    daemon = simulate("0 */6 * * *", SYDNEY, utc(2024, 4, 5, 0, 0), utc(2024, 4, 9, 0, 0))

    for day, count in daemon.local_days().items():
        if date(2024, 4, 6) <= day <= date(2024, 4, 8):
            assert count == 4, (day, count)
    assert_distinct_instants(daemon.runs)


def test_next_runs_lists_the_dst_behaviour_a_user_sees() -> None:
    runs = next_runs("0 * * * *", BERLIN, utc(2024, 10, 26, 23, 30), 3)
    assert [run.isoformat() for run in runs] == [
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


# --- catch-up after downtime ------------------------------------------------------------------


def test_missed_run_returns_the_most_recent_slot_within_the_window() -> None:
    last = utc(2024, 1, 1, 0, 30)
    now = utc(2024, 1, 4, 6, 0)
    assert missed_run("30 1 * * *", BERLIN, last, now, timedelta(days=1)) == utc(2024, 1, 4, 0, 30)


def test_missed_run_ignores_a_slot_older_than_the_window() -> None:
    last = utc(2024, 1, 1, 0, 30)
    now = utc(2024, 1, 4, 6, 0)
    assert missed_run("30 1 * * *", BERLIN, last, now, timedelta(hours=2)) is None


def test_missed_run_counts_a_slot_exactly_at_the_window_edge() -> None:
    last = utc(2024, 1, 1, 0, 30)
    now = utc(2024, 1, 4, 2, 30)
    assert missed_run("30 1 * * *", BERLIN, last, now, timedelta(hours=2)) == utc(2024, 1, 4, 0, 30)


def test_nothing_is_missed_on_first_start_or_when_up_to_date() -> None:
    now = utc(2024, 1, 4, 6, 0)
    assert missed_run("30 1 * * *", BERLIN, None, now, timedelta(days=7)) is None
    assert missed_run("30 1 * * *", BERLIN, utc(2024, 1, 4, 0, 30), now, timedelta(days=7)) is None
    # A last run "in the future" (the clock went back) means nothing was missed.
    assert missed_run("30 1 * * *", BERLIN, utc(2024, 1, 5, 0, 30), now, timedelta(days=7)) is None


def test_after_downtime_the_job_runs_once_not_once_per_missed_slot(simulate: Simulate) -> None:
    now = utc(2024, 1, 4, 6, 10)
    last_run = utc(2024, 1, 1, 0, 0)
    daemon = simulate("0 * * * *", BERLIN, now, utc(2024, 1, 4, 6, 55), last_run=last_run)
    assert daemon.runs == [now]  # the 07:00 Berlin (06:00 UTC) slot, caught up once
    assert daemon.recorder.triggers == ["schedule"]


def test_first_start_waits_for_the_first_slot(tmp_path: Path) -> None:
    start, end = utc(2024, 1, 4, 6, 0), utc(2024, 1, 5, 0, 29)
    simulation = Simulation(tmp_path, "30 1 * * *", BERLIN, start, end)
    assert simulation.daemon.due == {"nightly": utc(2024, 1, 5, 0, 30)}
    simulation.run()
    assert simulation.runs == []


# --- wall-clock jumps -------------------------------------------------------------------------


def test_sleep_is_capped_and_never_negative() -> None:
    now = utc(2024, 1, 1, 0, 0)
    assert sleep_seconds_until(now + timedelta(hours=5), now, 30) == 30.0
    assert sleep_seconds_until(now + timedelta(seconds=12), now, 30) == 12.0
    assert sleep_seconds_until(now - timedelta(hours=1), now, 30) == 0.0


def test_clock_jump_forward_runs_the_due_job_once_at_next_wake_up(simulate: Simulate) -> None:
    # At 13:00 on the first day an NTP step moves the clock almost three days forward.
    jump = (utc(2024, 1, 1, 13, 0), utc(2024, 1, 4, 9, 0))
    daemon = simulate(
        "30 1 * * *", BERLIN, utc(2024, 1, 1, 12, 0), utc(2024, 1, 6, 0, 0), jumps=[jump]
    )
    assert daemon.runs == [
        utc(2024, 1, 4, 9, 0),  # the first wake-up after the step
        utc(2024, 1, 5, 0, 30) + WAKE_LATENCY,
    ]


def test_clock_jump_back_does_not_rerun_a_job_that_already_ran(simulate: Simulate) -> None:
    # The job runs at 01:30 Berlin on 2 Jan; at 02:00 the clock steps back a day and a bit, so
    # the 2 Jan slot comes round again on the wall clock.
    jump = (utc(2024, 1, 2, 1, 0), utc(2024, 1, 1, 0, 0))
    daemon = simulate(
        "30 1 * * *", BERLIN, utc(2024, 1, 1, 12, 0), utc(2024, 1, 3, 12, 0), jumps=[jump]
    )
    assert daemon.runs == [
        utc(2024, 1, 2, 0, 30) + WAKE_LATENCY,
        utc(2024, 1, 3, 0, 30) + WAKE_LATENCY,
    ]


def test_restart_after_clock_jump_back_still_honours_the_stored_last_run() -> None:
    last = utc(2024, 1, 2, 0, 30)
    now = utc(2024, 1, 1, 0, 0)
    due = due_at_start("30 1 * * *", BERLIN, last, now, timedelta(days=1))
    assert due == utc(2024, 1, 3, 0, 30)


def changeovers(tz: ZoneInfo, first: datetime, last: datetime) -> list[datetime]:
    """Returns the UTC midnights before each day on which `tz` changes its offset."""
    days = [first + timedelta(days=n) for n in range((last - first).days)]
    return [
        d
        for d in days
        if d.astimezone(tz).utcoffset() != (d + timedelta(days=1)).astimezone(tz).utcoffset()
    ]


def test_multi_zone_simulation_never_double_runs_or_skips_a_day_around_any_changeover(
    simulate: Simulate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Waking only when a run is due (instead of every 30 s) keeps this fast; the tests above use
    # the real cap. Between changeovers every day is alike, so each run spans a week around one.
    monkeypatch.setattr(daemon_module, "IDLE_MAX_SLEEP", 86400.0)
    # Santiago changes at midnight, Lord Howe by 30 minutes.
    zones = (
        BERLIN,
        NEW_YORK,
        SYDNEY,
        ZoneInfo("America/Santiago"),
        ZoneInfo("Australia/Lord_Howe"),
    )
    for tz in zones:
        found = changeovers(tz, utc(2024, 1, 1), utc(2025, 1, 1))
        assert len(found) == 2, (tz, found)
        for changeover in found:
            for expr in ("30 2 * * *", "30 1 * * *", "0 3 * * *", "30 23 * * *", "0 0 * * *"):
                start, end = changeover - timedelta(days=3), changeover + timedelta(days=4)
                daemon = simulate(expr, tz, start, end)
                days = daemon.local_days()
                assert set(days.values()) == {1}, (tz, expr, changeover)
                assert len(days) == (max(days) - min(days)).days + 1, (tz, expr, changeover)
                assert len(days) >= 6, (tz, expr, changeover)


def test_a_signal_handled_while_the_loop_holds_its_wake_lock_still_wakes_it(
    tmp_path: Path,
) -> None:
    """A Python signal handler runs in the main thread between two bytecodes, so possibly inside
    `Event.wait` while that thread holds the event's lock, which is not reentrant: a handler that
    called `Event.set()` there would deadlock the daemon (a reload or stop that never comes).
    The handler here runs in a thread holding that lock (CPython's `Event._cond`), as it would."""
    sim = Simulation(tmp_path, "0 2 * * *", SHANGHAI, utc(2026, 1, 1), utc(2026, 1, 2))
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        sim.daemon.install_signal_handlers()

        def handler_inside_wait() -> None:
            with sim.daemon._wake._cond:  # type: ignore[attr-defined]
                sim.daemon._on_hup(signal.SIGHUP, None)

        handler = threading.Thread(target=handler_inside_wait, daemon=True)
        handler.start()
        handler.join(timeout=10)
        assert not handler.is_alive(), "the handler deadlocked on the wake event's lock"
        assert sim.daemon._wake.wait(timeout=10), "the loop was not woken"
        assert sim.daemon._reload_requested
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
