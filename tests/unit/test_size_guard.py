"""The size guard of retention: the pure verdict, and the retention step it holds.

A newest backup under `capacity.suspicious_ratio` of the previous successful one must keep
every old backup. These tests fail when the guard never holds (the verdict, `hold_retention`
or the retention step ignoring it), not only the end-to-end test in tests/integration.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from db_backup.backup import sizeguard
from db_backup.backup.history import JobHistory, current_backup
from db_backup.backup.prune import apply_retention, plan_deletions
from db_backup.backup.sizeguard import SizeCheck, check_size, hold_retention
from db_backup.config import Config, loads
from db_backup.observe import events
from db_backup.reports.calendar import Policy
from db_backup.reports.model import SUCCESS, Report, TargetResult, write_report
from db_backup.reports.retention import Backup
from db_backup.storage.local import LocalTarget

NOW = datetime.now(UTC).replace(microsecond=0)


def doc(size: int | None, fmt: str = "custom", compression: int = 9, **more: Any) -> dict[str, Any]:
    """Returns a report document with a dump of `size` bytes (None: no size recorded)."""
    local = {} if size is None else {"sizeBytes": size}
    return {"format": fmt, "compression": compression, "local": local, **more}


@pytest.mark.parametrize(
    ("current", "previous", "threshold", "expected"),
    [
        # under the threshold: held
        (doc(400), doc(1000), 0.5, SizeCheck(400, 1000, 0.4, hold=True)),
        (doc(0), doc(1000), 0.5, SizeCheck(0, 1000, 0.0, hold=True)),  # an empty dump
        (doc(899), doc(1000), 0.9, SizeCheck(899, 1000, 0.899, hold=True)),
        # at or over the threshold, or grown: normal
        (doc(500), doc(1000), 0.5, SizeCheck(500, 1000, 0.5, hold=False)),
        (doc(900), doc(1000), 0.5, SizeCheck(900, 1000, 0.9, hold=False)),
        (doc(3000), doc(1000), 0.5, SizeCheck(3000, 1000, 3.0, hold=False)),
        # encrypted: pg_dump's output (plaintext) is compared, not the ciphertext
        (
            doc(1300, encryption={"plaintextSizeBytes": 300}),
            doc(1200, encryption={"plaintextSizeBytes": 1000}),
            0.5,
            SizeCheck(300, 1000, 0.3, hold=True),
        ),
        # a previous report of an older version, without format and compression: same kind
        ({"local": {"sizeBytes": 100}, "format": "custom", "compression": 9}, doc(1000), 0.5,
         SizeCheck(100, 1000, 0.1, hold=True)),
        (doc(100), {"local": {"sizeBytes": 1000}}, 0.5, SizeCheck(100, 1000, 0.1, hold=True)),
    ],
)  # fmt: skip
def test_a_backup_under_the_ratio_of_the_previous_one_is_held(
    current: dict[str, Any], previous: dict[str, Any], threshold: float, expected: SizeCheck
) -> None:
    assert check_size(current, previous, threshold=threshold) == expected


@pytest.mark.parametrize(
    ("current", "previous", "threshold"),
    [
        (doc(1), doc(1000), 0.0),  # the guard is off
        (doc(1), doc(1000), -1.0),
        (doc(1), None, 0.5),  # a first backup
        (doc(None), doc(1000), 0.5),  # no size recorded
        (doc(1), doc(None), 0.5),
        (doc(1), doc(0), 0.5),  # the previous one was empty: no ratio
        (doc(1), {"local": {"sizeBytes": True}}, 0.5),  # not a size
        (doc(1), doc(1000, fmt="plain"), 0.5),  # another format says nothing of this one
        (doc(1), doc(1000, compression=0), 0.5),  # nor another compression
        (doc(1, fmt="directory"), doc(1000), 0.5),
    ],
)
def test_no_verdict_without_a_comparable_previous_size(
    current: dict[str, Any], previous: dict[str, Any] | None, threshold: float
) -> None:
    assert check_size(current, previous, threshold=threshold) is None


def test_the_held_reason_and_record_name_the_numbers_and_the_previous_backup() -> None:
    previous = doc(
        4096,
        id="abc",
        startedAt="2026-01-02T03:04:05Z",
        local={"sizeBytes": 4096, "file": "/d/shop_20260102T030405Z_h.dump"},
    )
    check = SizeCheck(1024, 4096, 0.25, hold=True)
    assert sizeguard.held_reason(check, previous, 0.5) == (
        "the newest backup is suspiciously small: 1.0 KiB (1024 bytes), 25% of the previous "
        "successful one (4.0 KiB, 4096 bytes, started 2026-01-02T03:04:05Z), under "
        "capacity.suspicious_ratio 0.5; retention deleted nothing. Check the database and this "
        "dump; the next backup of normal size lets retention run again"
    )
    assert sizeguard.suspicious_record(check, previous, 0.5) == {
        "sizeBytes": 1024,
        "previousSizeBytes": 4096,
        "previousReport": "abc",
        "previousStartedAt": "2026-01-02T03:04:05Z",
        "previousFile": "shop_20260102T030405Z_h.dump",
        "ratio": 0.25,
        "threshold": 0.5,
    }


# --------------------------------------------------------------------------- with files


def make_config(tmp_path: Path, **capacity: Any) -> Config:
    """Returns a local-mode config of one job `nightly` (retention: 1 day, keep the last 1)."""
    document: dict[str, Any] = {
        "run_as": None,
        "directories": {key: str(tmp_path / key) for key in ("data", "reports", "state")},
        "storage": {"mode": "local"},
        "jobs": [
            {
                "name": "nightly",
                "schedule": "0 2 * * *",
                "databases": "shop",
                "retention": {"days": 1, "keep_last": 1},
            }
        ],
    }
    if capacity:
        document["capacity"] = capacity
    for key in ("data", "reports", "state"):
        (tmp_path / key).mkdir(exist_ok=True)
    return loads(yaml.safe_dump(document))


def backup(config: Config, started: datetime, size: int) -> Report:
    """Writes a SUCCESS report of `shop` with its dump and .sha256 files; returns it."""
    stem = f"shop_{started:%Y%m%dT%H%M%SZ}_h"
    data = config.directories.data
    (data / f"{stem}.dump").write_bytes(b"x" * size)
    (data / f"{stem}.dump.sha256").write_text("sum\n")
    report = Report(
        job="nightly",
        database="shop",
        host="/run/postgresql",
        port=5432,
        mode="local",
        tool="local",
        stem=stem,
        started=started,
        finished=started + timedelta(seconds=5),
        status=SUCCESS,
        size_bytes=size,
        stored={"local": [f"{stem}.dump", f"{stem}.dump.sha256"]},
        targets={
            "local": TargetResult(
                SUCCESS,
                location=str(data / f"{stem}.dump"),
                checksum_location=str(data / f"{stem}.dump.sha256"),
            )
        },
    )
    write_report(config.directories.reports, report)
    return report


def history_of(config: Config, *reports: Report) -> JobHistory:
    """Returns the run's history as it would have read these reports."""
    history = JobHistory(config.directories.reports)
    for report in reports:
        history.add(current_backup(report))
    return history


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[events.Event]:
    found: list[events.Event] = []
    monkeypatch.setattr(events, "publish", lambda config, event: found.append(event))
    return found


