"""Capacity against a real PostgreSQL, real small file systems and the loopback OSS server.

A dump the file system cannot hold is refused before pg_dump starts; dumps running at the same
time reserve their room; low free space and the bucket's usage are alerts; a suspiciously small
backup keeps retention from deleting the old ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db_backup.backup.run import RunResult, run_job
from db_backup.config import Config, load
from db_backup.observe import events
from db_backup.storage.oss import OssTarget
from tests.conftest import Setup
from tests.support.files import replace_json
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
    target_settings,
)
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, locked_table, wait_for_lock_wait
from tests.support.procs import start_run, wait_for_pg_dump

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mounts a tmpfs of `size` on `path` for the block: a small file system of the test's own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[events.Event]:
    """Every event the run publishes, in order (the seam itself, recorded)."""
    found: list[events.Event] = []
    monkeypatch.setattr(events, "publish", lambda config, event: found.append(event))
    return found


def run(setup: Setup, job: str = "nightly") -> RunResult:
    """Writes the setup's config and runs `job` in this process, as the daemon does."""
    config: Config = load(str(setup.write()))
    return run_job(config, config.job(job))


def by_database(result: RunResult) -> dict[str, dict[str, Any]]:
    return {report["database"]: report for report in result.reports}


def database_size(cluster: Cluster, database: str) -> int:
    return int(cluster.psql(f"SELECT pg_database_size('{database}')"))


def files_of(directory: Path, database: str) -> list[str]:
    """Returns every file under `directory` (temporaries included) that belongs to `database`."""
    return sorted(str(p) for p in directory.rglob("*") if p.is_file() and f"{database}_" in p.name)


def test_first_dump_too_big_for_the_small_file_system_is_refused_and_the_next_database_runs(
    setup: Setup, cluster: Cluster, slow_db: str, tmp_path: Path, published: list[events.Event]
) -> None:
    with tmpfs(tmp_path / "small", "16m") as small:
        setup.document["directories"]["data"] = str(small)
        setup.job()["databases"] = [slow_db, "crm"]
        result = run(setup)
        reports = by_database(result)
        refused = reports[slow_db]
        assert refused["status"] == "FAILED"
        message = refused["errorMessage"]
        space = refused["capacity"]["space"]
        assert space["directory"] == str(small)
        assert space["estimateSource"] == "pg_database_size"
        # The first run's estimate is the database's size, said to be an upper bound.
        size = database_size(cluster, slow_db)
        assert abs(space["estimateBytes"] - size) <= size // 100
        assert space["neededBytes"] == space["estimateBytes"] * 120 // 100
        assert space["freeBytes"] <= 16 * MIB < space["neededBytes"]
        assert message.startswith(f"not enough free space in {small} for the dump of {slow_db}")
        assert f"({space['neededBytes']} bytes)" in message
        assert f"({space['freeBytes']} bytes) are free" in message
        assert "pg_database_size" in message and "upper bound" in message
        assert "the dump was not started" in message
        assert files_of(small, slow_db) == [], "no partial file of the refused dump"
        assert refused["local"]["file"] == "" and refused["remote"]["urls"] == []
        # The next database of the same run is not affected.
        assert reports["crm"]["status"] == "SUCCESS"
        assert Path(reports["crm"]["local"]["file"]).parent == small
    failed = [e for e in published if e.kind == events.BACKUP and not e.ok]
    assert [e.database for e in failed] == [slow_db]
    assert failed[0].message == message


