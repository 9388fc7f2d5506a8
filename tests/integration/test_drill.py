"""`db-backup drill` end to end: real backups, a real throwaway cluster, real pg_restore.

The backup reports get per-table row counts (`tables`, `rowCounts: exact`) filled in by the test
from the source database before the drill; once exact counts are recorded at dump time by the
backup itself, the tests read them from the report as written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db_backup.config import load
from db_backup.daemon.drills import DrillScheduler
from db_backup.daemon.loop import Daemon
from db_backup.daemon.sd_notify import SdNotifier
from tests.conftest import CLI, RunCli, Setup
from tests.integration import test_restore
from tests.integration.test_restore import OSS_ENV, use_oss
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster

pytestmark = pytest.mark.integration
owned_db = test_restore.owned_db  # the fixture: a database owned by a role sorting after postgres


@pytest.fixture
def drill_dir() -> Iterator[Path]:
    """A drill directory the postgres user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="db-backup-drill-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def enable_drill(setup: Setup, drill_dir: Path, **extra: Any) -> None:
    setup.job()["drill"] = {"enabled": True, "directory": str(drill_dir), **extra}
    setup.write()


def record_counts(setup: Setup, cluster: Cluster) -> list[dict[str, Any]]:
    """Returns the reports, each SUCCESS one with the exact row counts its backup recorded."""
    reports = []
    for path in sorted(setup.reports.glob("*.json")):
        report = json.loads(path.read_text())
        if report["status"] == "SUCCESS":
            assert report["rowCounts"] == "exact" and report["tables"], report.get("rowCounts")
        reports.append(report)
    return reports


def backup_all(
    setup: Setup, run_cli: RunCli, cluster: Cluster, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    done = run_cli("--config", str(setup.path), "run", "nightly", env=env)
    assert done.returncode == 0, done.stderr
    return record_counts(setup, cluster)


def drill_reports(setup: Setup) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((setup.reports / "drills").glob("*.json"))]


DRILL_REPORT_KEYS = [
    "schemaVersion", "kind", "id", "job", "database", "status", "errorMessage", "startedAt",
    "finishedAt", "durationSeconds", "restoreSeconds", "trigger", "hostname", "backupReportId",
    "backupReport", "backupStartedAt", "source", "sha256", "target", "rowCounts",
    "tablesChecked", "mismatches", "checks",
]  # fmt: skip


def assert_drill_report_shape(setup: Setup, report: dict[str, Any]) -> None:
    """Pins the drill report's JSON: its keys in order, their types, and the file's bytes."""
    assert list(report) == DRILL_REPORT_KEYS
    assert report["schemaVersion"] == 1 and report["kind"] == "drill"
    assert list(report["target"]) == ["kind", "database", "serverVersion"]
    for name in ("durationSeconds", "restoreSeconds"):
        assert isinstance(report[name], float), (name, report[name])
    assert isinstance(report["tablesChecked"], int) and not isinstance(
        report["tablesChecked"], bool
    )
    for mismatch in report["mismatches"]:
        assert list(mismatch) == ["table", "expected", "actual"]
    for check in report["checks"]:
        keys = ["name", "database", "passed"] + (["error"] if not check["passed"] else [])
        assert list(check) == keys
    [path] = [
        p
        for p in (setup.reports / "drills").glob("*.json")
        if json.loads(p.read_text())["id"] == report["id"]
    ]
    backup = report["backupReport"][: -len(".json")] if report["backupReport"] else "none"
    stamp = datetime.fromisoformat(report["startedAt"]).strftime("%Y%m%dT%H%M%SZ")
    assert path.name == f"{backup}.drill-{stamp}.json"
    expected = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    assert path.read_text(encoding="utf-8") == expected


