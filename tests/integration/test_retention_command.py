"""`db-backup retention [--dry-run]` and calendar retention over a simulated year of hourly
backups, on local disk and on the loopback OSS server (the real oss2 SDK).

One real backup is made (the newest); a year of hourly backups before it, in Europe/Berlin
(both clock changes, a year boundary), is laid down as this program lays down its own: a
report per backup naming its local file and its OSS object, and the file and object
themselves. What is left afterwards is compared with what the reference of
tests/unit/test_calendar_retention.py keeps: periods found by bucketing instants between
calendar boundaries, not from the keys the product derives.
"""

from __future__ import annotations

import fcntl
import json
import random
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from db_backup.reports.model import REPORT_NAMESPACE
from tests.conftest import RunCli, Setup
from tests.integration.test_job_remote import OSS_ENV, PREFIX, bucket, use_oss
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
)
from tests.support.oss_server import Credential, OssServer
from tests.unit.test_calendar_retention import YEAR_POLICIES, reference

pytestmark = pytest.mark.integration

BERLIN = ZoneInfo("Europe/Berlin")
POLICY = YEAR_POLICIES[
    0
]  # days 2, keep_last 3, hourly 24, daily 14, weekly 13, monthly 12, yearly 3


def simulated_starts(newest: datetime) -> list[datetime]:
    """Returns a year of hourly starts before `newest`, some hours missing, a few doubled.

    Each lies 30 (or 19) minutes off the hour of `newest`, so the `days` cutoff, which moves
    with the clock while the test runs, is never within minutes of a backup.
    """
    rng = random.Random(2026)
    starts = []
    for hours in range(1, 366 * 24):
        moment = newest - timedelta(hours=hours, minutes=30)
        if rng.random() > 0.03:
            starts.append(moment.replace(microsecond=0))
        if rng.random() < 0.01:
            starts.append((moment + timedelta(minutes=11)).replace(microsecond=0))
    return starts


