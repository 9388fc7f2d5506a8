"""The job tried as a careless or hostile user would (issue 11): each test makes the defect happen.

Secrets that must not leak into children or logs, reports that must never overwrite one another,
names that must never be mistaken for another's, retention that must never delete what is not its
own, and leftovers of killed runs that the next run removes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import oss2
import pytest

from tests.conftest import BACKUP_PASSWORD, RunCli, Setup
from tests.integration.test_backup_job import tcp_login, tmpfs, visible
from tests.integration.test_job_remote import OSS_ENV, keys, use_oss
from tests.support.oss_fixtures import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster
from tests.support.procs import environ_of, start_run, wait_for_pg_dump

pytestmark = pytest.mark.integration


@pytest.fixture
def server(oss_server: OssServer) -> OssServer:
    """The shared loopback OSS server."""
    return oss_server


PGPW_ENV = {"DBB_PGPW": BACKUP_PASSWORD, "DBB_UNRELATED_TOKEN": "unrelated-token-value-42"}


def _all_output(setup: Setup, *texts: str) -> str:
    everything = "".join(texts)
    for path in setup.root.rglob("*"):
        if path.is_file():
            everything += path.read_bytes().decode("utf-8", "replace")
    return everything


def _kill_tree(proc: subprocess.Popen[str], dump_pid: int) -> None:
    proc.kill()
    proc.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.kill(dump_pid, signal.SIGKILL)  # pg_dump runs in its own session: it outlives us


# -- secrets -------------------------------------------------------------------------------------


def test_env_secret_and_unrelated_variables_never_reach_pg_dump(
    setup: Setup, cluster: Cluster, slow_db: str
) -> None:
    setup.job()["connection"] = tcp_login(cluster, "backup", "DBB_PGPW")
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup, env=PGPW_ENV)
    dump_pid = wait_for_pg_dump(proc.pid)
    environ = environ_of(dump_pid)
    raw = Path(f"/proc/{dump_pid}/environ").read_bytes()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert "DBB_PGPW" not in environ and "DBB_UNRELATED_TOKEN" not in environ
    assert BACKUP_PASSWORD.encode() not in raw
    assert environ["PATH"] and environ["PGAPPNAME"] == "db-backup/nightly"
    # The password reaches libpq only through the private password file.
    passfile = Path(environ["PGPASSFILE"])
    assert passfile.parent == setup.state / "private" / "nightly"
    assert not passfile.exists(), "the password file must go with the run"


def test_secret_file_that_is_not_utf8_is_a_clear_refusal_without_its_content(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    secret_file = setup.root / "pw"
    secret_file.write_bytes(b"topsecret-\xe9-latin1\n")
    login = tcp_login(cluster, "backup", "X")
    setup.job()["connection"] = {**login, "password": {"file": str(secret_file)}}
    setup.document["directories"]["logs"] = str(setup.root / "logs")
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    # By hand, a secret that cannot be read stops the run before anything is written (exit 78):
    # no FAILED report that would pose as the schedule's result.
    assert done.returncode == 78
    assert "Traceback" not in done.stderr
    assert setup.reports_json() == []
    assert "nightly: not run, no report written" in done.stderr
    assert "is not UTF-8" in done.stderr and str(secret_file) in done.stderr
    secret_file.unlink()
    everything = _all_output(setup, done.stdout, done.stderr)
    assert "topsecret" not in everything and "latin1" not in everything


def test_sigkilled_run_leaves_its_password_file_only_under_the_state_dir_and_next_run_clears_it(
    setup: Setup, cluster: Cluster, slow_db: str, run_cli: RunCli
) -> None:
    setup.job()["connection"] = tcp_login(cluster, "backup", "DBB_PGPW")
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup, env=PGPW_ENV)
    dump_pid = wait_for_pg_dump(proc.pid)
    passfile = Path(environ_of(dump_pid)["PGPASSFILE"])
    _kill_tree(proc, dump_pid)
    assert passfile.is_relative_to(setup.state)
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(passfile.parent.stat().st_mode) == 0o700
    setup.job()["databases"] = "shop"
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=PGPW_ENV)
    assert done.returncode == 0, done.stderr
    assert not passfile.exists()


# -- reports and names ---------------------------------------------------------------------------


def test_runs_started_in_the_same_second_never_overwrite_each_others_report(
    setup: Setup, run_cli: RunCli
) -> None:
    good = setup.job()
    for index in range(4):  # four jobs on the same database: one good, three failing at start
        job = {**good, "name": f"job{index}", "connection": dict(good["connection"])}
        if index:  # no server there (a missing secret would stop a manual run before any report)
            job["connection"]["port"] = 1
        setup.document["jobs"].append(job)
    setup.document["jobs"].pop(0)
    setup.write()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(
            pool.map(lambda i: run_cli("--config", str(setup.path), "run", f"job{i}"), range(4))
        )
    assert [r.returncode for r in runs] == [0, 1, 1, 1], [r.stderr for r in runs]
    reports = setup.reports_json()
    assert sorted(r["job"] for r in reports) == ["job0", "job1", "job2", "job3"]
    assert len({r["id"] for r in reports}) == 4
    [good_report] = [r for r in reports if r["status"] == "SUCCESS"]
    assert Path(good_report["local"]["file"]).exists()
    assert not list((setup.state / "claims").iterdir()), "claims must be released"


def test_failed_report_names_only_files_that_exist(
    setup: Setup, run_cli: RunCli, tmp_path: Path
) -> None:
    # Three inodes: the directory, the temporary directory and the dump. The .sha256 then finds
    # the file system full, and the dump it belongs to is taken away again.
    with tmpfs(tmp_path / "tiny", "size=20m,nr_inodes=3") as tiny:
        setup.document["directories"]["data"] = str(tiny)
        setup.job()["globals"] = False
        setup.write()
        done = run_cli("--config", str(setup.path), "run", "nightly")
        assert done.returncode == 1
        [report] = setup.reports_json()
        assert report["status"] == "FAILED"
        assert "file system is full" in report["errorMessage"]
        assert setup.data_files(tiny) == []
        assert report["artefacts"] == [next(setup.reports.glob("*.json")).name]


def test_report_lists_the_files_each_target_holds_when_one_target_fails_after_the_dump(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server)
    server.fail_request(500, operation="PutObject", times=1000)  # .sha256, globals, report copy
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["targets"]["oss"]["status"] == "FAILED"
    assert report["targets"]["local"]["status"] == "SUCCESS"
    names = report["artefacts"][:-1]
    assert names == report["targets"]["local"]["files"]
    assert all((setup.data / name).exists() for name in names)
    assert "files" not in report["targets"]["oss"]
    assert not keys(server), "the dump object of the failed target must be removed"


def test_database_named_like_a_temporary_file_is_never_deleted_as_a_leftover(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    name = ".tmp-nightly.x"
    cluster.psql(f'CREATE DATABASE "{name}"')
    try:
        setup.job()["databases"] = [name]
        setup.write()
        first = run_cli("--config", str(setup.path), "run", "nightly")
        assert first.returncode == 0, first.stderr
        [report] = setup.reports_json()
        dump = Path(report["local"]["file"])
        assert dump.exists()
        second = run_cli("--config", str(setup.path), "run", "nightly")
        assert second.returncode == 0, second.stderr
        assert dump.exists(), "the next run deleted a good dump as if it were a temporary file"
        assert "interrupted run" not in second.stderr
    finally:
        cluster.psql(f'DROP DATABASE "{name}"')


@pytest.fixture
def newline_db(cluster: Cluster) -> Iterator[str]:
    name = "new\nline db"
    cluster.psql(f'CREATE DATABASE "{name}"')
    cluster.psql("CREATE TABLE t AS SELECT 1 AS x", name)
    yield name
    cluster.psql(f'DROP DATABASE "{name}"')


def test_database_with_a_newline_in_its_name_is_discovered_and_dumped_with_the_others(
    setup: Setup, newline_db: str, run_cli: RunCli
) -> None:
    setup.job()["databases"] = "all"
    setup.job()["exclude_databases"] = ["postgres", "bulk"]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    reports = {r["database"]: r for r in setup.reports_json()}
    assert {newline_db, "shop", "crm"} <= set(reports)
    assert reports[newline_db]["status"] == "SUCCESS"
    assert "\n" not in reports[newline_db]["local"]["file"]
    listing = subprocess.run(
        ["pg_restore", "--list", reports[newline_db]["local"]["file"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "TABLE public t" in listing.stdout


def test_missing_first_database_does_not_stop_the_others(setup: Setup, run_cli: RunCli) -> None:
    setup.job()["databases"] = ["no_such_db", "shop"]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    reports = {r["database"]: r for r in setup.reports_json()}
    assert reports["no_such_db"]["status"] == "FAILED"
    assert "does not exist" in reports["no_such_db"]["errorMessage"]
    assert reports["shop"]["status"] == "SUCCESS"


def test_job_with_nothing_to_back_up_says_why_in_the_log_and_a_report(
    setup: Setup, cluster: Cluster, run_cli: RunCli
) -> None:
    names = cluster.psql(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
    ).split("\n")
    setup.job()["databases"] = "all"
    setup.job()["exclude_databases"] = [n for n in names if n]
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["status"] == "FAILED" and report["database"] == "*"
    assert "nothing to back up" in report["errorMessage"]
    assert "nothing to back up" in done.stderr


# -- retention and leftovers ---------------------------------------------------------------------


def _old_report(setup: Setup, stem: str, **changes: object) -> Path:
    """Writes a SUCCESS report of job `nightly` for `shop`, started 30 days ago."""
    started = datetime.now(UTC) - timedelta(days=30)
    document = {
        "database": "shop",
        "host": "h",
        "port": "5432",
        "startedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finishedAt": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "durationSeconds": 0,
        "mode": "local",
        "tool": "local",
        "status": "SUCCESS",
        "errorMessage": "",
        "local": {"file": "", "globalsFile": "", "checksumSha256": "", "sizeBytes": 0},
        "remote": {"urls": []},
        "job": "nightly",
        "artefacts": [],
        **changes,
    }
    setup.reports.mkdir(parents=True, exist_ok=True)
    path = setup.reports / f"{stem}.json"
    path.write_text(json.dumps(document))
    return path


def test_retention_never_deletes_outside_the_data_dir_or_another_backups_files(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.write()
    victim = setup.root / "victim.txt"
    victim.write_text("not a backup")
    setup.data.mkdir(parents=True)
    other = setup.data / "crm_20200101T000000Z_h.dump"
    other.write_text("another backup's dump")
    hostile = _old_report(
        setup,
        "shop_20200101T000000Z_h",
        artefacts=["../victim.txt", other.name, "/etc/hostname"],
        local={"file": str(victim), "globalsFile": "", "checksumSha256": "", "sizeBytes": 0},
    )
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert victim.exists() and other.exists() and Path("/etc/hostname").exists()
    assert not hostile.exists(), "the expired report itself is this program's and goes"


def test_malformed_report_is_skipped_by_retention_and_the_good_backup_keeps_its_report(
    setup: Setup, run_cli: RunCli
) -> None:
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.write()
    malformed = _old_report(setup, "shop_20200101T000000Z_h", artefacts=None)
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "retention skipped a malformed report" in done.stderr
    assert str(malformed) in done.stderr
    good = [r for r in setup.reports_json() if r.get("id")]
    assert len(good) == 1 and good[0]["status"] == "SUCCESS"
    assert Path(good[0]["local"]["file"]).exists()
    assert good[0]["retention"]["error"] == ""


def test_sigkill_mid_dump_leaves_no_final_names_and_the_next_run_clears_the_claim(
    setup: Setup, slow_db: str, run_cli: RunCli
) -> None:
    setup.job()["databases"] = slow_db
    setup.write()  # globals on: they must not appear under a final name before the dump is done
    proc = start_run(setup)
    dump_pid = wait_for_pg_dump(proc.pid)
    _kill_tree(proc, dump_pid)
    assert not visible(setup.data, "*"), "a killed run left a final name"
    assert list((setup.state / "claims").iterdir())
    setup.job()["databases"] = "shop"
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    assert not list((setup.state / "claims").iterdir())
    assert not setup.temporaries()


def test_run_killed_after_its_dump_was_committed_is_cleaned_up_by_the_next_run(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server)
    setup.job()["globals"] = False
    setup.write()
    server.hang_request(60, operation="PutObject")  # the OSS .sha256, after both dumps committed
    proc = start_run(setup, env=OSS_ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not server.requests_for("PutObject"):
        time.sleep(0.05)
    assert server.requests_for("PutObject"), "the run never reached the .sha256 upload"
    proc.kill()
    proc.communicate(timeout=30)
    leftovers = visible(setup.data, "*.dump")
    assert leftovers and setup.reports_json() == []
    assert any(k.endswith(".dump") for k in keys(server))
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    assert "removed files of an interrupted run" in done.stderr
    # Every leftover was removed by the next run (it says which) ...
    removed = {
        path
        for line in done.stderr.splitlines()
        if "removed files of an interrupted run" in line
        for path in json.loads(line)["removed"]
    }
    assert {str(p) for p in leftovers} <= removed, done.stderr
    [report] = setup.reports_json()
    # ... and a name still there is the next run's own backup: it started in the same second,
    # so once the leftovers were gone it took the same stem (same name, new content).
    for path in leftovers:
        if path.exists():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == report["local"]["checksumSha256"], path
    dumps = [k for k in keys(server) if k.endswith(".dump")]
    assert dumps == [report["remote"]["urls"][0].split("/", 3)[3]]


def test_each_run_aborts_this_programs_stale_multipart_uploads(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server)
    key = "postgres/backups/shop_20200101T000000Z_h.dump"
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), server.endpoint, OSS_BUCKET
    )
    upload_id = bucket.init_multipart_upload(key).upload_id
    bucket.upload_part(key, upload_id, 1, b"x" * 1000)
    fresh = bucket.init_multipart_upload("postgres/backups/running-elsewhere.dump").upload_id
    for upload in server.pending_uploads(OSS_BUCKET):
        if upload.upload_id == upload_id:
            upload.initiated -= 2 * 86400  # as a run SIGKILLed two days ago left it
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    assert "aborted stale multipart uploads" in done.stderr
    left = [u.upload_id for u in server.pending_uploads(OSS_BUCKET)]
    assert left == [fresh], "only the stale upload goes; a young one may belong to a live run"
