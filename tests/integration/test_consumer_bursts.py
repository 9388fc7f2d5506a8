"""A burst of events (a many-database run) costs the consumers a few writes, not one each.

The metrics textfile is written at once for the first event, then at most once per interval
while events keep coming, and at close for what is still owed; the sink's sender gathers the
reports of a moment into one flush.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest

from db_backup.config import Config, load
from db_backup.observe import events, metrics
from db_backup.reports.model import SUCCESS
from tests.conftest import Setup
from tests.integration.test_metrics import add_report, offline, parse, value

pytestmark = pytest.mark.integration
__all__ = ["offline"]  # the fixture


def written(target: os.PathLike[str]) -> int:
    return os.stat(target).st_mtime_ns


def test_a_burst_of_backup_events_writes_the_metrics_file_once_per_interval_and_at_close(
    offline: Config, setup: Setup
) -> None:
    # Listed: the metrics show only databases the config still names.
    setup.job()["databases"] = [f"db{number}" for number in range(7)]
    offline = load(str(setup.write()))
    started = datetime(2026, 5, 1, 2, tzinfo=UTC)
    consumer = metrics.consumer(offline)
    assert consumer is not None
    consumer.interval = 1.0
    add_report(offline, "nightly", "db0", started, SUCCESS)
    consumer.handle(events.Event(kind=events.BACKUP, job="nightly", database="db0"))
    first = written(consumer.target)  # the first event: written at once
    for number in range(1, 6):  # the burst: owed, not written
        add_report(offline, "nightly", f"db{number}", started, SUCCESS)
        consumer.handle(events.Event(kind=events.BACKUP, job="nightly", database=f"db{number}"))
    assert written(consumer.target) == first
    samples = parse(consumer.target.read_text())
    last_db5 = (
        "db_backup_last_success_timestamp_seconds",
        (("backup_job", "nightly"), ("database", "db5")),
    )
    assert last_db5 not in samples
    assert value(samples, "db_backup_last_success_timestamp_seconds", backup_job="nightly",
                 database="db0") is not None  # fmt: skip
    deadline = time.monotonic() + 5
    while written(consumer.target) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    samples = parse(consumer.target.read_text())  # the timer's write holds the whole burst
    for number in range(6):
        key = {"backup_job": "nightly", "database": f"db{number}"}
        assert value(samples, "db_backup_last_success_timestamp_seconds", **key) is not None
    add_report(offline, "nightly", "db6", started, SUCCESS)
    consumer.handle(events.Event(kind=events.BACKUP, job="nightly", database="db6"))
    consumer.close(5)  # the end of the command: what is owed is written now
    samples = parse(consumer.target.read_text())
    key = {"backup_job": "nightly", "database": "db6"}
    assert value(samples, "db_backup_last_success_timestamp_seconds", **key) is not None
    after_close = written(consumer.target)
    consumer.close(5)  # nothing owed: no write
    assert written(consumer.target) == after_close


def test_a_failed_timed_write_is_counted_as_a_metrics_failure(offline: Config) -> None:
    consumer = metrics.consumer(offline)
    assert consumer is not None
    consumer.interval = 0.5
    consumer.handle(events.Event(kind=events.BACKUP, job="nightly"))
    consumer.target = consumer.target.parent / "gone" / "db_backup.prom"  # cannot be written
    consumer.handle(events.Event(kind=events.BACKUP, job="nightly"))
    deadline = time.monotonic() + 5
    while not events.failure_counts(offline.directories.state) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events.failure_counts(offline.directories.state) == {"metrics": 1}
