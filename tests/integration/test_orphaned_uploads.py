"""A run SIGKILLed mid-upload: its claim names the multipart upload, the next run aborts it.

The age-based sweep that remains touches only this program's own names inside the prefix, even
when the server ignores the listing's prefix filter.
"""

from __future__ import annotations

import json
import time

import oss2
import pytest

from tests.conftest import RunCli, Setup
from tests.integration.test_hardening import _kill_tree
from tests.integration.test_job_remote import OSS_ENV, use_oss
from tests.support.oss_fixtures import OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET, OSS_BUCKET
from tests.support.oss_server import OssServer
from tests.support.procs import start_run, wait_for_pg_dump

pytestmark = pytest.mark.integration
PREFIX = "postgres/backups/"


def pending(server: OssServer) -> dict[str, str]:
    return {u.upload_id: u.key for u in server.pending_uploads(OSS_BUCKET)}


def test_next_run_aborts_the_upload_of_a_run_killed_mid_upload_and_nothing_foreign(
    setup: Setup, oss_server: OssServer, run_cli: RunCli, slow_db: str
) -> None:
    use_oss(setup, oss_server, mode="oss")
    setup.job()["databases"] = slow_db
    setup.job()["globals"] = False
    setup.write()
    oss_server.hang_request(20, operation="UploadPart")  # the run sits mid-upload
    proc = start_run(setup, env=OSS_ENV)
    dump_pid = wait_for_pg_dump(proc.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not pending(oss_server):
        time.sleep(0.05)
    [(orphan, orphan_key)] = pending(oss_server).items()
    [claim] = (setup.state / "claims").iterdir()
    recorded = json.loads(claim.read_text())["uploads"]
    assert recorded == [{"target": "oss", "key": orphan_key, "uploadId": orphan}]
    _kill_tree(proc, dump_pid)  # SIGKILL: the run cannot abort anything itself
    assert orphan in pending(oss_server)

    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    foreign_inside = bucket.init_multipart_upload(f"{PREFIX}someone-elses-file.tar").upload_id
    outside = bucket.init_multipart_upload("other/shop_20200101T000000Z_h.dump").upload_id
    for upload in oss_server.pending_uploads(OSS_BUCKET):
        if upload.upload_id in {foreign_inside, outside}:
            upload.initiated -= 2 * 86400  # old enough for the age-based sweep
    oss_server.ignore_upload_prefix = True  # the sweep's listing now shows `other/` too

    setup.job()["databases"] = "shop"
    setup.write()
    done = run_cli("--config", str(setup.path), "run", "nightly", env=OSS_ENV)
    assert done.returncode == 0, done.stderr
    assert "aborted an interrupted run's multipart upload" in done.stderr
    assert orphan_key in done.stderr
    assert "aborted stale multipart uploads" not in done.stderr
    assert pending(oss_server) == {
        foreign_inside: f"{PREFIX}someone-elses-file.tar",
        outside: "other/shop_20200101T000000Z_h.dump",
    }
    assert not list((setup.state / "claims").iterdir())
