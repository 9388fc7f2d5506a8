"""Directory-format dumps (-Fd -j N) stored on OSS: every file an object, restorable from OSS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from db_backup.backup.run import DUMP_DONE, run_job
from db_backup.config import load
from tests.conftest import RunCli, Setup
from tests.integration.test_job_remote import OSS_ENV, PREFIX, bucket, keys, server, use_oss
from tests.support.files import replace_json
from tests.support.oss_fixtures import OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, table_fingerprint
from tests.support.procs import start_run, wait_for_pg_dump

pytestmark = pytest.mark.integration

__all__ = ["server"]  # the fixture, imported so that pytest finds it here


def directory_job(setup: Setup, server: OssServer, mode: str, database: str = "shop") -> None:
    setup.job()["databases"] = database
    setup.job()["dump"] = {"format": "directory", "jobs": 2}
    use_oss(setup, server, mode=mode)


def member_keys(server: OssServer, dirname: str) -> set[str]:
    return {k for k in keys(server) if k.startswith(f"{PREFIX}{dirname}/")}


def check_objects(server: OssServer, report: dict[str, object], dirname: str, tmp: Path) -> Path:
    """Checks every member is an object with the server's CRC-64; downloads them all to `tmp`."""
    members = member_keys(server, dirname)
    assert len(members) >= 2  # toc.dat and at least one table's data
    urls = report["remote"]["urls"]  # type: ignore[index]
    assert sorted(urls) == sorted(f"oss://{OSS_BUCKET}/{k}" for k in members)
    oss_result = report["targets"]["oss"]  # type: ignore[index]
    assert oss_result["location"] == f"oss://{OSS_BUCKET}/{PREFIX}{dirname}/"
    assert sorted(oss_result["objects"]) == sorted(urls)
    stored = server.objects(OSS_BUCKET)
    client = bucket(server)
    root = tmp / "download"
    (root / dirname).mkdir(parents=True)
    for key in members:
        head = client.head_object(key)
        assert str(head.server_crc) == str(stored[key].crc64)
        client.get_object_to_file(key, str(root / dirname / key.rsplit("/", 1)[1]))
    manifest = root / f"{dirname}.sha256"
    client.get_object_to_file(f"{PREFIX}{dirname}.sha256", str(manifest))
    lines = manifest.read_text().splitlines()
    assert len(lines) == len(members)
    checked = subprocess.run(
        ["sha256sum", "-c", manifest.name], cwd=root, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return root / dirname


def test_both_mode_uploads_every_file_and_restores_from_either_copy(
    setup: Setup,
    server: OssServer,
    cluster: Cluster,
    run_cli: RunCli,
    slow_db: str,
    tmp_path: Path,
) -> None:
    directory_job(setup, server, "both", slow_db)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS", report["errorMessage"]
    local = Path(report["local"]["file"])
    assert local.is_dir() and local.name.endswith(".dump.d")
    check_objects(server, report, local.name, tmp_path)
    # Big files went up multipart (1 MiB parts), and no upload was left open.
    assert server.requests_for("InitiateMultipartUpload")
    assert not server.pending_uploads(OSS_BUCKET)
    restored = run_cli(
        "--config",
        str(setup.path),
        "restore",
        report["id"],
        "--from-oss",
        "--to-database",
        "bulk_dir_oss",
        env=OSS_ENV,
    )
    assert restored.returncode == 0, restored.stderr
    assert table_fingerprint(cluster, "bulk_dir_oss") == table_fingerprint(cluster, slow_db)


def test_oss_mode_keeps_nothing_locally_and_restores_from_oss(
    setup: Setup, server: OssServer, cluster: Cluster, run_cli: RunCli, tmp_path: Path
) -> None:
    directory_job(setup, server, "oss")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS", report["errorMessage"]
    assert report["local"]["file"] == ""
    assert setup.data_files() == []
    staging = setup.state / "staging"
    assert not staging.exists() or setup.data_files(staging) == []
    dirname = report["targets"]["oss"]["location"].rstrip("/").rsplit("/", 1)[1]
    check_objects(server, report, dirname, tmp_path)
    restored = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--to-database", "shop_dir_oss",
        env=OSS_ENV,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert table_fingerprint(cluster, "shop_dir_oss") == table_fingerprint(cluster, "shop")
    # The OSS URL of the directory names the backup too.
    url = report["targets"]["oss"]["location"]
    again = run_cli(
        "--config", str(setup.path), "restore", url, "--to-database", "shop_dir_url",
        env=OSS_ENV,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert table_fingerprint(cluster, "shop_dir_url") == table_fingerprint(cluster, "shop")
    verified = run_cli("--config", str(setup.path), "verify", "--remote", env=OSS_ENV)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # One member gone: verify --remote says which.
    gone = sorted(member_keys(server, dirname))[0]
    bucket(server).delete_object(gone)
    broken = run_cli("--config", str(setup.path), "verify", "--remote", env=OSS_ENV)
    assert broken.returncode != 0
    assert gone.rsplit("/", 1)[1] in broken.stdout + broken.stderr


def test_retention_deletes_an_expired_directory_backups_objects(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    directory_job(setup, server, "oss")
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.job()["globals"] = False
    setup.write()
    assert run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV).returncode == 0
    old_report = sorted(setup.reports.glob("*.json"))[0]
    doc = json.loads(old_report.read_text())
    old_dir = doc["targets"]["oss"]["location"].rstrip("/").rsplit("/", 1)[1]
    assert member_keys(server, old_dir)
    doc["startedAt"] = "2024-01-01T00:00:00Z"
    replace_json(old_report, doc)
    time.sleep(1.1)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    assert member_keys(server, old_dir) == set()
    assert f"{PREFIX}{old_dir}.sha256" not in keys(server)
    [newest] = setup.reports_json()
    new_dir = newest["targets"]["oss"]["location"].rstrip("/").rsplit("/", 1)[1]
    assert new_dir != old_dir and member_keys(server, new_dir)
    assert set(doc["remote"]["urls"]) <= set(newest["retention"]["deleted"])


def test_a_failing_upload_fails_only_the_oss_target_and_leaves_no_objects(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    directory_job(setup, server, "both")
    for operation in ("PutObject", "UploadPart"):
        server.fail_request(500, operation=operation, times=1000)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode != 0
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert report["targets"]["local"]["status"] == "SUCCESS"
    assert report["targets"]["oss"]["status"] == "FAILED"
    assert (
        "500" in report["targets"]["oss"]["error"]
        or "Internal" in report["targets"]["oss"]["error"]
    )
    assert Path(report["local"]["file"]).is_dir()
    assert report["remote"]["urls"] == []
    assert keys(server) == set()
    assert not server.pending_uploads(OSS_BUCKET)


# -- uploads while pg_dump still writes ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiered_db(cluster: Cluster) -> str:
    """One table that takes pg_dump seconds at -Z 9 and three small ones that take none."""
    name = "tiered"
    if name not in cluster.psql("SELECT datname FROM pg_database").split():
        cluster.psql(f"CREATE DATABASE {name}")
        cluster.psql(
            "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i*3)::text) AS a "
            "FROM generate_series(1, 1200000) i",
            name,
        )
        for n in range(3):
            cluster.psql(
                f"CREATE TABLE small{n} AS SELECT i, md5(i::text) AS a "
                f"FROM generate_series(1, {1000 * (n + 1)}) i",
                name,
            )
    return name


def log_events(stderr: str, event: str) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def test_files_go_up_while_pg_dump_still_writes_the_big_table(
    setup: Setup,
    server: OssServer,
    cluster: Cluster,
    run_cli: RunCli,
    tiered_db: str,
    tmp_path: Path,
) -> None:
    directory_job(setup, server, "both", tiered_db)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS", report["errorMessage"]
    local = Path(report["local"]["file"])
    files = sorted(p.name for p in local.iterdir())
    assert len(files) == 5  # toc.dat and one file per table
    # The server received toc.dat and the small tables' files before pg_dump's last write to
    # the big table's file (its mtime): the upload overlapped the dump.
    biggest = max(local.iterdir(), key=lambda p: p.stat().st_size)
    finished = biggest.stat().st_mtime
    sent = {
        r["key"].rsplit("/", 1)[1]: r["time"]
        for r in server.requests
        if r["operation"] == "PutObject" and f"/{local.name}/" in r["key"]
    }
    early = sorted(name for name, at in sent.items() if at < finished)
    assert "toc.dat" in early and len(early) >= 3, (sent, finished)
    [uploaded] = log_events(done.stderr, "directory uploaded")
    assert uploaded["files"] == 5 and uploaded["watched"] is True
    assert uploaded["uploads"] == 5  # pg_dump's final fsync reopens each file: none went twice
    assert int(uploaded["during_dump"]) >= 3  # type: ignore[call-overload]
    # Every file is whole on OSS and in the manifest (taken while uploading), and restores.
    check_objects(server, report, local.name, tmp_path)
    local_check = subprocess.run(
        ["sha256sum", "-c", f"{local.name}.sha256"], cwd=local.parent, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert local_check.returncode == 0, local_check.stdout + local_check.stderr
    restored = run_cli(
        "--config", str(setup.path), "restore", report["id"], "--from-oss",
        "--to-database", "tiered_from_oss", env=OSS_ENV,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert table_fingerprint(cluster, "tiered_from_oss") == table_fingerprint(cluster, tiered_db)


def wait_for_member_upload(server: OssServer, proc: subprocess.Popen[str]) -> str:
    """Waits until the run stored a directory member on OSS; returns the member's key."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        members = [k for k in keys(server) if ".dump.d/" in k]
        if members:
            return members[0]
        time.sleep(0.02)
    raise AssertionError(f"no member was uploaded while the run went on ({proc.poll()})")


def test_sigterm_while_early_files_are_up_leaves_no_object_and_a_failed_report(
    setup: Setup, server: OssServer, tiered_db: str
) -> None:
    directory_job(setup, server, "both", tiered_db)
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup, env=OSS_ENV)
    dump_pid = wait_for_pg_dump(proc.pid)
    wait_for_member_upload(server, proc)
    assert Path(f"/proc/{dump_pid}").exists(), "pg_dump was over before the test could stop it"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert report["errorMessage"] == "stopped during the dump: received SIGTERM"
    assert {k for k in keys(server) if not k.endswith(".json")} == set()  # only its report
    assert not server.pending_uploads(OSS_BUCKET)
    assert setup.data_files() == []
    assert not setup.temporaries()
    assert not Path(f"/proc/{dump_pid}").exists()


def test_sigkill_after_early_uploads_is_cleaned_up_by_the_next_run(
    setup: Setup, server: OssServer, run_cli: RunCli, tiered_db: str
) -> None:
    directory_job(setup, server, "oss", tiered_db)
    setup.job()["globals"] = False
    setup.write()
    proc = start_run(setup, env=OSS_ENV)
    dump_pid = wait_for_pg_dump(proc.pid)
    member = wait_for_member_upload(server, proc)
    # The claim named the member before its first byte went up.
    [claim_file] = [p for p in (setup.state / "claims").iterdir() if not p.name.startswith(".")]
    claimed = json.loads(claim_file.read_text())["targets"]["oss"]
    assert member.removeprefix(PREFIX) in claimed
    proc.kill()
    proc.communicate(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.kill(dump_pid, signal.SIGKILL)  # pg_dump runs in its own session
    leftovers = {k for k in keys(server) if ".dump.d/" in k}
    assert member in leftovers and setup.reports_json() == []
    setup.job()["databases"] = "shop"
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    assert "removed files of an interrupted run" in done.stderr
    assert leftovers.isdisjoint(keys(server))
    [report] = setup.reports_json()
    assert report["database"] == "shop" and report["status"] == "SUCCESS"


def test_a_directory_dump_reports_its_growing_bytes_as_a_stream_dump_does(
    setup: Setup, server: OssServer, slow_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pg_dump -Fd writes nothing to stdout; without the directory's size the daemon's STATUS
    # would show no bytes and its stall watch would count a long dump as stalled.
    directory_job(setup, server, "both", slow_db)
    setup.job()["globals"] = False
    for name, value in OSS_ENV.items():
        monkeypatch.setenv(name, value)
    config = load(str(setup.write()))
    seen: list[tuple[str, str, int]] = []
    result = run_job(config, config.job("nightly"), progress=lambda *a: seen.append(a))
    assert result.ok, result
    sizes = [size for _, _, size in seen]
    assert sizes[-1] == DUMP_DONE and {(j, d) for j, d, _ in seen} == {("nightly", slow_db)}
    growing = sizes[:-1]
    assert len(growing) >= 2 and growing == sorted(set(growing)), growing
    [report] = setup.reports_json()
    assert 0 < growing[-1] <= report["local"]["sizeBytes"]