def test_later_dumps_are_estimated_from_the_last_backups_and_refused_by_the_margin(
    setup: Setup, tmp_path: Path, published: list[events.Event]
) -> None:
    with tmpfs(tmp_path / "small", "16m") as small:
        setup.document["directories"]["data"] = str(small)
        setup.job()["databases"] = "crm"
        first = by_database(run(setup))["crm"]
        assert first["status"] == "SUCCESS"
        assert first["capacity"]["space"]["estimateSource"] == "pg_database_size"
        second = by_database(run(setup))["crm"]
        assert second["status"] == "SUCCESS"
        space = second["capacity"]["space"]
        assert space["estimateSource"] == "history"
        assert space["estimateBytes"] == first["local"]["sizeBytes"]
        # A margin of at least 16 MiB does not fit a 16 MiB file system, whatever crm's size.
        setup.job()["capacity"] = {"margin_min": "16MB"}
        third = by_database(run(setup))["crm"]
        assert third["status"] == "FAILED"
        estimate = max(first["local"]["sizeBytes"], second["local"]["sizeBytes"])
        assert third["capacity"]["space"]["estimateBytes"] == estimate
        assert third["capacity"]["space"]["neededBytes"] == estimate + 16 * MIB
        assert "from the largest of the last 2 successful backups" in third["errorMessage"]
        assert str(small) in third["errorMessage"]
        # Turned off for the job, the same run goes ahead.
        setup.job()["capacity"] = {"margin_min": "16MB", "check_space": False}
        assert by_database(run(setup))["crm"]["status"] == "SUCCESS"


def test_a_running_dump_of_another_job_reserves_its_room_on_the_same_file_system(
    setup: Setup, cluster: Cluster, tmp_path: Path, published: list[events.Event]
) -> None:
    with tmpfs(tmp_path / "small", "16m") as small:
        setup.document["directories"]["data"] = str(small)
        setup.job()["globals"] = False
        other = {**setup.job(), "name": "other", "databases": "crm"}
        setup.document["jobs"].append(other)
        setup.write()
        # Alone, each dump fits (about 8 MiB + 20% each on 16 MiB); together they do not.
        proc = None
        try:
            with locked_table(cluster, "shop", "customers"):
                proc = start_run(setup, "nightly")
                wait_for_pg_dump(proc.pid)
                wait_for_lock_wait(cluster, "db-backup/nightly")
                reserved = list((setup.state / "capacity" / "reservations").glob("*.json"))
                assert len(reserved) == 1
                refused = by_database(run(setup, "other"))["crm"]
        finally:
            if proc is not None:  # the lock is gone: the stalled dump finishes
                _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert refused["status"] == "FAILED"
        space = refused["capacity"]["space"]
        assert space["reservedBytes"] > 0
        assert space["neededBytes"] <= space["freeBytes"], "alone it would have fitted"
        assert space["neededBytes"] > space["freeBytes"] - space["reservedBytes"]
        assert "reserved by dumps running on the same file system" in refused["errorMessage"]
        # The finished run gave its room back: the same dump now goes ahead.
        assert list((setup.state / "capacity" / "reservations").glob("*.json")) == []
        assert by_database(run(setup, "other"))["crm"]["status"] == "SUCCESS"


def test_low_free_space_after_a_run_is_an_alert_until_it_clears(
    setup: Setup, tmp_path: Path, published: list[events.Event]
) -> None:
    with tmpfs(tmp_path / "small", "16m") as small:
        setup.document["directories"]["data"] = str(small)
        setup.job()["databases"] = "crm"
        # Whatever the dump's size, a 16 MiB file system has less than 16 MiB free after it.
        setup.document["capacity"] = {"warn_free_percent": 0, "warn_free_size": "16MB"}
        assert run(setup).ok
        low = [e for e in published if e.kind == events.LOW_DISK]
        assert len(low) == 1 and low[0].ok is False and low[0].job == "nightly"
        assert low[0].details["directory"] == str(small)
        assert low[0].details["freeBytes"] < 16 * MIB
        assert low[0].message.startswith(f"low disk space in {small}: ")
        published.clear()
        setup.document["capacity"] = {"warn_free_percent": 0, "warn_free_size": "1MB"}
        assert run(setup).ok
        cleared = [e for e in published if e.kind == events.LOW_DISK]
        assert len(cleared) == 1 and cleared[0].ok is True
        assert cleared[0].details["directory"] == str(small)
        published.clear()
        assert run(setup).ok
        assert [e for e in published if e.kind == events.LOW_DISK] == []


