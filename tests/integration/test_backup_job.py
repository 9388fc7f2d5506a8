"""The core job end to end against a real cluster, through the installed `db-backup` command."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from db_backup import config
from db_backup.backup.run import run_job
from db_backup.postgres import tools as pg
from db_backup.reports.model import seed_field_problems
from tests.conftest import BACKUP_PASSWORD, RunCli, Setup
from tests.support.files import replace_json
from tests.support.pgcluster import (
    Cluster,
    free_port,
    locked_table,
    table_fingerprint,
    wait_for_lock_wait,
)
from tests.support.procs import start_run, wait_for_pg_dump
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_backup_restores_to_identical_tables_and_checksum_verifies(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS" and report["errorMessage"] == ""
    assert seed_field_problems(report) == []
    dump = Path(report["local"]["file"])
    assert dump.name.startswith("shop_") and dump.name.endswith(
        f"_{report['hostname'].split('.')[0]}.dump"
    )
    assert dump.stat().st_mode & 0o777 == 0o600
    assert report["local"]["sizeBytes"] == dump.stat().st_size
    check = subprocess.run(
        ["sha256sum", "-c", dump.name + ".sha256"], cwd=dump.parent, capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.strip() == f"{dump.name}: OK"
    globals_sql = Path(report["local"]["globalsFile"])
    assert "CREATE ROLE backup" in globals_sql.read_text()
    assert Path(done.stdout.strip()) == setup.reports / f"{dump.name[:-5]}.json"
    cluster.restore(dump, "shop_restored")
    assert table_fingerprint(cluster, "shop_restored") == table_fingerprint(cluster, "shop")
    assert len(table_fingerprint(cluster, "shop")) == 4
    assert not setup.temporaries()


def test_all_discovers_databases_each_with_its_own_report_and_globals_copy(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    setup.job()["databases"] = "all"
    setup.job()["exclude_databases"] = ["postgres"]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "--all")
    assert done.returncode == 0, done.stderr
    reports = {r["database"]: r for r in setup.reports_json()}
    assert {"shop", "crm"} <= set(reports) and "postgres" not in reports
    assert all(r["status"] == "SUCCESS" for r in reports.values())
    # pg_dumpall runs once per run; every backup carries its own copy under its own stem, so
    # each one restores (and expires) on its own.
    globals_files = [Path(r["local"]["globalsFile"]) for r in reports.values()]
    assert len(set(globals_files)) == len(reports)
    for report, path in zip(reports.values(), globals_files, strict=True):
        assert path.name == Path(report["local"]["file"]).name.replace(".dump", "_globals.sql")
        assert path.name in report["artefacts"]
    assert len({p.read_bytes() for p in globals_files}) == 1


@pytest.mark.parametrize("fmt", ["plain", "directory"])
def test_other_formats_restore(setup: Setup, cluster: Cluster, run_cli: RunCli, fmt: str) -> None:
    setup.job()["dump"] = {"format": fmt, "jobs": 2} if fmt == "directory" else {"format": fmt}
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    dump = Path(report["local"]["file"])
    check = subprocess.run(
        ["sha256sum", "-c", dump.name + ".sha256"], cwd=dump.parent, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    target = f"shop_{fmt}"
    if fmt == "plain":
        cluster.psql(f'DROP DATABASE IF EXISTS "{target}"')
        cluster.psql(f'CREATE DATABASE "{target}"')
        subprocess.run(
            cluster.psql_argv(target, "-q", "-v", "ON_ERROR_STOP=1", "-f", str(dump)),
            check=True,
            capture_output=True,
        )
    else:
        assert dump.is_dir() and (dump / "toc.dat").exists()
        cluster.restore(dump, target)
    assert table_fingerprint(cluster, target) == table_fingerprint(cluster, "shop")


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """Mounts a tmpfs with `options` (e.g. "size=2m", "ro,size=1m") on `path` for the block.

    Root ignores permission bits, so a full or read-only mount is how these tests make a
    directory fail for real.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def tcp_login(cluster: Cluster, user: str, password_env: str) -> dict[str, object]:
    """Returns a connection over 127.0.0.1 (scram-sha-256) with the password read from an env var."""
    return {
        "host": "127.0.0.1",
        "port": cluster.port,
        "user": user,
        "password": {"env": password_env},
    }


def visible(directory: Path, pattern: str) -> list[Path]:
    """Returns the non-hidden matches (pathlib's glob also matches dot files)."""
    return [p for p in directory.glob(pattern) if not p.name.startswith(".")]


