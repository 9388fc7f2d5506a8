"""`db-backup verify` against real dumps, the real pg_restore and the loopback OSS server."""

from __future__ import annotations

import json
import os
from typing import Any

import oss2
import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_restore import OSS_ENV, backup, use_oss
from tests.support.oss_fixtures import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_BUCKET
from tests.support.oss_server import OssServer

pytestmark = pytest.mark.integration

PREFIX = "postgres/backups/"


def verify_json(run_cli: RunCli, setup: Setup, *args: str) -> tuple[int, dict[str, Any]]:
    done = run_cli("--config", str(setup.path), "verify", "--json", *args, env=OSS_ENV)
    return done.returncode, json.loads(done.stdout)


def test_good_local_backup_passes_every_check(setup: Setup, run_cli: RunCli) -> None:
    backup(setup, run_cli, "crm")
    code, result = verify_json(run_cli, setup)
    assert code == 0 and result["ok"] and result["checked"] == 1
    [local] = result["results"]
    assert local["target"] == "local" and local["problems"] == []
    assert "sha256 (report)" in local["passed"]
    assert any(p.startswith("pg_restore --list (") for p in local["passed"])
    text = run_cli("--config", str(setup.path), "verify")
    assert text.returncode == 0 and text.stdout.startswith("OK ")


def test_truncated_dump_is_detected(setup: Setup, run_cli: RunCli) -> None:
    report = backup(setup, run_cli, "crm")
    dump = setup.data / report["artefacts"][0]
    with dump.open("r+b") as handle:
        handle.truncate(dump.stat().st_size // 2)
    code, result = verify_json(run_cli, setup)
    assert code == 1 and not result["ok"]
    problems = " ".join(result["results"][0]["problems"])
    assert "truncated" in problems and "sha256 is" in problems
    text = run_cli("--config", str(setup.path), "verify")
    assert text.returncode == 1 and text.stdout.startswith("MISMATCH")
    assert '"verify found a problem"' in text.stderr


def test_missing_local_dump_and_no_matching_backup_fail(setup: Setup, run_cli: RunCli) -> None:
    report = backup(setup, run_cli, "crm")
    (setup.data / report["artefacts"][0]).unlink()
    code, result = verify_json(run_cli, setup)
    assert code == 1 and "missing" in result["results"][0]["problems"][0]
    none = run_cli("--config", str(setup.path), "verify", "--job", "nope")
    assert none.returncode == 1 and "nothing was verified" in none.stderr


def bucket_of(server: OssServer) -> oss2.Bucket:
    auth = oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET)
    return oss2.Bucket(auth, server.endpoint, OSS_BUCKET, enable_crc=True)


def test_remote_check_uses_head_and_tags_without_downloading(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "both")
    backup(setup, run_cli, "crm", env=OSS_ENV)
    oss_server.clear_log()
    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 0, result
    remote = next(r for r in result["results"] if r["target"] == "oss")
    assert {"size", "CRC-64", "sha256 tag"} <= set(remote["passed"])
    assert not [r for r in oss_server.requests_for("GetObject") if r["key"].endswith(".dump")]


def test_replaced_object_is_detected_by_its_crc_without_downloading(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "oss")
    report = backup(setup, run_cli, "crm", env=OSS_ENV)
    key = PREFIX + report["artefacts"][0]
    data = bytearray(oss_server.object_bytes(OSS_BUCKET, key))
    data[100] ^= 0xFF
    bucket_of(oss_server).put_object(key, bytes(data))  # same size, other bytes, no sha256 tag
    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 1
    problems = " ".join(result["results"][0]["problems"])
    assert "CRC-64 is" in problems and "no sha256 tag" in problems


def test_object_corrupted_at_rest_is_detected_by_deep(
    setup: Setup, run_cli: RunCli, oss_server: OssServer
) -> None:
    use_oss(setup, oss_server, "oss")
    report = backup(setup, run_cli, "crm", env=OSS_ENV)
    key = PREFIX + report["artefacts"][0]
    # Flip a byte in the stored data without the index knowing (bit rot): HEAD still
    # reports the original CRC-64, so only downloading and hashing can tell.
    path, _ = oss_server.objects(OSS_BUCKET)[key].segments()[0]
    with open(path, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0x01]))
        handle.flush()
        os.fsync(handle.fileno())
    shallow, _ = verify_json(run_cli, setup, "--remote")
    assert shallow == 0
    code, result = verify_json(run_cli, setup, "--deep")
    assert code == 1
    problems = " ".join(result["results"][0]["problems"])
    assert "downloaded sha256 is" in problems and "CRC-64 of the downloaded bytes" in problems


def test_missing_object_is_reported(setup: Setup, run_cli: RunCli, oss_server: OssServer) -> None:
    use_oss(setup, oss_server, "oss")
    report = backup(setup, run_cli, "crm", env=OSS_ENV)
    bucket_of(oss_server).delete_object(PREFIX + report["artefacts"][0])
    code, result = verify_json(run_cli, setup, "--remote")
    assert code == 1 and result["results"][0]["problems"] == ["object missing"]


@pytest.mark.parametrize("deep", [False, True])
def test_remote_check_without_the_oss_secrets_says_so_clearly(
    setup: Setup, oss_server: OssServer, run_cli: RunCli, deep: bool
) -> None:
    use_oss(setup, oss_server, "both")
    backup(setup, run_cli, "crm", env=OSS_ENV)
    env = {"TEST_OSS_ID": OSS_ACCESS_KEY_ID}  # TEST_OSS_SECRET is not set
    flag = "--deep" if deep else "--remote"
    done = run_cli("--config", str(setup.path), "verify", flag, env=env)
    assert done.returncode == 78, done.stderr
    assert "Traceback" not in done.stderr and "SecretError" not in done.stderr
    assert (
        "db-backup: 1 OSS copy(ies) not checked: storage.oss.access_key_secret: "
        "environment variable TEST_OSS_SECRET is not set"
    ) in done.stderr
    assert "crm" in done.stdout  # the local copy was still checked and shown
