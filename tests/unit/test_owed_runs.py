"""Runs owed across restarts: retries and re-runs of interrupted runs, decided and carried over.

The decisions are pure functions of `daemon.state`; the daemon-level tests drive the real
`Daemon` (its ticks, its shutdown, a second daemon on the same state file) with a stand-in job
runner, as a restart by systemd would: one process stops, the next one starts.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from db_backup.backup.run import RunResult
from db_backup.config import Config, JobConfig, loads
from db_backup.daemon.loop import Clock, Daemon
from db_backup.daemon.sd_notify import SdNotifier
from db_backup.daemon.state import (
    RERUN,
    RETRY,
    JobState,
    Pending,
    RunMark,
    StateStore,
    rerun_after_stop,
    retry_after,
    settle_interrupted,
    why_dropped,
)
from db_backup.reports.model import FAILED, SUCCESS

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
WINDOW = timedelta(hours=12)


# --- the decisions ------------------------------------------------------------------------------


def test_a_failed_attempt_with_attempts_left_owes_the_next_attempt_after_the_delay() -> None:
    retry, why = retry_after(1, 2, timedelta(minutes=10), T0, T0 + 24 * HOUR)
    assert (retry, why) == (Pending(T0 + timedelta(minutes=10), 2, RETRY), "")


def test_the_last_allowed_attempt_owes_nothing() -> None:
    assert retry_after(3, 2, timedelta(minutes=10), T0, T0 + 24 * HOUR) == (
        None,
        "no attempt left",
    )
    assert retry_after(1, 0, timedelta(0), T0, T0 + 24 * HOUR)[0] is None


@pytest.mark.parametrize("slot_after", [timedelta(minutes=10), timedelta(minutes=5)])
def test_a_retry_due_at_or_after_the_next_slot_is_dropped(slot_after: timedelta) -> None:
    retry, why = retry_after(1, 2, timedelta(minutes=10), T0, T0 + slot_after)
    assert retry is None and why == "the next scheduled run comes first"


@pytest.mark.parametrize("trigger", ["schedule", RETRY, "manual"])
def test_a_run_cut_short_by_a_stop_owes_the_same_attempt_at_once(trigger: str) -> None:
    mark = RunMark(T0, 2, trigger)
    assert rerun_after_stop(mark, T0 + HOUR) == Pending(T0 + HOUR, 2, RERUN)


def test_a_re_run_cut_short_is_not_owed_again() -> None:
    assert rerun_after_stop(RunMark(T0, 1, RERUN), T0 + HOUR) is None


def test_settling_without_a_mark_changes_nothing() -> None:
    state = JobState(T0, "SUCCESS", T0 + HOUR)
    assert settle_interrupted(state, T0 + 2 * HOUR) is state


def test_a_run_the_daemon_died_in_counts_as_failed_from_its_start_and_is_owed() -> None:
    before = JobState(T0 - 24 * HOUR, "SUCCESS", T0 - 23 * HOUR, running=RunMark(T0, 1, "schedule"))
    after = settle_interrupted(before, T0 + HOUR)
    assert after == JobState(T0, "FAILED", None, pending=Pending(T0 + HOUR, 1, RERUN))


def test_a_re_run_the_daemon_died_in_is_settled_without_another() -> None:
    after = settle_interrupted(JobState(running=RunMark(T0, 1, RERUN)), T0 + HOUR)
    assert after == JobState(T0, "FAILED")


def test_an_owed_run_before_the_next_slot_is_run() -> None:
    rerun = Pending(T0, 1, RERUN)
    assert why_dropped(rerun, T0 + timedelta(seconds=5), T0 + 24 * HOUR, WINDOW) == ""
    retry = Pending(T0 + HOUR, 2, RETRY)  # due later than now: run then
    assert why_dropped(retry, T0, T0 + 24 * HOUR, WINDOW) == ""


def test_an_owed_run_gives_way_to_a_slot_due_no_later() -> None:
    # A catch-up run due now is that run; a retry due after the next slot is not needed.
    assert why_dropped(Pending(T0, 1, RERUN), T0 + HOUR, T0 + HOUR, WINDOW) == (
        "the next scheduled run comes first"
    )
    assert why_dropped(Pending(T0 + 2 * HOUR, 2, RETRY), T0, T0 + HOUR, WINDOW) == (
        "the next scheduled run comes first"
    )


def test_an_owed_run_older_than_the_catch_up_window_is_dropped() -> None:
    why = why_dropped(Pending(T0, 1, RERUN), T0 + 13 * HOUR, T0 + 24 * HOUR, WINDOW)
    assert why == "owed since 2026-11-24T02:00:00Z, longer ago than the catch-up window"
    assert why_dropped(Pending(T0, 1, RERUN), T0 + 12 * HOUR, T0 + 24 * HOUR, WINDOW) == ""


# --- the daemon, stopped and started again ------------------------------------------------------


class WallClock(Clock):
    """A wall clock the test sets; the loop is driven by calling `tick` directly."""

    def __init__(self, now: datetime) -> None:
        self.wall = now

    def now(self) -> datetime:
        return self.wall


class Runner:
    """Stands in for `run_job`: each call takes the next outcome from `plan` and records it.

    "block" runs until the daemon cancels the run (a stop), then reports FAILED as the real run
    does ("stopped during the dump").
    """

    def __init__(self, *plan: str) -> None:
        self.plan = list(plan)
        self.calls: list[tuple[str, int]] = []
        self.blocking = threading.Event()

    def __call__(self, config: Config, job: JobConfig, **kwargs: Any) -> RunResult:
        self.calls.append((kwargs["trigger"], kwargs["attempt"]))
        outcome = self.plan.pop(0)
        if outcome == "block":
            self.blocking.set()
            while not kwargs["cancel"].is_cancelled():
                time.sleep(0.01)
            outcome = FAILED
        return RunResult(job.name, reports=[{"status": outcome}])


def write_config(root: Path, **job: Any) -> Path:
    """Writes a config with one daily job `nightly` at 02:00 UTC (plus `job`'s settings)."""
    directories = {name: str(root / name) for name in ("data", "reports", "state")}
    for directory in directories.values():
        Path(directory).mkdir(parents=True, exist_ok=True)
    document = {
        "directories": directories,
        "storage": {"mode": "local"},
        "daemon": {"catch_up_window_hours": 12},
        "jobs": [
            {"name": "nightly", "schedule": "0 2 * * *", "timezone": "UTC", "databases": "shop"}
            | job
        ],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def daemon(path: Path, runner: Runner, now: datetime) -> Daemon:
    """Starts (without its loop) a daemon on the config at `path`, as systemd would."""
    config = loads(path.read_text(encoding="utf-8"), source=str(path))
    started = Daemon(str(path), config, SdNotifier({}), clock=WallClock(now), runner=runner)
    started.start()
    return started


def settle(d: Daemon, now: datetime) -> None:
    """One tick at `now`, waits for the runs it started that do not block, and reaps them."""
    d.clock.wall = now  # type: ignore[attr-defined]
    d.tick(now)
    for running in list(d.running.values()):
        assert running.thread is not None
        running.thread.join(timeout=0.5)
    d.tick(now)


def state_of(root: Path) -> dict[str, Any]:
    return json.loads((root / "state" / "state.json").read_text())["nightly"]


def last_ran_yesterday(root: Path) -> None:
    """The job last ran at yesterday's slot, so today's 02:00 slot is due at T0."""
    StateStore(root / "state" / "state.json").record(
        "nightly", T0 - 24 * HOUR, "SUCCESS", T0 - 23 * HOUR
    )


def test_a_run_cut_short_by_a_stop_runs_again_once_at_the_next_start(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    last_ran_yesterday(tmp_path)
    runner = Runner("block", SUCCESS)
    first = daemon(path, runner, T0 - timedelta(seconds=1))
    settle(first, T0)
    assert runner.blocking.wait(5)
    assert state_of(tmp_path)["running"] == {
        "started_utc": "2026-11-24T02:00:00Z",
        "attempt": 1,
        "trigger": "schedule",
    }
    assert first.shutdown() == 0  # the upgrade's restart: SIGTERM, the run reports FAILED
    saved = state_of(tmp_path)
    assert saved["last_status"] == FAILED and "running" not in saved
    assert saved["pending"]["trigger"] == RERUN and saved["pending"]["attempt"] == 1

    # The next daemon runs it at once, not at tomorrow's slot, and only once.
    back = T0 + timedelta(seconds=20)
    second = daemon(path, runner, back)
    settle(second, back)
    settle(second, back + timedelta(seconds=30))
    assert runner.calls == [("schedule", 1), (RERUN, 1)]
    assert state_of(tmp_path) == {
        "last_run_utc": "2026-11-24T02:00:20Z",
        "last_status": SUCCESS,
        "last_finished_utc": "2026-11-24T02:00:20Z",
    }
    assert second.due["nightly"] == T0 + 24 * HOUR


def test_a_re_run_cut_short_too_waits_for_the_next_slot(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    last_ran_yesterday(tmp_path)
    runner = Runner("block", "block")
    first = daemon(path, runner, T0)
    settle(first, T0)
    assert runner.blocking.wait(5)
    first.shutdown()
    runner.blocking.clear()
    second = daemon(path, runner, T0 + HOUR)
    settle(second, T0 + HOUR)
    assert runner.blocking.wait(5)
    second.shutdown()
    third = daemon(path, runner, T0 + 2 * HOUR)
    settle(third, T0 + 2 * HOUR)
    assert runner.calls == [("schedule", 1), (RERUN, 1)]
    assert "pending" not in state_of(tmp_path) and third.retries == {}


def test_a_run_the_daemon_died_in_runs_again_at_start_and_is_not_also_caught_up(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path)
    # What a SIGKILL (or a power cut) leaves: the mark of today's run, no record of its end.
    state = StateStore(tmp_path / "state" / "state.json")
    state.record("nightly", T0 - 24 * HOUR, "SUCCESS", T0 - 23 * HOUR)
    state.mark_running("nightly", T0, 1, "schedule")
    runner = Runner(SUCCESS)
    back = T0 + timedelta(minutes=2)
    restarted = daemon(path, runner, back)
    assert state_of(tmp_path)["last_status"] == FAILED  # the run it died in
    settle(restarted, back)
    settle(restarted, back + HOUR)
    assert runner.calls == [(RERUN, 1)]
    assert state_of(tmp_path)["last_status"] == SUCCESS


def test_a_planned_retry_survives_a_restart(tmp_path: Path) -> None:
    path = write_config(tmp_path, retry={"attempts": 1, "delay_seconds": 600})
    last_ran_yesterday(tmp_path)
    runner = Runner(FAILED, SUCCESS)
    first = daemon(path, runner, T0)
    settle(first, T0)
    assert first.retries == {"nightly": Pending(T0 + timedelta(minutes=10), 2, RETRY)}
    first.shutdown()
    assert state_of(tmp_path)["pending"] == {
        "due_utc": "2026-11-24T02:10:00Z",
        "attempt": 2,
        "trigger": RETRY,
    }
    second = daemon(path, runner, T0 + timedelta(minutes=5))
    settle(second, T0 + timedelta(minutes=5))
    assert runner.calls == [("schedule", 1)]  # not yet: the retry keeps its time
    settle(second, T0 + timedelta(minutes=10))
    assert runner.calls == [("schedule", 1), (RETRY, 2)]
    assert "pending" not in state_of(tmp_path)


def test_an_owed_run_gives_way_to_a_catch_up_run_due_at_start(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    # Stopped during yesterday's run, the host stayed down past today's slot: one run, not two.
    state = StateStore(tmp_path / "state" / "state.json")
    yesterday = T0 - 24 * HOUR
    state.record("nightly", yesterday, "FAILED", yesterday, Pending(yesterday, 1, RERUN))
    runner = Runner(SUCCESS, SUCCESS)
    back = T0 + HOUR
    restarted = daemon(path, runner, back)
    settle(restarted, back)
    settle(restarted, back + HOUR)
    assert runner.calls == [("schedule", 1)]