def assert_failed_cleanly(
    setup: Setup, done: subprocess.CompletedProcess[str], *needles: str
) -> dict:
    assert done.returncode != 0
    reports = setup.reports_json()
    assert reports, f"no report written; stderr: {done.stderr}"
    report = reports[-1]
    assert report["status"] == "FAILED"
    assert seed_field_problems(report) == []
    for needle in needles:
        assert needle.lower() in report["errorMessage"].lower(), report["errorMessage"]
    assert not visible(setup.data, "*.dump"), "a failed run left a dump"
    assert not visible(setup.data, "*.sha256")
    assert not setup.temporaries()
    assert any('"FAILED"' in line and "error" in line for line in done.stderr.splitlines())
    return report


def test_unreachable_server_gives_failed_report(setup: Setup, run_cli: RunCli) -> None:
    setup.job()["connection"] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "user": "postgres",
        "connect_timeout_seconds": 3,
    }
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert_failed_cleanly(setup, done, "connection", "refused")


def test_bad_password_fails_without_printing_it(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    setup.job()["connection"] = tcp_login(cluster, "backup", "TEST_PG_PASSWORD")
    setup.write()
    done = run_cli(
        "--config", str(setup.path), "run", "nightly", env={"TEST_PG_PASSWORD": "wrong-pass-123"}
    )
    report = assert_failed_cleanly(setup, done, "password authentication failed")
    assert "wrong-pass-123" not in json.dumps(report) + done.stderr + done.stdout


def test_missing_database_gives_failed_report(setup: Setup, run_cli: RunCli) -> None:
    setup.job()["databases"] = ["shop", "no_such_db"]
    setup.job()["globals"] = False
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    reports = {r["database"]: r for r in setup.reports_json()}
    assert reports["shop"]["status"] == "SUCCESS"
    assert reports["no_such_db"]["status"] == "FAILED"
    assert 'database "no_such_db" does not exist' in reports["no_such_db"]["errorMessage"]
    assert len(visible(setup.data, "*.dump")) == 1


def test_pg_dump_exiting_non_zero_is_reported_with_its_stderr(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    # `limited` may connect but not read the tables: pg_dump fails part-way with exit 1.
    setup.job()["connection"] = tcp_login(cluster, "limited", "LIMITED_PW")
    setup.job()["globals"] = False
    setup.write()
    done = run_cli(
        "--config", str(setup.path), "run", "nightly", env={"LIMITED_PW": "limited-pass"}
    )
    assert_failed_cleanly(setup, done, "pg_dump exited with status 1", "permission denied")


def test_globals_failing_fails_the_run(setup: Setup, cluster: Cluster, run_cli: RunCli) -> None:
    setup.job()["connection"] = tcp_login(cluster, "limited", "LIMITED_PW")
    setup.write()
    done = run_cli(
        "--config", str(setup.path), "run", "nightly", env={"LIMITED_PW": "limited-pass"}
    )
    assert_failed_cleanly(setup, done, "globals", "pg_dumpall")
    assert not visible(setup.data, "*_globals.sql")


def _start_slow_dump(setup: Setup, slow_db: str) -> tuple[subprocess.Popen[str], int]:
    """Starts `run` on the slow database; returns (runner, pg_dump pid) once data flows."""
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup)
    dump_pid = wait_for_pg_dump(proc.pid)
    wait_until(
        lambda: any(p.stat().st_size > 0 for p in setup.temporaries()),
        "the dump's temporary file to receive data",
    )
    return proc, dump_pid


def test_killed_pg_dump_gives_failed_report_and_no_partial_file(
    setup: Setup, slow_db: str, run_cli: RunCli
) -> None:
    proc, dump_pid = _start_slow_dump(setup, slow_db)
    os.kill(dump_pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    assert_failed_cleanly(setup, done, "pg_dump was killed by signal SIGKILL")


def test_temporary_file_of_a_killed_run_is_removed_by_the_next_run(
    setup: Setup, slow_db: str, run_cli: RunCli
) -> None:
    proc, _ = _start_slow_dump(setup, slow_db)
    proc.kill()  # the runner itself dies: nothing can clean up
    proc.communicate(timeout=30)
    leftovers = setup.temporaries()
    assert leftovers, "expected the killed run to leave its temporary file"
    assert not visible(setup.data, "*.dump")
    setup.job()["databases"] = "shop"
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in leftovers)
    assert "removed temporary file of an interrupted run" in done.stderr


def test_disk_full_gives_failed_report_and_no_partial_file(
    setup: Setup, slow_db: str, run_cli: RunCli, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "size=2m") as small:
        setup.document["directories"]["data"] = str(small)
        setup.data = small
        setup.job()["databases"] = slow_db
        setup.job()["globals"] = False
        # The disk filling up during the dump, not the capacity check refusing it beforehand.
        setup.job()["capacity"] = {"check_space": False}
        setup.write()
        done = run_cli("--config", str(setup.path), "run", "nightly")
        report = assert_failed_cleanly(
            setup, done, "No space left on device", "file system is full", "local: cannot write"
        )
        assert "local: local:" not in report["errorMessage"], "the target's name is said once"
        assert setup.data_files(small) == []


def test_unwritable_directory_gives_failed_report(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "readonly", "ro,size=1m") as readonly:
        setup.document["directories"]["data"] = str(readonly)
        setup.data = readonly
        setup.write()
        done = run_cli("--config", str(setup.path), "run", "nightly")
        report = assert_failed_cleanly(
            setup, done, "directory not writable", str(readonly), "read-only file system"
        )
        assert report["database"] == "shop"


def test_second_run_of_a_running_job_is_refused_clearly(setup: Setup, run_cli: RunCli) -> None:
    lock = setup.state / "locks" / "nightly.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as handle:
        handle.write("4242\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX)
        done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 75
    assert "job 'nightly' is already running (pid 4242" in done.stderr
    assert setup.reports_json() == []


def test_password_appears_in_no_artefact_log_or_command_line(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    secret_file = setup.root / "pw"
    secret_file.write_text(BACKUP_PASSWORD + "\n")
    setup.job()["connection"] = {
        "host": "127.0.0.1",
        "port": cluster.port,
        "user": "backup",
        "password": {"file": str(secret_file)},
    }
    setup.document["directories"]["logs"] = str(setup.root / "logs")
    (setup.root / "logs").mkdir()
    setup.write()
    # A lock held elsewhere stalls pg_dump after it logged in: its password file must exist
    # (private) for exactly that long.
    with locked_table(cluster, "shop", "customers"):
        proc = start_run(setup)
        dump_pid = wait_for_pg_dump(proc.pid)
        wait_for_lock_wait(cluster, "db-backup/nightly")
        cmdline = Path(f"/proc/{dump_pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{dump_pid}/environ").read_bytes().decode(errors="replace")
        variables = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        pgpass = Path(variables["PGPASSFILE"])
        info = pgpass.stat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert stat.S_IMODE(pgpass.parent.stat().st_mode) == 0o700
        assert pgpass.read_text().rstrip("\n").endswith(f":backup:{BACKUP_PASSWORD}")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert BACKUP_PASSWORD not in cmdline and BACKUP_PASSWORD not in environ
    assert not pgpass.exists(), "the password file outlived the run"
    everything = stdout + stderr
    for path in setup.root.rglob("*"):
        if path.is_file() and path != secret_file:
            everything += path.read_bytes().decode("utf-8", "replace")
    assert BACKUP_PASSWORD not in everything
    assert "backup finished" in everything  # the daily log file was written
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS"


def test_retention_deletes_old_backups_but_keeps_the_newest(setup: Setup, run_cli: RunCli) -> None:
    setup.job()["retention"] = {"days": 1, "keep_last": 2}
    setup.job()["globals"] = False
    setup.write()
    for _ in range(3):
        assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
        time.sleep(1.1)  # distinct second-resolution stems
    reports = sorted(setup.reports.glob("*.json"))
    assert len(reports) == 3
    # Age the two oldest runs to eleven and ten days ago (retention reads startedAt). Replaced,
    # as an editor does: a new file, which the next run's listing of the reports sees.
    aged = []
    for days, path in enumerate(reports[:2]):
        doc = json.loads(path.read_text())
        old = datetime.now(UTC) - timedelta(days=11 - days)
        doc["startedAt"] = old.strftime("%Y-%m-%dT%H:%M:%SZ")
        path.with_suffix(".edited").write_text(json.dumps(doc))
        path.with_suffix(".edited").replace(path)
        aged.append(doc)
    foreign = setup.data / "someone_else.dump"
    foreign.write_text("not ours")
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    remaining = sorted(p.name for p in setup.reports.glob("*.json"))
    # keep_last 2: the new run and the previous (recent) one stay; both aged ones go.
    assert len(remaining) == 2
    for doc in aged:
        assert not Path(doc["local"]["file"]).exists()
        assert not Path(doc["local"]["checksumFile"]).exists()
    assert foreign.exists(), "retention touched a file this program did not create"
    newest = json.loads((setup.reports / remaining[-1]).read_text())
    assert sorted(Path(p).name for p in newest["retention"]["deleted"]) == sorted(
        [Path(d["local"]["file"]).name for d in aged]
        + [Path(d["local"]["checksumFile"]).name for d in aged]
        + [f"{Path(d['local']['file']).name[:-5]}.json" for d in aged]
    )
    assert "retention removed old backups" in done.stderr


def test_a_run_lists_the_reports_directory_once_whatever_its_databases_decide(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The capacity estimate, the size guard and retention of every database ask the job's
    # history in memory: one listing per run (at the run's start), not two per database.
    setup.job()["databases"] = ["shop", "crm"]
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.write()
    listed: list[str] = []

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any = ".", *args: Any) -> Any:
            where = path if isinstance(path, int) else os.path.realpath(os.fsdecode(path))
            if where == os.path.realpath(setup.reports):
                listed.append(real.__name__)
            return real(path, *args)

        return call

    monkeypatch.setattr(os, "scandir", counted(os.scandir))
    monkeypatch.setattr(os, "listdir", counted(os.listdir))
    loaded = config.load(str(setup.path))
    first: list[Path] = []
    for round_number in range(3):
        listed.clear()
        result = run_job(loaded, loaded.job("nightly"))
        assert result.ok, result.reports
        assert len(listed) == 1, f"run {round_number + 1} listed the reports directory: {listed}"
        first = first or result.report_paths
        if round_number == 1:
            # Let the first run's backups expire: the third run's retention deletes them.
            for path in first:
                doc = json.loads(path.read_text())
                doc["startedAt"] = "2020-01-01T00:00:00Z"
                replace_json(path, doc)
        time.sleep(1.1)  # distinct second-resolution stems
    assert not any(path.exists() for path in first)
    deleted = [r["retention"]["deleted"] for r in setup.reports_json()]
    assert sum(len(d) for d in deleted) > 0, "retention deleted nothing: the test proves less"
    assert len(setup.reports_json()) == 4


def test_status_shows_latest_per_job_and_filters(setup: Setup, run_cli: RunCli) -> None:
    setup.job()["databases"] = ["shop", "crm"]
    setup.job()["globals"] = False
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    time.sleep(1.1)
    assert run_cli("--config", str(setup.path), "run", "nightly").returncode == 0
    (setup.reports / "garbage.json").write_text("{not json")
    done = run_cli("--config", str(setup.path), "status", "--json")
    assert done.returncode == 0, done.stderr
    page = json.loads(done.stdout)
    assert page["total"] == 2 and {r["database"] for r in page["reports"]} == {"shop", "crm"}
    assert "garbage.json: skipped" in done.stderr
    history = json.loads(
        run_cli(
            "--config",
            str(setup.path),
            "status",
            "--history",
            "--json",
            "--database",
            "shop",
            "--limit",
            "1",
            "--page",
            "2",
        ).stdout
    )
    assert history["total"] == 2 and history["pages"] == 2 and len(history["reports"]) == 1
    table = run_cli("--config", str(setup.path), "status").stdout
    assert "SUCCESS" in table and "page 1 of 1, 2 matching report(s)" in table


def test_unwritable_state_directory_is_a_clear_error_not_a_traceback(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "state-ro", "ro,size=1m") as readonly:
        setup.document["directories"]["state"] = str(readonly)
        setup.write()
        done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"cannot open lock file {readonly}/locks" in done.stderr
    assert "Read-only file system" in done.stderr


def test_database_size_hint_reads_pg_database_size_and_never_fails(
    setup: Setup, cluster: Cluster
) -> None:
    # The OSS part size is sized from this; a database that cannot be read gives no hint
    # (pg_dump then reports the real problem), never an exception.
    job = config.load(str(setup.path)).jobs[0]
    expected = int(cluster.psql("SELECT pg_database_size('shop')"))
    with pg.connection_env(job) as env:
        assert pg.database_size(job, env, "shop") == expected
        assert pg.database_size(job, env, "no_such_database") is None
