"""A directory-format dump to OSS in the shipped, sandboxed `db-backup@.service`.

The unit denies writable-executable memory and filters system calls; the directory upload
watches pg_dump's files with inotify through ctypes, so this is where it must be shown to work:
the run uploads files while pg_dump still writes (the journal says how many, and that the watch
was on), every object is on the loopback OSS server on the host, and the manifest stored beside
them checks with `sha256sum -c`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import oss2
import pytest

from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OssServerProcess,
)

from .conftest import PSQL, BootContainer, Container, use_oss

pytestmark = pytest.mark.e2e

UNIT = "db-backup@dirjob.service"
PREFIX = "postgres/backups/"


@pytest.fixture(scope="module")
def directory_ct(boot_container: BootContainer, oss: OssServerProcess) -> Iterator[Container]:
    """A container with a job `dirjob`: `-Fd -j 2` of `dirdb` (a big table, three small) to OSS."""
    with boot_container("dirunit", install=True) as ct:
        ct.exec([*PSQL, "-c", "CREATE DATABASE dirdb"])
        ct.exec([*PSQL, "-d", "dirdb", "-c",
                 "CREATE TABLE big AS SELECT i, md5(i::text) || md5((i*3)::text) AS a "
                 "FROM generate_series(1, 1500000) i; "
                 "CREATE TABLE small0 AS SELECT i FROM generate_series(1, 100) i; "
                 "CREATE TABLE small1 AS SELECT i FROM generate_series(1, 200) i; "
                 "CREATE TABLE small2 AS SELECT i FROM generate_series(1, 300) i"],
                timeout=300)  # fmt: skip
        storage = use_oss(ct, oss, "db-backup@.service", mode="oss")
        ct.write_file(
            "/etc/db-backup/config.yaml",
            f"""
{storage}jobs:
  - name: dirjob
    schedule: "0 3 1 1 *"
    databases: [dirdb]
    globals: false
    dump: {{format: directory, jobs: 2}}
""",
            0o640,
        )
        ct.exec(["chgrp", "postgres", "/etc/db-backup/config.yaml"])
        ct.systemctl("daemon-reload")
        yield ct


def test_directory_dump_goes_up_while_pg_dump_writes_inside_the_sandboxed_unit(
    directory_ct: Container, oss: OssServerProcess, tmp_path: Path
) -> None:
    directory_ct.systemctl("start", UNIT)  # a oneshot: returns when the run is over
    journal = directory_ct.exec(["journalctl", "-u", UNIT, "-o", "json", "--no-pager"]).stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.startswith("{")]
    [uploaded] = [e for e in entries if str(e.get("MESSAGE", "")).startswith("directory uploaded")]
    assert uploaded["WATCHED"] == "true", uploaded  # inotify works under the unit's sandbox
    assert int(uploaded["FILES"]) == 5  # toc.dat and one file per table
    assert int(uploaded["DURING_DUMP"]) >= 1 and int(uploaded["UPLOADS"]) == 5
    [finished] = [e for e in entries if e.get("STATUS") == "SUCCESS" and e.get("REPORT")]
    report = json.loads(directory_ct.read_file(finished["REPORT"]))
    assert report["status"] == "SUCCESS" and report["local"]["file"] == ""
    dirname = report["targets"]["oss"]["location"].rstrip("/").rsplit("/", 1)[1]
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss.endpoint, OSS_BUCKET,
        enable_crc=True,
    )  # fmt: skip
    members = sorted(obj.key for obj in oss2.ObjectIterator(bucket, prefix=f"{PREFIX}{dirname}/"))
    assert len(members) == 5
    assert sorted(f"oss://{OSS_BUCKET}/{key}" for key in members) == sorted(
        report["remote"]["urls"]
    )
    (tmp_path / dirname).mkdir()
    for key in members:
        bucket.get_object_to_file(key, str(tmp_path / dirname / key.rsplit("/", 1)[1]))
    bucket.get_object_to_file(f"{PREFIX}{dirname}.sha256", str(tmp_path / "manifest.sha256"))
    checked = subprocess.run(
        ["sha256sum", "-c", "manifest.sha256"], cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Nothing is left in the staging directory under the state directory.
    staging = directory_ct.sh("ls -A /var/lib/db-backup/staging 2>/dev/null || true").stdout
    assert staging.strip() == ""
