"""Directory-format dumps (-Fd -j N) stored on OSS: every file an object, restorable from OSS."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_job_remote import OSS_ENV, PREFIX, bucket, keys, server, use_oss
from tests.support.files import replace_json
from tests.support.oss_fixtures import OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, table_fingerprint

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
