"""`db-backup run` with OSS (real oss2 over the loopback server) and rclone, end to end."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import oss2
import pytest

from tests.conftest import RunCli, Setup
from tests.support.files import replace_json
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
)
from tests.support.oss_server import OssServer
from tests.support.pgcluster import Cluster, table_fingerprint

pytestmark = pytest.mark.integration

PREFIX = "postgres/backups/"
OSS_ENV = {"TEST_OSS_ID": OSS_ACCESS_KEY_ID, "TEST_OSS_SECRET": OSS_ACCESS_KEY_SECRET}


@pytest.fixture
def server(oss_server: OssServer) -> OssServer:
    """The shared loopback server fixture (bucket OSS_BUCKET, region OSS_REGION)."""
    return oss_server


def use_oss(setup: Setup, server: OssServer, mode: str = "both", **extra: object) -> None:
    setup.document["storage"] = {
        "mode": mode,
        "oss": {
            "endpoint": server.endpoint,
            "bucket": OSS_BUCKET,
            "region": OSS_REGION,
            "signature_version": "v4",
            "access_key_id": {"env": "TEST_OSS_ID"},
            "access_key_secret": {"env": "TEST_OSS_SECRET"},
            "part_size_mib": 1,
            "retries": 2,
            "connect_timeout_seconds": 3,
            "read_timeout_seconds": 10,
            **extra,
        },
    }
    setup.write()


def bucket(server: OssServer) -> oss2.Bucket:
    auth = oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)
    return oss2.Bucket(auth, server.endpoint, OSS_BUCKET, enable_crc=True)


def keys(server: OssServer) -> set[str]:
    return set(server.objects(OSS_BUCKET))


def test_both_mode_streams_a_multipart_dump_that_downloads_identical_and_restores(
    setup: Setup, server: OssServer, cluster: Cluster, run_cli: RunCli, slow_db: str, tmp_path: Path
) -> None:
    setup.job()["databases"] = slow_db
    use_oss(setup, server, server_side_encryption="AES256", storage_class="IA")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS" and report["tool"] == "oss2"
    local = Path(report["local"]["file"])
    name = local.name
    assert report["remote"]["urls"] == [f"oss://{OSS_BUCKET}/{PREFIX}{name}"]
    oss_result = report["targets"]["oss"]
    assert oss_result["status"] == "SUCCESS" and oss_result["parts"] > 5
    assert keys(server) == {
        f"{PREFIX}{name}",
        f"{PREFIX}{name}.sha256",
        f"{PREFIX}{name[:-5]}_globals.sql",
        f"{PREFIX}{name[:-5]}_globals.sql.sha256",
        f"{PREFIX}{name[:-5]}.json",
    }
    downloaded = tmp_path / name
    bucket(server).get_object_to_file(f"{PREFIX}{name}", str(downloaded))
    digest = hashlib.sha256(downloaded.read_bytes()).hexdigest()
    assert (
        digest
        == report["local"]["checksumSha256"]
        == hashlib.sha256(local.read_bytes()).hexdigest()
    )
    stored = server.objects(OSS_BUCKET)[f"{PREFIX}{name}"]
    assert str(stored.crc64) == str(oss_result["crc64"])
    assert stored.tags.get("sha256") == digest
    init = server.requests_for("InitiateMultipartUpload")[0]["headers"]
    assert init["x-oss-server-side-encryption"] == "AES256"
    assert init["x-oss-storage-class"] == "IA"
    assert not server.pending_uploads(OSS_BUCKET)
    # The copy from the bucket restores to the same tables.
    cluster.restore(downloaded, "bulk_from_oss")
    assert table_fingerprint(cluster, "bulk_from_oss") == table_fingerprint(cluster, slow_db)


def test_oss_only_mode_keeps_nothing_locally(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server, mode="oss")
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS" and report["local"]["file"] == ""
    assert report["local"]["sizeBytes"] > 0 and len(report["local"]["checksumSha256"]) == 64
    assert setup.data_files() == []
    assert len(keys(server)) == 5  # dump, .sha256, roles file, its .sha256, report


def test_a_failing_part_is_retried_and_the_run_succeeds(
    setup: Setup, server: OssServer, run_cli: RunCli, slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    use_oss(setup, server)
    server.fail_request(503, operation="UploadPart", nth=3)
    server.drop_connection(after_bytes=1000, operation="UploadPart", nth=6)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS"
    statuses = [r["status"] for r in server.requests_for("UploadPart")]
    assert 503 in statuses


def test_upload_that_keeps_failing_keeps_the_local_copy_and_leaves_no_object(
    setup: Setup, server: OssServer, run_cli: RunCli, slow_db: str
) -> None:
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    use_oss(setup, server)
    server.fail_request(500, operation="UploadPart", nth=4, times=1000)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert report["targets"]["local"]["status"] == "SUCCESS"
    assert report["targets"]["oss"]["status"] == "FAILED"
    assert "oss: upload part" in report["errorMessage"] and "500" in report["errorMessage"]
    assert "oss: oss:" not in report["errorMessage"], "the target's name is said once"
    local = Path(report["local"]["file"])
    check = subprocess.run(
        ["sha256sum", "-c", f"{local.name}.sha256"],
        cwd=local.parent,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, "the good local copy must stay, with its checksum"
    assert report["remote"]["urls"] == []
    assert not [k for k in keys(server) if k.endswith(".dump")]
    assert not server.pending_uploads(OSS_BUCKET), "the multipart upload was not aborted"
    assert server.requests_for("AbortMultipartUpload")


def test_both_mode_with_oss_down_keeps_local_and_reports_oss_failed(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server)
    server.stop()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV, timeout=120)
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert report["targets"]["local"]["status"] == "SUCCESS"
    assert report["targets"]["oss"]["status"] == "FAILED"
    assert Path(report["local"]["file"]).exists()


def test_wrong_credentials_fail_with_access_denied_and_hide_the_secret(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server, mode="oss")
    wrong = "Wr0ng-secret-value-for-test"
    done = run_cli(
        "--config",
        str(setup.path),
        "run",
        "nightly",
        env={"TEST_OSS_ID": OSS_ACCESS_KEY_ID, "TEST_OSS_SECRET": wrong},
    )
    assert done.returncode == 1
    [report] = setup.reports_json()
    assert report["status"] == "FAILED"
    assert "access denied" in report["errorMessage"].lower()
    everything = done.stdout + done.stderr + json.dumps(report)
    assert wrong not in everything
    assert keys(server) == set()


def test_remote_retention_deletes_only_old_own_objects(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    setup.job()["retention"] = {"days": 1, "keep_last": 1}
    setup.job()["globals"] = False
    use_oss(setup, server)
    assert run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV).returncode == 0
    old_report = sorted(setup.reports.glob("*.json"))[0]
    doc = json.loads(old_report.read_text())
    doc["startedAt"] = "2024-01-01T00:00:00Z"
    replace_json(old_report, doc)
    old_name = Path(doc["local"]["file"]).name
    bucket(server).put_object(f"{PREFIX}not-ours.dump", b"foreign")
    time.sleep(1.1)
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    remaining = keys(server)
    assert f"{PREFIX}{old_name}" not in remaining
    assert f"{PREFIX}{old_name}.sha256" not in remaining
    assert f"{PREFIX}{old_report.name}" not in remaining
    assert f"{PREFIX}not-ours.dump" in remaining
    [newest] = setup.reports_json()
    assert f"oss://{OSS_BUCKET}/{PREFIX}{old_name}" in newest["retention"]["deleted"]
    assert len([k for k in remaining if k.endswith(".dump") and k != f"{PREFIX}not-ours.dump"]) == 1


def test_oss_lifecycle_shows_and_applies_the_seed_rule(
    setup: Setup, server: OssServer, run_cli: RunCli
) -> None:
    use_oss(setup, server)
    shown = run_cli("--config", str(setup.path), "oss-lifecycle", env=OSS_ENV)
    assert shown.returncode == 0, shown.stderr
    assert "no lifecycle rules" in shown.stdout
    applied = run_cli("--config", str(setup.path), "oss-lifecycle", "--apply", env=OSS_ENV)
    assert applied.returncode == 0, applied.stderr
    assert (
        f"db-backup-{PREFIX} [Enabled] {PREFIX}: to IA after 30 days, delete after 90 days"
        in applied.stdout
    )
    assert b"<Days>90</Days>" in (server.lifecycle(OSS_BUCKET) or b"")


def test_rclone_tool_streams_to_a_remote_end_to_end(
    setup: Setup, cluster: Cluster, run_cli: RunCli, tmp_path: Path
) -> None:
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed (make deps installs Debian's rclone)")
    remote_root = tmp_path / "remote"
    remote_root.mkdir()
    rclone_conf = tmp_path / "rclone.conf"
    rclone_conf.write_text("[localfs]\ntype = local\n")
    setup.document["storage"] = {
        "mode": "both",
        "tool": "rclone",
        "rclone": {
            "remote": "localfs",
            "prefix": f"{remote_root}/pg/",
            "config_file": str(rclone_conf),
        },
    }
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly")
    assert done.returncode == 0, done.stderr
    [report] = setup.reports_json()
    assert report["status"] == "SUCCESS" and report["tool"] == "rclone"
    name = Path(report["local"]["file"]).name
    uploaded = remote_root / "pg" / name
    assert uploaded.read_bytes() == Path(report["local"]["file"]).read_bytes()
    assert sorted(p.name for p in (remote_root / "pg").iterdir()) == sorted(
        [
            name,
            f"{name}.sha256",
            f"{name[:-5]}_globals.sql",
            f"{name[:-5]}_globals.sql.sha256",
            f"{name[:-5]}.json",
        ]
    )
    cluster.restore(uploaded, "shop_from_rclone")
    assert table_fingerprint(cluster, "shop_from_rclone") == table_fingerprint(cluster, "shop")
