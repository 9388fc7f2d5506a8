"""Retention choice: age, keep_last per database, shared files, failed runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from db_backup.reports.model import StoredReport
from db_backup.reports.retention import Backup, backup_of, choose_expired, owned_by
from db_backup.storage.base import StorageError, split_member
from db_backup.storage.local import LocalTarget

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def backup(
    key: str, days_ago: float, ok: bool = True, db: str = "shop", files: tuple[str, ...] = ()
) -> Backup:
    return Backup(key, db, NOW - timedelta(days=days_ago), ok, files or (key, f"{key}.dump"))


def keys(items: list[Backup]) -> set[str]:
    return {b.key for b in items}


def test_older_than_days_are_deleted_newer_kept() -> None:
    backups = [backup(f"b{i}", i) for i in range(10)]
    expired, _ = choose_expired(backups, days=7, keep_last=3, now=NOW)
    assert keys(expired) == {"b8", "b9"}


def test_keep_last_protects_old_successful_backups() -> None:
    backups = [backup("old1", 30), backup("old2", 40), backup("old3", 50), backup("old4", 60)]
    expired, _ = choose_expired(backups, days=7, keep_last=2, now=NOW)
    assert keys(expired) == {"old3", "old4"}


def test_failed_runs_never_count_towards_keep_last() -> None:
    backups = [
        backup("fail_new", 20, ok=False),
        backup("ok_old", 30),
        backup("fail_old", 40, ok=False),
    ]
    expired, _ = choose_expired(backups, days=7, keep_last=1, now=NOW)
    assert keys(expired) == {"fail_new", "fail_old"}


def test_the_newest_successful_backup_survives_whatever_its_age() -> None:
    expired, _ = choose_expired([backup("only", 400)], days=1, keep_last=1, now=NOW)
    assert expired == []


def test_keep_last_is_per_database() -> None:
    backups = [backup("s1", 30, db="shop"), backup("c1", 30, db="crm"), backup("c2", 40, db="crm")]
    expired, _ = choose_expired(backups, days=7, keep_last=1, now=NOW)
    assert keys(expired) == {"c2"}


def test_a_file_still_named_by_a_kept_backup_is_reported_as_kept() -> None:
    shared = "shop_x_globals.sql"
    backups = [
        backup("old", 30, files=("old", "old.dump", shared)),
        backup("new", 1, files=("new", "new.dump", shared)),
    ]
    expired, still_named = choose_expired(backups, days=7, keep_last=1, now=NOW)
    assert keys(expired) == {"old"} and shared in still_named and "old.dump" not in still_named


def test_hand_edited_report_names_only_plain_files_for_retention() -> None:
    document = {
        "database": "shop",
        "startedAt": "2026-11-01T00:00:00Z",
        "status": "SUCCESS",
        "local": {
            "file": "/data/db-backups/data/shop_1.dump",
            "globalsFile": 7,
            "checksumFile": "../../etc/shadow",
        },
        "remote": {"urls": ["oss://bucket/postgres/backups/shop_1.dump", "oss://bucket/.."]},
        "artefacts": ["shop_1.dump.sha256", "../../etc/passwd", "a\0b", 5, ".", "", None],
    }
    backup = backup_of(StoredReport(Path("/reports/shop_1.json"), document))
    # "shadow" is a plain name but not one of this backup's own: it is never a candidate.
    assert backup.files == ("shop_1.json", "shop_1.dump.sha256", "shop_1.dump")
    assert all("/" not in name and name not in {".", ".."} for name in backup.files)


def test_artefacts_that_are_not_a_list_are_ignored_not_a_traceback() -> None:
    document = {
        "database": "shop",
        "startedAt": "2026-11-01T00:00:00Z",
        "status": "FAILED",
        "local": {"file": ""},
        "remote": {"urls": []},
        "artefacts": "shop_1.dump",
    }
    backup = backup_of(StoredReport(Path("/reports/shop_1.json"), document))
    assert backup.files == ("shop_1.json",) and not backup.successful


def test_encrypted_names_of_the_own_stem_are_owned_and_others_are_not() -> None:
    from db_backup.reports.retention import owned_by

    stem = "shop_20261123T020000Z_host"
    for suffix in (
        ".dump.age",
        ".dump.age.sha256",
        "_globals.sql.age",
        ".sql.age",
        ".sql.age.sha256",
    ):
        assert owned_by(stem + suffix, stem), suffix
    for name in (
        f"{stem}.age",
        f"{stem}.dump.age.bak",
        f"{stem}.json.age",
        f"other_{stem}.dump.age",
        f"../{stem}.dump.age",
    ):
        assert not owned_by(name, stem), name


def test_member_names_of_a_directory_dump() -> None:
    assert split_member("shop_1.dump.d/toc.dat") == ("shop_1.dump.d", "toc.dat")
    for name in (
        "shop_1.dump.d",
        "x/toc.dat",
        ".dump.d/toc.dat",
        "a.dump.d/../x",
        "a.dump.d/b/c",
        "a.dump.d/",
        "/a.dump.d/x",
        7,
    ):
        assert split_member(name) is None, name
    assert owned_by("shop_1.dump.d/3001.dat.gz", "shop_1")
    assert owned_by("shop_1.dump.d", "shop_1")
    assert not owned_by("shop_12.dump.d/toc.dat", "shop_1")
    assert not owned_by("shop_1.dump.d/toc.dat", "")


def test_local_delete_skips_members_and_refuses_other_paths(tmp_path: Path) -> None:
    dump = tmp_path / "shop_1.dump.d"
    dump.mkdir()
    (dump / "toc.dat").write_bytes(b"x")
    target = LocalTarget(tmp_path, "nightly")
    assert target.delete(["shop_1.dump.d/toc.dat"]) == []
    assert (dump / "toc.dat").exists()
    with pytest.raises(StorageError):
        target.delete(["other/toc.dat"])
    assert target.delete(["shop_1.dump.d"]) == [str(dump)]
    assert not dump.exists()
