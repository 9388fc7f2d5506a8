"""The database sink against a real PostgreSQL: migrations, upserts, the outbox, backfill and
the fleet view, through the installed `db-backup` command where a user would use it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
import yaml

import db_backup
from db_backup.config import Config, loads
from db_backup.observe import events
from db_backup.observe.jobtable.migrate import V2_COLUMNS, migrate, schema_ready
from db_backup.observe.jobtable.outbox import OUTBOX_DIR, REJECTED_DIR, Outbox, flush
from db_backup.observe.jobtable.rows import BACKUP, Entry, send
from db_backup.observe.jobtable.sender import consumer as sink_consumer
from db_backup.observe.jobtable.settings import SinkError
from db_backup.observe.jobtable.settings import connect as sink_connect
from db_backup.reports.model import REPORT_NAMESPACE, Report, TargetResult, stem
from tests.conftest import BACKUP_PASSWORD, RunCli, Setup
from tests.support.pgcluster import Cluster, free_port

pytestmark = pytest.mark.integration

SQL_DIR = Path(db_backup.__file__).parent / "sql"
V1 = (SQL_DIR / "V1__create_db_backup_job.sql").read_text()
V2 = (SQL_DIR / "V2__multi_host_and_drills.sql").read_text()
DSN_ENV = "DB_BACKUP_TEST_SINK_DSN"


@pytest.fixture
def platform(cluster: Cluster) -> Iterator[str]:
    """A fresh, empty database standing for the platform's; yields its name."""
    name = f"platform_{uuid.uuid4().hex[:10]}"
    cluster.psql(f'CREATE DATABASE "{name}"')
    yield name
    cluster.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tcp_dsn(cluster: Cluster, database: str, port: int | None = None) -> str:
    """Returns a password DSN over TCP (scram-sha-256), as a platform database would need."""
    return (
        f"host=127.0.0.1 port={port or cluster.port} dbname={database} user=backup "
        f"password={BACKUP_PASSWORD}"
    )


def connect(cluster: Cluster, database: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=str(cluster.socket_dir), port=cluster.port, user="postgres", dbname=database,
        autocommit=True,
    )  # fmt: skip