def test_a_small_backup_holds_retention_marks_its_report_and_raises_the_alert(
    tmp_path: Path, published: list[events.Event]
) -> None:
    config = make_config(tmp_path)
    job = config.job("nightly")
    previous = backup(config, NOW - timedelta(hours=1), 10_000)
    current = backup(config, NOW, 1_000)
    assert hold_retention(config, job, current, history_of(config, previous, current)) is True
    assert current.retention_held.startswith("the newest backup is suspiciously small: ")
    assert current.capacity is not None
    assert current.capacity["suspicious"]["previousReport"] == previous.id
    assert current.capacity["suspicious"]["ratio"] == 0.1
    [raised] = published
    assert (raised.kind, raised.ok, raised.database) == (events.SUSPICIOUS_SIZE, False, "shop")
    assert raised.message == current.retention_held
    assert raised.details == {"sizeBytes": 1000, "previousSizeBytes": 10_000, "ratio": 0.1}
    assert raised.report is not None and raised.report["retention"]["held"]
    assert raised.report_path == config.directories.reports / f"{current.stem}.json"
    # The next backup of normal size clears the alert, once.
    published.clear()
    normal = backup(config, NOW + timedelta(hours=1), 9_000)
    history = history_of(config, previous, current, normal)
    assert hold_retention(config, job, normal, history) is False  # 9x the (small) previous one
    [cleared] = published
    assert cleared.ok is True and cleared.kind == events.SUSPICIOUS_SIZE
    assert normal.retention_held == "" and normal.capacity is None
    published.clear()
    later = backup(config, NOW + timedelta(hours=2), 9_500)
    assert hold_retention(config, job, later, history_of(config, normal, later)) is False
    assert published == [], "a clear is published once"