def _use_oss(setup: Setup, server: OssServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OSS_ID", OSS_ACCESS_KEY_ID)
    monkeypatch.setenv("TEST_OSS_SECRET", OSS_ACCESS_KEY_SECRET)
    setup.document["storage"] = {
        "mode": "oss",
        "oss": {
            "endpoint": server.endpoint,
            "bucket": OSS_BUCKET,
            "region": OSS_REGION,
            "access_key_id": {"env": "TEST_OSS_ID"},
            "access_key_secret": {"env": "TEST_OSS_SECRET"},
            "retries": 1,
            "connect_timeout_seconds": 3,
            "read_timeout_seconds": 10,
        },
    }


def test_get_bucket_stat_counts_objects_and_open_uploads_on_the_loopback_server(
    oss_server: OssServer,
) -> None:
    target = OssTarget(target_settings(oss_server, signature_version="v1"))
    assert target.bucket_stat().storage_bytes == 0
    target.bucket.put_object("postgres/backups/a", b"x" * 1000)
    target.bucket.put_object("elsewhere/b", b"y" * 24)
    target.bucket.init_multipart_upload("postgres/backups/c")
    stat = OssTarget(target_settings(oss_server)).bucket_stat()  # V4 signed
    assert (stat.storage_bytes, stat.object_count, stat.multipart_upload_count) == (1024, 2, 1)
    assert oss_server.requests_for("GetBucketStat")


def test_oss_usage_over_the_limit_is_an_alert_and_its_clearing_one_more(
    setup: Setup,
    oss_server: OssServer,
    monkeypatch: pytest.MonkeyPatch,
    published: list[events.Event],
) -> None:
    _use_oss(setup, oss_server, monkeypatch)
    setup.document["capacity"] = {"oss_usage_limit": "1KB"}
    result = run(setup)
    assert result.ok
    used = sum(obj.size for obj in oss_server.objects(OSS_BUCKET).values())
    assert used > 1024
    [over] = [e for e in published if e.kind == events.OSS_USAGE]
    assert over.ok is False and over.details["level"] == "over"
    assert over.details["usedBytes"] == used and over.details["limitBytes"] == 1024
    assert over.message.startswith(f"OSS bucket {OSS_BUCKET} uses ")
    published.clear()
    # Under the limit but over the warning percentage: still raised, level warning.
    setup.document["capacity"] = {"oss_usage_limit": used * 4, "oss_usage_warn_percent": 10}
    assert run(setup).ok
    [warning] = [e for e in published if e.kind == events.OSS_USAGE]
    assert warning.ok is False and warning.details["level"] == "warning"
    published.clear()
    setup.document["capacity"] = {"oss_usage_limit": "1GB"}
    assert run(setup).ok
    [cleared] = [e for e in published if e.kind == events.OSS_USAGE]
    assert cleared.ok is True and cleared.details["level"] == "ok"
    published.clear()
    assert run(setup).ok
    assert [e for e in published if e.kind == events.OSS_USAGE] == []


def test_a_failing_get_bucket_stat_is_logged_and_never_fails_the_backup(
    setup: Setup,
    oss_server: OssServer,
    monkeypatch: pytest.MonkeyPatch,
    published: list[events.Event],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _use_oss(setup, oss_server, monkeypatch)
    setup.document["capacity"] = {"oss_usage_limit": "1KB"}
    oss_server.fail_request(403, operation="GetBucketStat", code="AccessDenied")
    result = run(setup)
    assert result.ok, result.reports
    assert [e for e in published if e.kind == events.OSS_USAGE] == []
    assert oss_server.requests_for("GetBucketStat")
    out = capsys.readouterr()
    assert "OSS usage not checked: GetBucketStat failed" in out.out + out.err
    assert OSS_ACCESS_KEY_SECRET not in out.out + out.err


def test_a_directory_dump_to_oss_is_checked_against_its_staging_directory(
    setup: Setup,
    slow_db: str,
    oss_server: OssServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    published: list[events.Event],
) -> None:
    _use_oss(setup, oss_server, monkeypatch)
    setup.job()["dump"] = {"format": "directory", "jobs": 2}
    setup.job()["databases"] = [slow_db, "crm"]
    with tmpfs(tmp_path / "small-state", "16m") as small:
        setup.document["directories"]["state"] = str(small)
        reports = by_database(run(setup))
        staging = small / "staging" / "nightly"
        assert reports[slow_db]["status"] == "FAILED"
        assert reports[slow_db]["capacity"]["space"]["directory"] == str(staging)
        assert reports[slow_db]["errorMessage"].startswith(f"not enough free space in {staging} ")
        stored = [k for k in oss_server.objects(OSS_BUCKET) if f"/{slow_db}_" in k]
        assert [k.rsplit(".", 1)[-1] for k in stored] == ["json"], "only its FAILED report"
        assert reports["crm"]["status"] == "SUCCESS", reports["crm"]["errorMessage"]
        assert reports["crm"]["capacity"]["space"]["directory"] == str(staging)


def _age(path: Path, days: int) -> None:
    document = json.loads(path.read_text())
    old = datetime.now(UTC) - timedelta(days=days)
    document["startedAt"] = old.strftime("%Y-%m-%dT%H:%M:%SZ")
    replace_json(path, document)


def test_a_suspiciously_small_backup_keeps_the_old_ones_and_marks_its_report(
    setup: Setup, cluster: Cluster, published: list[events.Event]
) -> None:
    name = "shrinking"
    cluster.psql(f"DROP DATABASE IF EXISTS {name}")
    cluster.psql(f"CREATE DATABASE {name}")
    try:
        cluster.psql(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS a FROM generate_series(1, 20000) i", name
        )
        setup.job()["databases"] = name
        setup.job()["globals"] = False
        setup.job()["retention"] = {"days": 1, "keep_last": 1}
        first = by_database(run(setup))[name]
        assert first["status"] == "SUCCESS"
        first_report = setup.reports / f"{Path(first['local']['file']).name[:-5]}.json"
        _age(first_report, 10)  # without the guard, keep_last 1 would let it go now
        cluster.psql("DELETE FROM t WHERE i > 100", name)
        result = run(setup)
        small = by_database(result)[name]
        assert small["status"] == "SUCCESS", "a suspicious backup is still a backup"
        assert small["local"]["sizeBytes"] < first["local"]["sizeBytes"] // 2
        assert Path(first["local"]["file"]).exists() and first_report.exists()
        assert small["retention"]["deleted"] == []
        assert small["retention"]["held"].startswith("the newest backup is suspiciously small: ")
        suspicious = small["capacity"]["suspicious"]
        assert suspicious["sizeBytes"] == small["local"]["sizeBytes"]
        assert suspicious["previousSizeBytes"] == first["local"]["sizeBytes"]
        assert suspicious["previousReport"] == first["id"] and suspicious["threshold"] == 0.5
        on_disk = json.loads(result.report_paths[0].read_text())
        assert on_disk["retention"]["held"] == small["retention"]["held"]
        [raised] = [e for e in published if e.kind == events.SUSPICIOUS_SIZE]
        assert raised.ok is False and raised.database == name
        assert raised.report_path == result.report_paths[0]
        published.clear()
        # The next backup of about the same size is normal again: retention runs, and says so.
        again = by_database(run(setup))[name]
        assert again["retention"]["held"] == "" and again["capacity"].get("suspicious") is None
        assert not Path(first["local"]["file"]).exists() and not first_report.exists()
        [cleared] = [e for e in published if e.kind == events.SUSPICIOUS_SIZE]
        assert cleared.ok is True
    finally:
        cluster.psql(f"DROP DATABASE IF EXISTS {name}")
