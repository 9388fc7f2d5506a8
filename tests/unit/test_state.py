"""State file: round trip, atomic replacement, and tolerance of missing or corrupt files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from db_backup.daemon.state import RERUN, RETRY, JobState, Pending, RunMark, StateStore
from db_backup.util.clock import format_utc, parse_utc

STARTED = datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
FINISHED = datetime(2024, 10, 27, 0, 41, 7, 250000, tzinfo=UTC)


def test_missing_file_means_no_job_has_run(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    assert store.load() == {}
    assert store.last_run_utc("nightly") is None
    assert not (tmp_path / "state.json.corrupt").exists()


def test_recorded_run_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    StateStore(path).record("nightly", STARTED, "SUCCESS", FINISHED)

    reloaded = StateStore(path)
    reloaded.load()
    assert reloaded.get("nightly") == JobState(STARTED, "SUCCESS", FINISHED)
    assert reloaded.last_run_utc("nightly") == STARTED


def test_file_format_is_job_name_to_utc_z_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.record("nightly", STARTED, "SUCCESS", FINISHED)
    store.record("hourly", STARTED + timedelta(hours=1), "FAILED")
    assert json.loads(path.read_text()) == {
        "hourly": {
            "last_run_utc": "2024-10-27T01:30:00Z",
            "last_status": "FAILED",
            "last_finished_utc": None,
        },
        "nightly": {
            "last_run_utc": "2024-10-27T00:30:00Z",
            "last_status": "SUCCESS",
            "last_finished_utc": "2024-10-27T00:41:07.250000Z",
        },
    }


def test_non_utc_input_is_stored_as_utc(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    shanghai = timezone(timedelta(hours=8))
    store.record("nightly", datetime(2024, 1, 1, 9, 30, tzinfo=shanghai), "SUCCESS")
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["nightly"]["last_run_utc"] == "2024-01-01T01:30:00Z"


def test_naive_timestamps_are_refused_without_writing(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record("nightly", datetime(2024, 1, 1, 1, 30), "SUCCESS")
    assert not (tmp_path / "state.json").exists()


def test_unknown_status_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    with pytest.raises(ValueError, match="SUCCESS or FAILED"):
        store.record("nightly", STARTED, "OK")  # type: ignore[arg-type]


def test_write_replaces_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.record("nightly", STARTED, "SUCCESS")
    first_inode = path.stat().st_ino
    store.record("nightly", STARTED + timedelta(days=1), "FAILED")
    assert path.stat().st_ino != first_inode  # renamed over, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """Makes `directory` refuse new entries for the block, for root as well.

    Root ignores permission bits, so as root the directory is made immutable (chattr +i).
    """
    if os.geteuid() != 0:
        os.chmod(directory, 0o500)
        try:
            yield
        finally:
            os.chmod(directory, 0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("running as root without chattr: nothing makes a directory unwritable")
    done = subprocess.run([chattr, "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root on a file system without chattr +i: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_failed_write_keeps_the_old_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.record("nightly", STARTED, "SUCCESS")
    before = path.read_bytes()
    with unwritable(tmp_path), pytest.raises(OSError):
        store.record("nightly", STARTED + timedelta(days=1), "FAILED")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert store.get("nightly") == JobState(STARTED, "SUCCESS")


def test_failed_write_does_not_change_memory_or_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.record("nightly", STARTED, "SUCCESS")
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        store.record("nightly", STARTED + timedelta(days=1), "FAILED")
    assert path.read_bytes() == before
    assert store.get("nightly") == JobState(STARTED, "SUCCESS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00garbage", b""],
    ids=["truncated", "not-an-object", "binary", "empty"],
)
def test_corrupt_file_is_kept_aside_and_state_starts_empty(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = StateStore(path)
    assert store.load() == {}
    assert (tmp_path / "state.json.corrupt").read_bytes() == content

    store.record("nightly", STARTED, "SUCCESS")
    assert StateStore(path).load() == {"nightly": JobState(STARTED, "SUCCESS")}


def test_bad_entries_are_skipped_and_good_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "good": {"last_run_utc": "2024-10-27T00:30:00Z", "last_status": "SUCCESS"},
                "bad-status": {"last_run_utc": "2024-10-27T00:30:00Z", "last_status": "MAYBE"},
                "bad-time": {"last_run_utc": "yesterday", "last_status": "FAILED"},
                "naive-time": {"last_run_utc": "2024-10-27T00:30:00", "last_status": "FAILED"},
                "not-an-object": 42,
            }
        )
    )
    assert StateStore(path).load() == {"good": JobState(STARTED, "SUCCESS")}


def test_timestamp_helpers_round_trip() -> None:
    assert format_utc(FINISHED) == "2024-10-27T00:41:07.250000Z"
    assert parse_utc("2024-10-27T08:30:00+08:00") == STARTED
    with pytest.raises(ValueError):
        parse_utc("2024-10-27T00:30:00")
    assert parse_utc("2024-10-27T00:30:00", naive_is_utc=True) == STARTED
    assert format_utc(STARTED) == "2024-10-27T00:30:00Z"  # the report's form: no fraction
    assert parse_utc(format_utc(FINISHED)) == FINISHED
    with pytest.raises(ValueError):
        format_utc(STARTED.replace(tzinfo=None))


def test_a_started_run_and_an_owed_run_survive_a_restart_and_are_stored_only_while_set(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    store = StateStore(path)
    store.record("nightly", STARTED, "SUCCESS", FINISHED)
    store.mark_running("nightly", STARTED + timedelta(days=1), 1, "schedule")
    assert json.loads(path.read_text())["nightly"]["running"] == {
        "started_utc": "2024-10-28T00:30:00Z",
        "attempt": 1,
        "trigger": "schedule",
    }
    retry = Pending(STARTED + timedelta(days=1, minutes=10), 2, RETRY)
    store.record("nightly", STARTED + timedelta(days=1), "FAILED", FINISHED, retry)

    reloaded = StateStore(path)
    assert reloaded.load() == {
        "nightly": JobState(STARTED + timedelta(days=1), "FAILED", FINISHED, pending=retry)
    }
    assert "running" not in json.loads(path.read_text())["nightly"]
    reloaded.mark_running("nightly", retry.due_utc, 2, RETRY)  # the owed run is this run
    assert reloaded.get("nightly") == JobState(
        STARTED + timedelta(days=1), "FAILED", FINISHED, running=RunMark(retry.due_utc, 2, RETRY)
    )
    reloaded.clear_running("nightly")
    assert set(json.loads(path.read_text())["nightly"]) == {
        "last_run_utc",
        "last_status",
        "last_finished_utc",
    }


def test_a_first_run_that_never_finished_is_remembered(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    StateStore(path).mark_running("nightly", STARTED, 1, "schedule")
    assert json.loads(path.read_text()) == {
        "nightly": {
            "running": {"started_utc": "2024-10-27T00:30:00Z", "attempt": 1, "trigger": "schedule"}
        }
    }
    store = StateStore(path)
    assert store.load() == {"nightly": JobState(running=RunMark(STARTED, 1, "schedule"))}
    assert store.last_run_utc("nightly") is None
    assert store.settle_interrupted(STARTED + timedelta(minutes=5)) == {
        "nightly": JobState(
            STARTED, "FAILED", pending=Pending(STARTED + timedelta(minutes=5), 1, RERUN)
        )
    }
    assert StateStore(path).load() == store.all()


@pytest.mark.parametrize(
    "entry",
    [
        {"running": {"started_utc": "yesterday", "attempt": 1, "trigger": "schedule"}},
        {"running": {"started_utc": "2024-10-27T00:30:00Z", "attempt": 0, "trigger": "schedule"}},
        {"pending": {"due_utc": "2024-10-27T00:30:00Z", "attempt": 2, "trigger": "whenever"}},
        {"pending": {"due_utc": "2024-10-27T00:30:00Z", "attempt": True, "trigger": "retry"}},
        {"pending": [1, 2]},
        {},
    ],
    ids=[
        "running-time",
        "running-attempt",
        "pending-trigger",
        "pending-attempt",
        "pending-list",
        "empty",
    ],
)
def test_malformed_owed_runs_are_skipped_with_the_entry(tmp_path: Path, entry: dict) -> None:
    path = tmp_path / "state.json"
    good = {"last_run_utc": "2024-10-27T00:30:00Z", "last_status": "SUCCESS"}
    path.write_text(json.dumps({"good": good, "bad": entry}))
    assert StateStore(path).load() == {"good": JobState(STARTED, "SUCCESS")}