def test_a_first_backup_is_never_held_even_a_tiny_one(
    tmp_path: Path, published: list[events.Event]
) -> None:
    config = make_config(tmp_path)
    current = backup(config, NOW, 1)  # alone in the history: nothing to compare with
    history = history_of(config, current)
    assert hold_retention(config, config.job("nightly"), current, history) is False
    assert current.retention_held == "" and published == []


def test_an_off_guard_does_not_even_read_the_history(
    tmp_path: Path, published: list[events.Event]
) -> None:
    config = make_config(tmp_path, suspicious_ratio=0)
    current = backup(config, NOW, 1)
    unread = JobHistory.unread(config.directories.reports)  # asking it raises
    assert hold_retention(config, config.job("nightly"), current, unread) is False
    assert published == []


def expired_setup(config: Config, current_size: int) -> tuple[Report, Report, Report]:
    """Writes an expired backup, a recent one of 10,000 bytes and the current one."""
    old = backup(config, NOW - timedelta(days=10), 10_000)
    recent = backup(config, NOW - timedelta(hours=1), 10_000)
    current = backup(config, NOW, current_size)
    return old, recent, current


def files_of(config: Config, report: Report) -> list[Path]:
    """Returns the report's file and its artefacts' paths."""
    data = config.directories.data
    return [config.directories.reports / f"{report.stem}.json"] + [
        data / name for name in report.artefacts
    ]


def test_a_held_retention_step_deletes_nothing_even_what_has_expired(
    tmp_path: Path, published: list[events.Event]
) -> None:
    config = make_config(tmp_path)
    old, recent, current = expired_setup(config, current_size=100)
    history = history_of(config, old, recent, current)
    target = LocalTarget(config.directories.data, "nightly")
    removed = apply_retention(config, config.job("nightly"), current, [target], history)
    assert removed == []
    assert all(path.exists() for path in files_of(config, old) + files_of(config, recent))
    assert current.retention_held
    assert [b.key for b in history.backups("shop")] == [
        f"{r.stem}.json" for r in (current, recent, old)
    ]


def test_a_normal_retention_step_deletes_what_expired_and_keeps_the_rest(
    tmp_path: Path, published: list[events.Event]
) -> None:
    config = make_config(tmp_path)
    old, recent, current = expired_setup(config, current_size=9_000)
    history = history_of(config, old, recent, current)
    target = LocalTarget(config.directories.data, "nightly")
    removed = apply_retention(config, config.job("nightly"), current, [target], history)
    assert sorted(removed) == sorted(str(p) for p in files_of(config, old))
    assert not any(path.exists() for path in files_of(config, old))
    assert all(path.exists() for path in files_of(config, recent) + files_of(config, current))
    assert current.retention_held == ""
    # The run's view follows what it deleted, for any later decision of the run.
    assert [b.key for b in history.backups("shop")] == [f"{r.stem}.json" for r in (current, recent)]


def test_plan_deletions_keeps_a_file_a_kept_report_still_names() -> None:
    def one(key: str, days_ago: int, *files: str) -> Backup:
        return Backup(key, "shop", NOW - timedelta(days=days_ago), True, (*files, key))

    backups = [
        one("c.json", 0, "c.dump"),
        one("b.json", 5, "b.dump", "shared.sql"),
        one("a.json", 6, "a.dump", "shared.sql"),
    ]
    plan = plan_deletions(backups, Policy(days=4, keep_last=1), now=NOW)
    assert [(d.key, d.names) for d in plan] == [
        ("b.json", ["b.dump", "shared.sql", "b.json"]),
        ("a.json", ["a.dump", "shared.sql", "a.json"]),
    ]
    plan = plan_deletions(backups, Policy(days=4, keep_last=2), now=NOW)
    assert [(d.key, d.names) for d in plan] == [("a.json", ["a.dump", "a.json"])]
