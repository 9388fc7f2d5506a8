"""The restore plan: what `restore --dry-run` prints, line for line, for every kind of backup."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from db_backup.config import Connection
from db_backup.postgres.server import Server
from db_backup.restore.plan import (
    CHANGES,
    Action,
    DatabaseAction,
    database_action,
    plan_restore,
)
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
        f"check the roles file {STEM}_globals.sql (sha256 against the report and its .sha256, "
        "complete)",
        f"restore roles and tablespaces from {STEM}_globals.sql on "
        "postgres@/var/run/postgresql:5432: missing ones are created, existing roles are left "
        "alone; --reset-roles resets them",
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
        "check the roles file (no roles file: this step would fail) (sha256 against the "
        "report and its .sha256, complete)",
        "check that database 'shop' does not exist or is empty (else refused)",
        "restore roles and tablespaces from (no roles file: this step would fail) on "
        "postgres@/var/run/postgresql:5432: missing ones are created, existing roles are left "
        "alone; --reset-roles resets them",
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


# --------------------------------------------------------------------------- plan structure

ENCRYPTED_REPORT = {"job": "nightly", "encryption": {"method": "age", "recipients": ["age1x"]}}


def test_an_encrypted_dump_is_opened_with_the_identity_and_piped_into_pg_restore() -> None:
    source = local_custom(report=ENCRYPTED_REPORT)
    source.dump_name = f"{STEM}.dump.age"
    steps = plan_restore(source, SERVER, RestoreOptions(jobs=4))
    assert [s.action for s in steps] == [
        Action.VERIFY,
        Action.CHECK_IDENTITY,
        Action.PREPARE_DATABASE,
        Action.RESTORE,
    ]
    assert steps[1].text == f"check that the age identity opens {STEM}.dump.age"
    argv = ["pg_restore", *CONN, "--dbname=dbname='shop'", "--exit-on-error"]
    assert list(steps[-1].argv) == argv, "from stdin: no --jobs (pg_restore cannot seek)"
    assert steps[-1].text == (
        f"decrypt /data/{STEM}.dump.age (age, plaintext sha256 checked) | {shlex.join(argv)}"
    )


def test_an_encrypted_plain_dump_reaches_psql_on_its_stdin() -> None:
    source = BackupSource(
        "crm.sql.age", "plain", "crm", local_dir=Path("/srv"), report=ENCRYPTED_REPORT
    )
    steps = plan_restore(source, SERVER, RestoreOptions())
    assert [s.action for s in steps][1] == Action.CHECK_IDENTITY
    assert steps[-1].argv[-2:] == ("--file", "-")


def test_the_real_run_names_its_download_directory_where_a_dry_run_says_download_dir() -> None:
    source = BackupSource(
        "crm.dump", "custom", "crm", remote_keys={"dump": "p/crm.dump"}, description="oss://b/c"
    )
    dry = plan_restore(source, SERVER, RestoreOptions())
    real = plan_restore(source, SERVER, RestoreOptions(), Path("/var/lib/x/download-1"))
    assert dry[-1].argv[-1] == "<download dir>/crm.dump"
    assert real[-1].argv[-1] == "/var/lib/x/download-1/crm.dump"
    assert [s.action for s in dry] == [s.action for s in real]
    local = local_custom()
    assert plan_restore(local, SERVER, RestoreOptions(), Path("/elsewhere")) == plan_restore(
        local, SERVER, RestoreOptions()
    ), "a local dump is restored from where it is"


def source_of(fmt: str, remote: bool, encrypted: bool) -> BackupSource:
    name = {"custom": "a.dump", "plain": "a.sql", "directory": "a.dump.d"}[fmt]
    return BackupSource(
        name,
        fmt,
        "a",
        expected_sha256="b" * 64,
        report=ENCRYPTED_REPORT if encrypted else {"job": "nightly"},
        local_dir=None if remote else Path("/data"),
        remote_keys={"dump": f"p/{name}"} if remote else {},
        description=name,
    )


@pytest.mark.parametrize("fmt", ["custom", "plain", "directory"])
@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("globals_", [False, True])
@pytest.mark.parametrize("clean", [False, True])
def test_every_plan_proves_the_dump_before_it_touches_the_server(
    fmt: str, remote: bool, encrypted: bool, globals_: bool, clean: bool
) -> None:
    source = source_of(fmt, remote, encrypted)
    options = RestoreOptions(globals=globals_, clean=clean)
    steps = plan_restore(source, SERVER, options)
    actions = [s.action for s in steps]
    expected = [Action.DOWNLOAD] if remote else []
    expected.append(Action.VERIFY)
    if encrypted:
        expected.append(Action.CHECK_IDENTITY)
    elif fmt != "plain":
        expected.append(Action.CHECK_ARCHIVE)
    if globals_:
        expected.append(Action.CHECK_GLOBALS)
        expected += [] if clean else [Action.CHECK_DATABASE]
        expected.append(Action.RESTORE_ROLES)
    expected += [Action.PREPARE_DATABASE, Action.RESTORE]
    assert actions == expected
    first_change = next(i for i, a in enumerate(actions) if a in CHANGES)
    assert not CHANGES & set(actions[:first_change]) and set(actions[first_change:]) <= CHANGES
    assert all(s.argv == () for s in steps[:-1]) and steps[-1].argv
    assert steps[-1].text.endswith(shlex.join(steps[-1].argv)), "the line shows what runs"
    assert ("--clean" in steps[-1].argv) is (clean and fmt != "plain")
    jobs = [a for a in steps[-1].argv if a.startswith("--jobs=")]
    assert bool(jobs) is (fmt != "plain" and not encrypted)


@pytest.mark.parametrize(
    ("exists", "clean", "plain", "empty", "action"),
    [
        (False, False, False, None, DatabaseAction.CREATE),
        (False, True, False, None, DatabaseAction.CREATE),
        (False, True, True, None, DatabaseAction.CREATE),
        (False, False, True, None, DatabaseAction.CREATE),
        (True, False, False, True, DatabaseAction.REUSE),
        (True, False, True, True, DatabaseAction.REUSE),
        (True, False, False, False, DatabaseAction.REFUSE),
        (True, False, True, False, DatabaseAction.REFUSE),
        (True, False, False, None, DatabaseAction.REFUSE),
        (True, True, False, None, DatabaseAction.REUSE),
        (True, True, False, False, DatabaseAction.REUSE),
        (True, True, True, None, DatabaseAction.RECREATE),
        (True, True, True, False, DatabaseAction.RECREATE),
    ],
)
def test_the_target_database_is_created_reused_recreated_or_refused(
    exists: bool, clean: bool, plain: bool, empty: bool | None, action: DatabaseAction
) -> None:
    assert database_action(exists, clean, plain, empty) is action


def test_globals_check_the_roles_file_and_the_database_before_any_role_changes() -> None:
    options = RestoreOptions(globals=True, reset_roles=True)
    source = local_custom(report=ENCRYPTED_REPORT)
    steps = plan_restore(source, SERVER, options)
    assert [s.action for s in steps][2:5] == [
        Action.CHECK_GLOBALS,
        Action.CHECK_DATABASE,
        Action.RESTORE_ROLES,
    ]
    assert "decrypted, plaintext sha256 against the report" in steps[2].text
    assert "existing roles get the backup's attributes, passwords and memberships" in steps[4].text


def test_a_partial_restore_chooses_entries_before_it_touches_the_server() -> None:
    from db_backup.restore.select import Relation

    options = RestoreOptions(
        tables=(Relation("app", "accounts"),), schemas=("audit",), target_database="x"
    )
    steps = plan_restore(local_custom(), SERVER, options, Path("/state/restore/d1"))
    assert [s.action for s in steps] == [
        Action.VERIFY,
        Action.CHECK_ARCHIVE,
        Action.SELECT,
        Action.PREPARE_DATABASE,
        Action.RESTORE,
    ]
    assert "table app.accounts, schema audit" in steps[2].text
    assert "refused if one of them exists there" in steps[2].text
    assert "--use-list=/state/restore/d1/selection.list" in steps[-1].argv
    assert "--jobs=2" in steps[-1].argv  # a selection restores in parallel like a whole one
    dry = texts(local_custom(), options)
    assert (
        "<work dir>/selection.list" in dry[2] and "--use-list=<work dir>/selection.list" in dry[-1]
    )


def test_data_only_and_list_in_the_plan() -> None:
    data = plan_restore(local_custom(), SERVER, RestoreOptions(data_only=True))
    assert "--data-only" in data[-1].argv and "--disable-triggers" in data[-1].argv
    assert "--use-list" not in " ".join(data[-1].argv)
    assert "it must exist" in data[-2].text
    listing = plan_restore(local_custom(), SERVER, RestoreOptions(list_only=True, globals=True))
    assert [s.action for s in listing] == [Action.VERIFY, Action.CHECK_ARCHIVE, Action.LIST]
    assert "change nothing" in listing[-1].text