def rows(cluster: Cluster, database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connect(cluster, database) as conn:
        return conn.execute(sql, params).fetchall()


def with_sink(setup: Setup, **sink_options: Any) -> Config:
    """Adds a `sink:` section (DSN from the environment) to the setup's config; returns it."""
    setup.document["sink"] = {"dsn": {"env": DSN_ENV}, **sink_options}
    setup.write()
    return loads(setup.path.read_text(), str(setup.path))


def make_report(
    job: str = "nightly",
    database: str = "shop",
    started: datetime | None = None,
    hostname: str = "db1",
    status: str = "SUCCESS",
    size: int = 1000,
) -> Report:
    started = started or datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    name = stem(database, started, hostname)
    report = Report(
        job=job,
        database=database,
        host="/var/run/postgresql",
        port=5432,
        mode="local",
        tool="pg_dump",
        stem=name,
        started=started,
        finished=started + timedelta(seconds=42),
        status=status,
        error_message="" if status == "SUCCESS" else "pg_dump: connection refused",
        sha256="ab" * 32 if status == "SUCCESS" else "",
        size_bytes=size,
        hostname=hostname,
        trigger="schedule",
    )
    if status == "SUCCESS":
        kept_locally(report)
    return report


def kept_locally(report: Report) -> None:
    """Records the dump as the local target holding it, as a run does."""
    name = f"{report.stem}.dump"
    report.stored["local"] = [name]
    report.targets["local"] = TargetResult("SUCCESS", location=f"/var/backups/postgres/{name}")


def write_reports(directory: Path, reports: list[Report]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for report in reports:
        (directory / f"{report.stem}.json").write_text(json.dumps(report.to_json()))


def drill_document(backup: Report, status: str = "SUCCESS") -> dict[str, Any]:
    started = backup.started + timedelta(hours=2)
    return {
        "schemaVersion": 1,
        "kind": "drill",
        "id": str(uuid.uuid5(REPORT_NAMESPACE, f"drill/{backup.job}/{backup.stem}")),
        "job": backup.job,
        "database": backup.database,
        "status": status,
        "errorMessage": "" if status == "SUCCESS" else "2 table(s) with other row counts",
        "startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finishedAt": (started + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "durationSeconds": 30.5,
        "restoreSeconds": 20.25,
        "hostname": backup.hostname,
        "backupReportId": backup.id,
        "backupReport": f"{backup.stem}.json",
        "tablesChecked": 4,
        "mismatches": [] if status == "SUCCESS" else [{"table": "a"}, {"table": "b"}],
        "checks": [],
    }


def backup_event(report: Report, path: Path | None = None) -> events.Event:
    document = report.to_json()
    return events.Event(
        kind=events.BACKUP,
        job=report.job,
        database=report.database,
        ok=report.status == "SUCCESS",
        message=document["errorMessage"],
        report=document,
        report_path=path or Path(f"/reports/{report.stem}.json"),
    )


def columns(cluster: Cluster, database: str, table: str) -> set[str]:
    found = rows(
        cluster,
        database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
        table,
    )
    return {name for (name,) in found}


# --------------------------------------------------------------------------- migrations


def test_v1_then_v2_on_an_empty_database_twice_give_the_multi_host_tables(
    cluster: Cluster, platform: str
) -> None:
    for _ in range(2):  # idempotent: Flyway's repair, a second host, a rerun
        cluster.psql(V1, platform)
        cluster.psql(V2, platform)
    assert {"id", "started_at", "status", "deleted"} <= columns(cluster, platform, "db_backup_job")
    assert set(V2_COLUMNS) <= columns(cluster, platform, "db_backup_job")
    assert {"id", "backup_id", "hostname", "report"} <= columns(
        cluster, platform, "db_backup_drill"
    )
    indexes = {n for (n,) in rows(cluster, platform, "SELECT indexname FROM pg_indexes")}
    assert {"db_backup_job_fleet_idx", "db_backup_drill_fleet_idx"} <= indexes


def test_v2_on_a_filled_v1_table_keeps_every_row_and_the_sink_then_updates_them(
    cluster: Cluster, platform: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.psql(V1, platform)
    old = make_report(hostname="db1")
    cluster.psql(
        "INSERT INTO db_backup_job (id, started_at, finished_at, duration_sec, database, mode, "
        f"status, size_bytes) VALUES ('{old.id}', '2026-11-20T02:00:00Z', "
        "'2026-11-20T02:00:42Z', 42, 'shop', 'local', 'SUCCESS', 1000), "
        "('00000000-0000-0000-0000-000000000001', '2026-11-19T02:00:00Z', "
        "'2026-11-19T02:00:42Z', 42, 'crm', 'oss', 'FAILED', NULL)",
        platform,
    )
    cluster.psql(V2, platform)
    cluster.psql(V2, platform)
    assert rows(
        cluster, platform, "SELECT count(*), min(job), min(hostname) FROM db_backup_job"
    ) == [(2, "", "")]
    # db-backup's own migration step (advisory lock, every file again) is harmless too.
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform))
    config = with_sink(setup)
    settings = config.sink
    assert settings is not None
    conn, _ = sink_connect(settings)
    with conn:
        assert schema_ready(conn)
        assert migrate(conn) == [
            "V1__create_db_backup_job.sql",
            "V2__multi_host_and_drills.sql",
        ]
        assert send(conn, [Entry(BACKUP, f"{old.stem}.json", old.to_json())]) == []
    got = rows(cluster, platform, "SELECT count(*) FROM db_backup_job")
    assert got == [(2,)]
    assert rows(
        cluster,
        platform,
        "SELECT job, hostname, report->>'id' FROM db_backup_job WHERE id = %s",
        old.id,
    ) == [("nightly", "db1", old.id)]


# --------------------------------------------------------------------------- upsert


def test_sending_a_report_again_updates_its_row_and_never_duplicates(
    cluster: Cluster, platform: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform))
    config = with_sink(setup)  # migrate: true (default) on an empty database
    consumer = sink_consumer(config)
    assert consumer is not None
    report = make_report(status="FAILED")
    consumer.handle(backup_event(report))
    consumer.close(60)
    first = rows(cluster, platform, "SELECT status, error_msg, update_time FROM db_backup_job")
    assert [(s, e) for s, e, _ in first] == [("FAILED", "pg_dump: connection refused")]

    report.status, report.error_message, report.size_bytes = "SUCCESS", "", 2048  # a rewrite
    kept_locally(report)
    consumer = sink_consumer(config)
    assert consumer is not None
    consumer.handle(backup_event(report))
    drill = drill_document(report, status="FAILED")
    consumer.handle(
        events.Event(kind=events.DRILL, job="nightly", database="shop", ok=False, report=drill)
    )
    consumer.close(60)
    (row,) = rows(
        cluster,
        platform,
        "SELECT id, status, error_msg, size_bytes, local_file, job, hostname, host, port, tool, "
        "trigger, report_file, schema_version, report, remote_urls, update_time > create_time "
        "FROM db_backup_job",
    )
    assert row == (
        report.id, "SUCCESS", None, 2048, report.local_file, "nightly", "db1",
        "/var/run/postgresql", "5432", "pg_dump", "schedule", f"{report.stem}.json", 1,
        report.to_json() | {"finishedAt": row[13]["finishedAt"]}, "[]", True,
    )  # fmt: skip
    assert rows(
        cluster,
        platform,
        "SELECT backup_id, status, tables_checked, mismatches, restore_sec FROM db_backup_drill",
    ) == [(report.id, "FAILED", 4, 2, 20.25)]
    assert list(consumer.outbox.pending()) == []


def test_a_real_backup_run_puts_its_report_into_the_table(
    cluster: Cluster, platform: str, setup: Setup, run_cli: RunCli
) -> None:
    with_sink(setup)
    done = run_cli(
        "--config", str(setup.path), "run", "nightly", env={DSN_ENV: tcp_dsn(cluster, platform)}
    )
    assert done.returncode == 0, done.stderr
    (written,) = setup.reports_json()
    got = rows(
        cluster, platform, "SELECT id, job, database, status, size_bytes, report FROM db_backup_job"
    )
    assert got == [
        (written["id"], "nightly", "shop", "SUCCESS", written["local"]["sizeBytes"], written)
    ]
    assert not (setup.state / OUTBOX_DIR).exists() or not list(
        (setup.state / OUTBOX_DIR).glob("*.json")
    )


# --------------------------------------------------------------------------- the outbox


def test_reports_wait_in_the_outbox_while_the_sink_is_down_and_go_out_with_the_next_run(
    cluster: Cluster, platform: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed_port = free_port()  # nothing listens there
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform, port=closed_port))
    config = with_sink(setup, connect_timeout_seconds=2)
    first, second = make_report(database="shop"), make_report(database="crm")
    with structlog.testing.capture_logs() as logged:
        consumer = sink_consumer(config)
        assert consumer is not None
        consumer.handle(backup_event(first))
        consumer.close(60)
    assert [p.name for p in consumer.outbox.pending()] == [f"backup-{first.id}.json"]
    assert events.failure_counts(setup.state) == {"sink": 1}
    (down,) = [e for e in logged if e["event"].startswith("database sink down")]
    assert f"127.0.0.1:{closed_port}/{platform}" in down["error"]
    assert BACKUP_PASSWORD not in json.dumps(logged, default=str)

    # The sink is back: the next report takes the one left behind with it.
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform))
    consumer = sink_consumer(config)
    assert consumer is not None
    consumer.handle(backup_event(second))
    consumer.close(60)
    assert consumer.outbox.pending() == []
    assert sorted(rows(cluster, platform, "SELECT database FROM db_backup_job")) == [
        ("crm",),
        ("shop",),
    ]
    assert events.failure_counts(setup.state) == {"sink": 1}


