"""The restore plan: what `restore --dry-run` prints, line for line, for every kind of backup."""

from __future__ import annotations

import shlex
from pathlib import Path

from db_backup.config import Connection
from db_backup.postgres.server import Server
from db_backup.restore.plan import plan_restore
from db_backup.restore.source import BackupSource
from db_backup.restore.steps import RestoreOptions

SERVER = Server(Connection("/var/run/postgresql", 5432, "postgres", None, 10), {})
CONN = ["--host", "/var/run/postgresql", "--port", "5432", "--username", "postgres"]
CONN += ["--no-password"]
STEM = "shop_20260101T020000Z_h"


def texts(source: BackupSource, options: RestoreOptions) -> list[str]:
    """Returns the plan's lines as --dry-run prints them."""
    return [step.text for step in plan_restore(source, SERVER, options)]


def local_custom(**extra: object) -> BackupSource:
    return BackupSource(
        f"{STEM}.dump",
        "custom",
        "shop",
        expected_sha256="a" * 64,
        local_dir=Path("/data"),
        globals_name=f"{STEM}_globals.sql",
        description=f"/data/{STEM}.dump",
        **extra,  # type: ignore[arg-type]
    )


def test_a_local_custom_dump_is_verified_checked_created_and_restored() -> None:
    assert texts(local_custom(), RestoreOptions()) == [
        f"verify the sha256 of {STEM}.dump against the report and {STEM}.dump.sha256",
        f"check the archive: pg_restore --list /data/{STEM}.dump",
        "create database 'shop' (refused if it exists and is not empty)",
        shlex.join(
            [
                "pg_restore",
                *CONN,
                "--dbname=dbname='shop'",
                "--exit-on-error",
                "--jobs=2",
                f"/data/{STEM}.dump",
            ]
        ),
    ]


def test_globals_clean_jobs_and_no_tablespaces_each_show_in_the_plan() -> None:
    options = RestoreOptions(
        globals=True, clean=True, jobs=4, skip_tablespaces=True, target_database="x"
    )
    assert texts(local_custom(), options) == [
        f"verify the sha256 of {STEM}.dump against the report and {STEM}.dump.sha256",
        f"check the archive: pg_restore --list /data/{STEM}.dump",
        f"restore roles and tablespaces from {STEM}_globals.sql on "
        "postgres@/var/run/postgresql:5432 (existing roles are altered, not re-created)",
        "restore over database 'x' (dropping its objects first)",
        shlex.join(
            [
                "pg_restore",
                *CONN,
                "--dbname=dbname='x'",
                "--exit-on-error",
                "--jobs=4",
                "--clean",
                "--if-exists",
                "--no-tablespaces",
                f"/data/{STEM}.dump",
            ]
        ),
    ]


def test_a_remote_dump_is_downloaded_first_into_the_download_directory() -> None:
    source = BackupSource(
        f"{STEM}.dump",
        "custom",
        "shop",
        expected_sha256="a" * 64,
        remote_keys={"dump": f"p/{STEM}.dump", "checksum": f"p/{STEM}.dump.sha256"},
        description=f"oss://b/p/{STEM}.dump",
    )
    assert texts(source, RestoreOptions(globals=True)) == [
        f"download oss://b/p/{STEM}.dump (CRC-64 checked) and its .sha256",
        f"verify the sha256 of {STEM}.dump against the report and {STEM}.dump.sha256",
        f"check the archive: pg_restore --list <download dir>/{STEM}.dump",
        "restore roles and tablespaces from (no globals file: this step would fail) on "
        "postgres@/var/run/postgresql:5432 (existing roles are altered, not re-created)",
        "create database 'shop' (refused if it exists and is not empty)",
        shlex.join(
            [
                "pg_restore",
                *CONN,
                "--dbname=dbname='shop'",
                "--exit-on-error",
                "--jobs=2",
                f"<download dir>/{STEM}.dump",
            ]
        ),
    ]


def test_a_directory_dump_is_verified_against_its_manifest() -> None:
    source = BackupSource(
        "crm.dump.d", "directory", "crm", local_dir=Path("/srv"), description="/srv/crm.dump.d"
    )
    assert texts(source, RestoreOptions(jobs=0, target_database="it's")) == [
        "verify the sha256 of crm.dump.d against crm.dump.d.sha256 manifest",
        "check the archive: pg_restore --list /srv/crm.dump.d",
        'create database "it\'s" (refused if it exists and is not empty)',
        shlex.join(
            [
                "pg_restore",
                *CONN,
                "--dbname=dbname='it\\'s'",
                "--exit-on-error",
                "--jobs=1",
                "/srv/crm.dump.d",
            ]
        ),
    ]


def test_a_plain_dump_is_restored_with_psql_and_has_no_archive_step() -> None:
    source = BackupSource(
        "crm.sql", "plain", "crm", local_dir=Path("/srv"), description="/srv/crm.sql"
    )
    assert texts(source, RestoreOptions(clean=True, jobs=8)) == [
        "verify the sha256 of crm.sql against crm.sql.sha256",
        "restore over database 'crm' (dropping its objects first)",
        shlex.join(
            [
                "psql",
                *CONN,
                "--dbname=dbname='crm'",
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                "--file",
                "/srv/crm.sql",
            ]
        ),
    ]