def postgres_processes_under(path: Path) -> list[int]:
    """Returns the pids of processes whose command line mentions `path`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(path).encode() in cmdline:
                found.append(int(entry.name))
    return found


def assert_nothing_left(drill_dir: Path) -> None:
    assert not (drill_dir / "nightly").exists(), list(drill_dir.rglob("*"))[:10]
    assert postgres_processes_under(drill_dir) == []


def test_drill_restores_roles_and_tables_and_writes_a_passing_report(
    setup: Setup, cluster: Cluster, run_cli: RunCli, owned_db: str, drill_dir: Path
) -> None:
    setup.job()["databases"] = ["shop", owned_db]
    enable_drill(
        setup,
        drill_dir,
        checks=[
            {"name": "orders exist", "database": "shop", "sql": "SELECT count(*) > 0 FROM orders"},
            {"name": "owner owns app", "sql": "SELECT true"},
        ],
    )
    backups = {r["database"]: r for r in backup_all(setup, run_cli, cluster)}
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 0, done.stderr
    reports = {r["database"]: r for r in drill_reports(setup)}
    assert set(reports) == {"shop", owned_db}
    for name, report in reports.items():
        assert report["status"] == "SUCCESS", report["errorMessage"]
        assert report["backupReportId"] == backups[name]["id"]
        assert report["tablesChecked"] == len(backups[name]["tables"]) > 0
        assert report["mismatches"] == [] and report["rowCounts"] == "exact"
        assert (
            report["restoreSeconds"] > 0 and report["durationSeconds"] >= report["restoreSeconds"]
        )
        assert report["target"]["kind"] == "cluster"
        assert (
            report["target"]["serverVersion"].split(".")[0]
            == backups[name]["serverVersion"].split(".")[0]
        )
        assert report["source"] == str(setup.data / backups[name]["artefacts"][0])
    assert [c["name"] for c in reports["shop"]["checks"]] == ["orders exist", "owner owns app"]
    assert all(c["passed"] for c in reports["shop"]["checks"])
    assert [c["name"] for c in reports[owned_db]["checks"]] == ["owner owns app"]
    for report in reports.values():
        assert_drill_report_shape(setup, report)
    assert '"drill finished"' in done.stderr
    assert_nothing_left(drill_dir)
    status = run_cli("--config", str(setup.path), "status")
    assert f"nightly/{owned_db}  SUCCESS" in status.stdout
    as_json = json.loads(run_cli("--config", str(setup.path), "status", "--json").stdout)
    assert {d["database"] for d in as_json["drills"]} == {"shop", owned_db}


def test_drill_of_a_job_that_uploads_restores_the_oss_copy(
    setup: Setup, cluster: Cluster, run_cli: RunCli, oss_server: OssServer, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    use_oss(setup, oss_server, "both")
    enable_drill(setup, drill_dir)
    [backup] = backup_all(setup, run_cli, cluster, env=OSS_ENV)
    oss_server.clear_log()
    done = run_cli("--config", str(setup.path), "drill", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = drill_reports(setup)
    assert report["status"] == "SUCCESS" and report["source"].startswith("oss://")
    assert report["sha256"] == backup["local"]["checksumSha256"]
    assert [r for r in oss_server.requests_for("GetObject") if r["key"].endswith(".dump")]
    assert_nothing_left(drill_dir)


def test_tampered_dump_fails_the_drill_loudly(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    enable_drill(setup, drill_dir)
    [backup] = backup_all(setup, run_cli, cluster)
    dump = setup.data / backup["artefacts"][0]
    data = bytearray(dump.read_bytes())
    data[-100] ^= 0x01
    dump.write_bytes(bytes(data))
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 1
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED" and "checksum mismatch" in report["errorMessage"]
    assert report["sha256"] == "" and report["source"] == str(dump)
    assert report["target"]["database"] == "crm" and report["restoreSeconds"] == 0.0
    assert_drill_report_shape(setup, report)
    assert any(
        '"drill finished"' in line and '"error"' in line for line in done.stderr.splitlines()
    )
    assert_nothing_left(drill_dir)


def test_row_count_that_differs_from_the_report_fails_the_drill(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    enable_drill(setup, drill_dir)
    [backup] = backup_all(setup, run_cli, cluster)
    path = next(setup.reports.glob("*.json"))
    backup["tables"]["public.orders"] += 1
    path.write_text(json.dumps(backup))
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 1
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED"
    expected = backup["tables"]["public.orders"]
    assert report["mismatches"] == [
        {"table": "public.orders", "expected": expected, "actual": expected - 1}
    ]
    assert_drill_report_shape(setup, report)


def test_user_check_returning_false_fails_the_drill(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    enable_drill(
        setup,
        drill_dir,
        checks=[
            {"name": "no customers at all", "sql": "SELECT count(*) = 0 FROM customers"},
            {"name": "broken query", "sql": "SELECT * FROM no_such_table"},
        ],
    )
    backup_all(setup, run_cli, cluster)
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 1
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED" and report["mismatches"] == []
    assert "no customers at all" in report["errorMessage"]
    first, second = report["checks"]
    assert first["passed"] is False and "'f'" in first["error"]
    assert second["passed"] is False and "no_such_table" in second["error"]
    assert_drill_report_shape(setup, report)


def test_drill_is_refused_while_the_job_holds_its_lock(
    setup: Setup, run_cli: RunCli, drill_dir: Path
) -> None:
    enable_drill(setup, drill_dir)
    lock = setup.state / "locks" / "nightly.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as handle:
        handle.write("4242\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 75 and "already running" in done.stderr
    assert not (setup.reports / "drills").exists()


def test_drill_without_a_successful_backup_writes_a_failed_report(
    setup: Setup, run_cli: RunCli, drill_dir: Path
) -> None:
    enable_drill(setup, drill_dir)
    done = run_cli("--config", str(setup.path), "drill", "nightly")
    assert done.returncode == 1
    [report] = drill_reports(setup)
    assert report["status"] == "FAILED" and "no successful backup" in report["errorMessage"]
    assert report["database"] == "*" and report["finishedAt"] == report["startedAt"]
    assert report["backupReport"] == "" and report["target"]["database"] == ""
    assert report["durationSeconds"] == 0.0 and report["rowCounts"] == "none"
    assert_drill_report_shape(setup, report)


def cmdline(pid: int) -> bytes:
    """Returns a process's command line; empty when it has exited meanwhile."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def test_drill_killed_mid_restore_leaves_nothing_after_the_next_run(
    setup: Setup, cluster: Cluster, run_cli: RunCli, slow_db: str, drill_dir: Path
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["dump"] = {"compression": 1}
    enable_drill(setup, drill_dir, jobs=1)
    backup_all(setup, run_cli, cluster)
    env = {**os.environ, "DB_BACKUP_LOG_FORMAT": "json"}
    drill = subprocess.Popen(
        [CLI, "--config", str(setup.path), "drill", "nightly"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    restoring: list[int] = []
    while time.monotonic() < deadline and not restoring:
        restoring = [
            pid
            for pid in postgres_processes_under(drill_dir / "nightly" / "cluster" / "sock")
            if b"pg_restore" in cmdline(pid)
        ]
        time.sleep(0.02)
    assert restoring, "the drill never reached pg_restore"
    drill.send_signal(signal.SIGKILL)
    drill.wait()
    assert (drill_dir / "nightly" / "cluster" / "data" / "postmaster.pid").exists()
    assert postgres_processes_under(drill_dir), "the killed drill's server should still run"
    again = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert again.returncode == 0, again.stderr
    assert "removed what an interrupted drill left" in again.stderr
    assert_nothing_left(drill_dir)
    [report] = drill_reports(setup)
    assert report["status"] == "SUCCESS" and report["tablesChecked"] == 1


def test_killed_drill_into_a_scratch_database_is_cleaned_up_by_the_next_run(
    setup: Setup, cluster: Cluster, run_cli: RunCli, slow_db: str, drill_dir: Path
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["dump"] = {"compression": 1}
    server = {"host": str(cluster.socket_dir), "port": cluster.port, "user": "postgres"}
    enable_drill(setup, drill_dir, target="server", server=server, globals=False, jobs=1)
    backup_all(setup, run_cli, cluster)
    drill = subprocess.Popen(
        [CLI, "--config", str(setup.path), "drill", "nightly"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    scratch = "db_backup_drill_nightly_1"
    # Kill it while pg_restore writes into the scratch database (a restore of `bulk` takes about
    # a second on an idle machine: wait for the process itself, not for a time).
    deadline = time.monotonic() + 120
    restoring: list[int] = []
    while time.monotonic() < deadline and not restoring:
        restoring = [
            pid for pid in postgres_processes_under(Path(scratch)) if b"pg_restore" in cmdline(pid)
        ]
        time.sleep(0.02)
    assert restoring, "the drill never reached pg_restore"
    drill.send_signal(signal.SIGKILL)
    drill.wait()
    assert scratch in cluster.psql("SELECT datname FROM pg_database").split("\n")
    again = run_cli("--config", str(setup.path), "drill", "nightly", timeout=600)
    assert again.returncode == 0, again.stderr
    assert "removed what an interrupted drill left" in again.stderr
    assert not [
        d
        for d in cluster.psql("SELECT datname FROM pg_database").split("\n")
        if d.startswith("db_backup_drill_")
    ]
    [report] = drill_reports(setup)
    assert report["status"] == "SUCCESS" and report["target"]["kind"] == "server"


def test_daemon_scheduler_runs_a_due_drill_and_not_beside_a_backup(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    enable_drill(setup, drill_dir, schedule="* * * * *")
    backup_all(setup, run_cli, cluster)
    config = load(str(setup.path))
    scheduler = DrillScheduler()
    now = datetime.now(UTC)
    scheduler.schedule(config, now)
    due = scheduler.next_due()
    assert due is not None and now < due <= now + timedelta(minutes=1)
    scheduler.tick(config, due, running_jobs={"nightly"})  # the backup runs: no drill
    assert scheduler.busy() == set() and not (setup.reports / "drills").exists()
    scheduler.tick(config, due, running_jobs=set())
    assert scheduler.busy() == {"nightly"}
    for thread in scheduler.threads.values():
        thread.join(timeout=300)
    [report] = drill_reports(setup)
    assert report["status"] == "SUCCESS" and report["trigger"] == "schedule"
    after = scheduler.next_due()
    assert after is not None and after > due


def test_daemon_runs_scheduled_drills_but_never_beside_a_backup_of_the_job(
    setup: Setup, cluster: Cluster, run_cli: RunCli, drill_dir: Path
) -> None:
    setup.job()["databases"] = "crm"
    setup.job()["catch_up"] = False
    enable_drill(setup, drill_dir, schedule="* * * * *")
    backup_all(setup, run_cli, cluster)
    config = load(str(setup.path))
    daemon = Daemon(str(setup.path), config, SdNotifier({}))
    daemon.start()
    due = daemon.drills.next_due()
    assert due is not None
    daemon.due["nightly"] = due  # the backup falls due at the same moment: it goes first
    daemon.tick(due)
    assert "nightly" in daemon.running and daemon.drills.busy() == set()
    thread = daemon.running["nightly"].thread
    assert thread is not None
    thread.join(timeout=120)
    daemon.tick(due + timedelta(seconds=1))  # the backup is over: now the drill starts
    assert daemon.drills.busy() == {"nightly"} and "nightly" not in daemon.running
    daemon.due["nightly"] = due  # a backup due while the drill runs waits for it
    daemon.tick(due + timedelta(seconds=2))
    assert "nightly" not in daemon.running
    for drill_thread in daemon.drills.threads.values():
        drill_thread.join(timeout=300)
    [report] = drill_reports(setup)
    newest = max(setup.reports_json(), key=lambda r: r["startedAt"])
    assert report["status"] == "SUCCESS" and report["backupReportId"] == newest["id"]
    daemon.tick(due + timedelta(seconds=3))
    assert "nightly" in daemon.running
    daemon._stop_signal = "SIGTERM"
    assert daemon.shutdown() == 0