def test_a_backup_run_succeeds_when_the_sink_is_down(
    cluster: Cluster, setup: Setup, run_cli: RunCli
) -> None:
    with_sink(setup, connect_timeout_seconds=2)
    dsn = tcp_dsn(cluster, "platform", port=free_port())
    done = run_cli("--config", str(setup.path), "run", "nightly", env={DSN_ENV: dsn})
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in setup.reports_json()] == ["SUCCESS"]
    waiting = list((setup.state / OUTBOX_DIR).glob("backup-*.json"))
    assert len(waiting) == 1
    assert "database sink down" in done.stderr and BACKUP_PASSWORD not in done.stderr


def test_a_malformed_outbox_file_is_moved_aside_and_the_rest_is_sent(
    cluster: Cluster, platform: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform))
    config = with_sink(setup)
    outbox = Outbox(setup.state)
    outbox.directory.mkdir(parents=True)
    broken = outbox.directory / f"backup-{uuid.uuid4()}.json"
    broken.write_text('{"kind": "backup", "report": {"database": 1}}')
    truncated = outbox.directory / f"backup-{uuid.uuid4()}.json"
    truncated.write_text('{"kind": "backup", "rep')
    consumer = sink_consumer(config)
    assert consumer is not None
    with structlog.testing.capture_logs() as logged:
        consumer.handle(backup_event(make_report()))
        consumer.close(60)
    assert outbox.pending() == []
    rejected = sorted(p.name for p in (outbox.directory / REJECTED_DIR).iterdir())
    assert rejected == sorted([broken.name, truncated.name])
    assert sum(e["event"].startswith("malformed sink outbox file") for e in logged) == 2
    assert rows(cluster, platform, "SELECT count(*) FROM db_backup_job") == [(1,)]