def clone(template: dict[str, Any], old_stem: str, started: datetime) -> tuple[str, dict[str, Any]]:
    """Returns (stem, report) of a backup started at `started`, shaped like `template`."""
    new_stem = old_stem.replace(old_stem.split("_")[-2], f"{started:%Y%m%dT%H%M%SZ}")
    document: dict[str, Any] = json.loads(json.dumps(template).replace(old_stem, new_stem))
    document["id"] = str(uuid.uuid5(REPORT_NAMESPACE, f"nightly/{new_stem}"))
    document["startedAt"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    document["finishedAt"] = (started + timedelta(seconds=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document["local"]["sizeBytes"] = 1  # smaller than the real one: the size guard stays off
    return new_stem, document


def listing(setup: Setup, server: OssServer) -> tuple[set[str], set[str], set[str]]:
    """Returns (local data files, report files, OSS keys) as they are now."""
    data = {str(p.relative_to(setup.data)) for p in setup.data_files()}
    reports = {p.name for p in setup.reports.glob("*.json")}
    return data, reports, set(server.objects(OSS_BUCKET))


def lay_down_history(
    setup: Setup, server: OssServer, real: dict[str, Any], starts: list[datetime]
) -> dict[datetime, str]:
    """Writes a report, a local dump and an OSS object per start; returns {start: stem}."""
    real_stem = Path(real["local"]["file"]).name.removesuffix(".dump")
    local_dir = Path(real["local"]["file"]).parent
    stems: dict[datetime, str] = {}
    for started in starts:
        stem, document = clone(real, real_stem, started)
        stems[started] = stem
        (setup.reports / f"{stem}.json").write_text(json.dumps(document, indent=2))
        (local_dir / f"{stem}.dump").write_bytes(b"x")
        (local_dir / f"{stem}.dump.sha256").write_bytes(b"x")
    client = bucket(server)

    def put(stem: str) -> None:
        client.put_object(f"{PREFIX}{stem}.dump", b"x")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, stems.values()))
    return stems


@pytest.fixture
def in_memory(setup: Setup) -> Iterator[Path]:
    """Points the setup's directories into /dev/shm: the year is ~35,000 files and objects
    written and removed, and on this machine's disk each unlink costs milliseconds."""
    root = Path(tempfile.mkdtemp(prefix="db-backup-year-", dir="/dev/shm"))
    setup.data, setup.reports = root / "data", root / "reports"
    setup.document["directories"].update(data=str(setup.data), reports=str(setup.reports))
    setup.write()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def year_server(in_memory: Path) -> Iterator[OssServer]:
    """A loopback OSS server (as the `oss_server` fixture) keeping its objects in memory too."""
    server = OssServer(
        in_memory / "oss-server",
        [OSS_BUCKET],
        [Credential(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)],
        region=OSS_REGION,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_calendar_retention_over_a_year_of_hourly_backups_on_local_disk_and_oss(
    setup: Setup, year_server: OssServer, run_cli: RunCli
) -> None:
    oss_server = year_server
    setup.job()["databases"] = "crm"
    setup.job()["globals"] = False
    setup.job()["timezone"] = "Europe/Berlin"
    setup.job()["retention"] = {
        "days": POLICY.days,
        "keep_last": POLICY.keep_last,
        "keep_hourly": POLICY.keep_hourly,
        "keep_daily": POLICY.keep_daily,
        "keep_weekly": POLICY.keep_weekly,
        "keep_monthly": POLICY.keep_monthly,
        "keep_yearly": POLICY.keep_yearly,
    }
    use_oss(setup, oss_server, "both")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [real] = setup.reports_json()
    newest = datetime.fromisoformat(real["startedAt"])
    starts = simulated_starts(newest)
    stems = lay_down_history(setup, oss_server, real, starts)
    stems[newest] = Path(real["local"]["file"]).name.removesuffix(".dump")
    before = listing(setup, oss_server)
    assert len(before[1]) == len(stems) > 8000 and len(before[2]) > 8000

    preview = run_cli(
        "--config", str(setup.path), "retention", "--dry-run", "--job", "nightly", env=OSS_ENV
    )
    assert preview.returncode == 0, preview.stderr
    assert listing(setup, oss_server) == before  # a dry run changes nothing, anywhere
    applied = run_cli("--config", str(setup.path), "retention", "--job", "nightly", env=OSS_ENV)
    now = datetime.now(UTC)
    assert applied.returncode == 0, applied.stderr

    expected = reference(list(stems), POLICY, BERLIN, now)
    kept = {stems[start] for start in expected}
    assert 100 < len(kept) < 130
    # The dry run named, backup by backup, exactly what the reference keeps and lets go.
    said = {
        line.split()[1].removesuffix(":").removesuffix(".json"): line.split()[0]
        for line in preview.stdout.splitlines()
        if line.startswith(("  keep ", "  delete "))
    }
    assert said == {stem: "keep" if stem in kept else "delete" for stem in stems.values()}
    for start, rules in expected.items():
        line = next(x for x in preview.stdout.splitlines() if f" {stems[start]}.json" in x)
        assert set(line.split(": ", 1)[1].split(", ")) == rules, line
    assert "would delete" in preview.stdout and "kept by rule: days 4" in preview.stdout

    data, reports, objects = listing(setup, oss_server)
    local_dir = Path(real["local"]["file"]).parent.relative_to(setup.data)
    assert reports == {f"{stem}.json" for stem in kept}
    assert data == {
        *(str(local_dir / f"{stem}.dump") for stem in kept),
        *(str(local_dir / f"{stem}.dump.sha256") for stem in kept),
    }
    real_objects = {k for k in before[2] if stems[newest] in k}
    assert objects == {f"{PREFIX}{stem}.dump" for stem in kept} | real_objects
    # A second application finds nothing more to delete.
    again = run_cli("--config", str(setup.path), "retention", "--job", "nightly", env=OSS_ENV)
    assert again.returncode == 0 and "removed 0 files" in again.stdout
    assert listing(setup, oss_server) == (data, reports, objects)


def small_history(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> tuple[dict[str, Any], dict[datetime, str]]:
    """One real backup of crm (OSS and local) and 10 daily ones before it; keeps 2 of them."""
    setup.job()["databases"] = "crm"
    setup.job()["globals"] = False
    setup.job()["retention"] = {"days": 1, "keep_last": 1, "keep_daily": 2}
    use_oss(setup, server, "both")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [real] = setup.reports_json()
    newest = datetime.fromisoformat(real["startedAt"])
    starts = [newest - timedelta(days=n, minutes=30) for n in range(1, 11)]
    return real, lay_down_history(setup, server, real, starts)


def test_retention_keeps_everything_while_the_newest_backup_is_suspiciously_small(
    setup: Setup, oss_server: OssServer, run_cli: RunCli
) -> None:
    real, stems = small_history(setup, oss_server, run_cli)
    previous = setup.reports / f"{stems[max(stems)]}.json"
    document = json.loads(previous.read_text())
    document["local"]["sizeBytes"] = real["local"]["sizeBytes"] * 10
    previous.write_text(json.dumps(document))
    before = listing(setup, oss_server)
    for args in (["--dry-run"], []):
        done = run_cli("--config", str(setup.path), "retention", *args, env=OSS_ENV)
        assert done.returncode == 0, done.stderr
        assert "held, nothing" in done.stdout and "suspiciously small" in done.stdout
        assert listing(setup, oss_server) == before


def test_retention_that_oss_refuses_keeps_every_report_and_exits_1(
    setup: Setup, oss_server: OssServer, run_cli: RunCli
) -> None:
    real, stems = small_history(setup, oss_server, run_cli)
    oss_server.fail_request(503, operation="DeleteMultipleObjects", times=20)
    done = run_cli("--config", str(setup.path), "retention", env=OSS_ENV)
    assert done.returncode == 1
    assert "8 expired backup(s) could not be deleted everywhere" in done.stderr
    assert "Traceback" not in done.stderr
    # The reports stay, naming what may remain; the OSS objects are all still there.
    assert {p.name for p in setup.reports.glob("*.json")} == {
        f"{stem}.json" for stem in [*stems.values(), Path(real["local"]["file"]).stem]
    }
    assert {f"{PREFIX}{stem}.dump" for stem in stems.values()} <= set(
        oss_server.objects(OSS_BUCKET)
    )
    oss_server.clear_faults()
    again = run_cli("--config", str(setup.path), "retention", env=OSS_ENV)
    assert again.returncode == 0, again.stderr
    assert len(list(setup.reports.glob("*.json"))) == 3


def test_retention_waits_for_no_run_it_refuses_while_the_job_runs(
    setup: Setup, oss_server: OssServer, run_cli: RunCli
) -> None:
    small_history(setup, oss_server, run_cli)
    before = listing(setup, oss_server)
    lock = setup.state / "locks" / "nightly.lock"
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = run_cli("--config", str(setup.path), "retention", env=OSS_ENV)
        dry = run_cli("--config", str(setup.path), "retention", "--dry-run", env=OSS_ENV)
    assert done.returncode == 75 and "already running" in done.stderr
    assert dry.returncode == 0 and "would delete 8" in dry.stdout
    assert listing(setup, oss_server) == before
    unknown = run_cli("--config", str(setup.path), "retention", "--job", "nope")
    assert unknown.returncode == 2 and "no job named 'nope'" in unknown.stderr


def test_retention_without_the_oss_credentials_says_so_and_changes_nothing(
    setup: Setup, oss_server: OssServer, run_cli: RunCli
) -> None:
    small_history(setup, oss_server, run_cli)
    before = listing(setup, oss_server)
    done = run_cli("--config", str(setup.path), "retention")  # TEST_OSS_* not set
    assert done.returncode == 1, done.stderr
    assert "retention of job 'nightly': " in done.stderr and "TEST_OSS_ID" in done.stderr
    assert "Traceback" not in done.stderr
    assert listing(setup, oss_server) == before
