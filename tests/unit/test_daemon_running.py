"""What STATUS says about a running job, before its first dump and during dumps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from db_backup.daemon.loop import Running
from db_backup.util.cancel import CancelToken


def _running(**changes: Any) -> Running:
    job = type("Job", (), {"name": "nightly"})()
    ticks = itertools.count(100.0, 2.0)
    return Running(
        job=job,
        attempt=1,
        started_utc=datetime(2026, 12, 5, tzinfo=UTC),
        token=CancelToken(),
        monotonic=lambda: next(ticks),
        **changes,
    )


def test_before_the_first_dump_status_names_the_phase_not_the_job_as_a_database() -> None:
    lines = _running().describe()
    assert lines == ["running nightly: roles and checks before the first dump"]
    assert "nightly/nightly" not in lines[0]


def test_during_a_dump_status_names_job_database_size_and_rate() -> None:
    running = _running()
    running.progress("nightly", "shop", 4 * 1024 * 1024)
    (line,) = running.describe()
    assert line.startswith("running nightly/shop 4.0 MiB ")
    assert line.endswith("/s")
    running.progress("nightly", "shop", -1)
    assert running.describe() == ["running nightly/shop"]