def test_outbox_names_come_from_the_report_id_never_from_its_content(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(setup.state)
    document = make_report().to_json() | {"id": "../../etc/passwd"}
    path = outbox.put(Entry(BACKUP, "../x.json", document))
    assert path.parent == outbox.directory
    assert uuid.UUID(path.name.removeprefix("backup-").removesuffix(".json"))


# --------------------------------------------------------------------------- sync-reports


def test_sync_reports_loads_hundreds_of_reports_once_and_skips_a_malformed_file(
    cluster: Cluster, platform: str, setup: Setup, run_cli: RunCli
) -> None:
    with_sink(setup, batch_size=400)
    start = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
    reports = [
        make_report(database=("shop", "crm")[i % 2], started=start + timedelta(hours=i))
        for i in range(1100)
    ]
    write_reports(setup.reports, reports)
    (setup.reports / "broken_20260101T020000Z_db1.json").write_text('{"database": "shop", ')
    drills = setup.reports / "drills"
    drills.mkdir()
    (drills / "a.drill.json").write_text(json.dumps(drill_document(reports[-1])))
    (drills / "bad.drill.json").write_text(json.dumps({"kind": "drill", "status": "MAYBE"}))
    env = {DSN_ENV: tcp_dsn(cluster, platform)}
    for _ in range(2):
        done = run_cli("--config", str(setup.path), "sync-reports", env=env)
        assert done.returncode == 0, done.stderr
        assert "broken_20260101T020000Z_db1.json: skipped, not readable JSON" in done.stderr
        assert "bad.drill.json: skipped" in done.stderr
        progress = [line for line in done.stderr.splitlines() if "report(s) sent" in line]
        assert progress[-1].endswith("1101/1101 report(s) sent") and len(progress) == 3
        assert "1101 report(s) loaded" in done.stdout and "2 file(s) skipped" in done.stdout
        assert rows(
            cluster, platform, "SELECT count(*), count(DISTINCT id) FROM db_backup_job"
        ) == [(1100, 1100)]
        assert rows(cluster, platform, "SELECT count(*) FROM db_backup_drill") == [(1,)]


def test_sync_reports_exits_non_zero_naming_the_server_but_never_the_password(
    cluster: Cluster, setup: Setup, run_cli: RunCli
) -> None:
    with_sink(setup, connect_timeout_seconds=2)
    write_reports(setup.reports, [make_report()])
    port = free_port()
    done = run_cli(
        "--config", str(setup.path), "sync-reports",
        env={DSN_ENV: f"postgresql://backup:{BACKUP_PASSWORD}@127.0.0.1:{port}/platform"},
    )  # fmt: skip
    assert done.returncode == 1
    assert f"database sink 127.0.0.1:{port}/platform: cannot connect" in done.stderr
    assert BACKUP_PASSWORD not in done.stderr + done.stdout


# --------------------------------------------------------------------------- status --from-db


def test_status_from_db_shows_the_newest_result_per_host_job_and_database(
    cluster: Cluster, platform: str, setup: Setup, run_cli: RunCli
) -> None:
    with_sink(setup)
    env = {DSN_ENV: tcp_dsn(cluster, platform)}
    day = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    # Two hosts sharing the platform's table, each syncing its own reports directory.
    for host, statuses in (("db1", ["SUCCESS", "FAILED"]), ("db2", ["FAILED", "SUCCESS"])):
        directory = setup.root / host
        reports = [
            make_report(
                database=db, started=day + timedelta(days=i, minutes=m), hostname=host, status=s
            )
            for i, s in enumerate(statuses)
            for m, db in enumerate(("shop", "crm"))
        ]
        write_reports(directory, reports)
        setup.document["directories"]["reports"] = str(directory)
        setup.write()
        done = run_cli("--config", str(setup.path), "sync-reports", env=env)
        assert done.returncode == 0, done.stderr

    def status(*options: str) -> dict[str, Any]:
        done = run_cli(
            "--config", str(setup.path), "status", "--from-db", "--json", *options, env=env
        )
        assert done.returncode == 0, done.stderr
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    fleet = status()
    assert fleet["total"] == 4
    newest = {
        (r["hostname"], r["database"]): (r["status"], r["startedAt"]) for r in fleet["reports"]
    }
    assert newest == {
        ("db1", "shop"): ("FAILED", "2026-11-21T02:00:00Z"),
        ("db1", "crm"): ("FAILED", "2026-11-21T02:01:00Z"),
        ("db2", "shop"): ("SUCCESS", "2026-11-21T02:00:00Z"),
        ("db2", "crm"): ("SUCCESS", "2026-11-21T02:01:00Z"),
    }
    assert status("--history")["total"] == 8
    assert {r["hostname"] for r in status("--status", "failed")["reports"]} == {"db1", "db2"}
    failed_latest = status("--status", "FAILED", "--database", "shop")["reports"]
    assert [(r["hostname"], r["startedAt"]) for r in failed_latest] == [
        ("db1", "2026-11-21T02:00:00Z"),
        ("db2", "2026-11-20T02:00:00Z"),
    ]
    assert status("--since", "2026-11-21T00:00:00Z", "--history")["total"] == 4
    assert status("--job", "other")["total"] == 0
    page2 = status("--limit", "3", "--page", "2")
    assert (page2["page"], page2["pages"], len(page2["reports"])) == (2, 2, 1)

    table = run_cli("--config", str(setup.path), "status", "--from-db", "--limit", "3", env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["STARTED", "(UTC)", "HOST", "JOB"]
    assert lines[1].split()[1:5] == ["db1", "nightly", "crm", "FAILED"]  # ties: by host
    assert lines[2].split()[1:5] == ["db2", "nightly", "crm", "SUCCESS"]
    assert lines[-1] == "page 1 of 2, 4 matching report(s)"


def test_status_from_db_without_a_sink_section_says_what_is_missing(
    setup: Setup, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "status", "--from-db")
    assert done.returncode == 78  # EX_CONFIG, as for a missing oss: section or channel
    assert "needs a `sink:` section" in done.stderr
    synced = run_cli("--config", str(setup.path), "sync-reports")
    assert synced.returncode == 78
    assert "sync-reports needs a `sink:` section" in synced.stderr


def test_check_config_resolves_the_sink_dsn(setup: Setup, run_cli: RunCli) -> None:
    with_sink(setup)
    done = run_cli("--config", str(setup.path), "check-config", env={DSN_ENV: ""})
    assert done.returncode == 78
    assert "sink.dsn" in done.stderr
    assert yaml.safe_load(setup.path.read_text())["sink"] == {"dsn": {"env": DSN_ENV}}


def test_with_migrate_false_a_database_without_the_tables_keeps_the_report_waiting(
    cluster: Cluster, platform: str, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DSN_ENV, tcp_dsn(cluster, platform))
    config = with_sink(setup, migrate=False)
    settings = config.sink
    assert settings is not None
    outbox = Outbox(setup.state)
    outbox.put(Entry(BACKUP, "r.json", make_report().to_json()))
    cluster.psql(V1, platform)  # Flyway ran V1 only
    with pytest.raises(SinkError, match=r"lacks the V2 columns.*sink\.migrate: true"):
        flush(settings, outbox)
    assert len(outbox.pending()) == 1
    cluster.psql(V2, platform)  # now Flyway has applied V2 too
    assert flush(settings, outbox).sent == 1
    assert rows(cluster, platform, "SELECT count(*) FROM db_backup_job") == [(1,)]
