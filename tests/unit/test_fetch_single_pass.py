"""A downloaded backup is verified with the sha256 seen while it arrived: never read again."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from db_backup.restore import checksums, fetch
from db_backup.restore.fetch import BackupFiles, verify_files
from db_backup.restore.source import BackupSource, RestoreError

NAME = "crm_20261201T020000Z_db1.dump"


def no_second_read(*args: object, **kwargs: object) -> str:
    raise AssertionError("the downloaded file was read again to hash it")


def test_a_downloaded_dump_is_verified_with_the_sha256_seen_on_the_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"PGDMP" + b"x" * 1000
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / NAME).write_bytes(data)
    (tmp_path / f"{NAME}.sha256").write_text(f"{digest}  {NAME}\n")
    source = BackupSource(NAME, "custom", "crm", expected_sha256=digest, description="r:p/x")
    monkeypatch.setattr(fetch, "sha256_file", no_second_read)
    files = BackupFiles(tmp_path / NAME, tmp_path / f"{NAME}.sha256", None, sha256_seen=digest)
    assert verify_files(source, files).sha256 == digest
    # What arrived is what is checked: a download whose bytes differ from the report is refused.
    other = BackupFiles(tmp_path / NAME, None, None, sha256_seen="0" * 64)
    with pytest.raises(RestoreError, match=r"checksum mismatch.*nothing was restored"):
        verify_files(source, other)


def test_a_downloaded_directory_dump_is_checked_with_the_members_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "crm.dump.d"
    directory.mkdir()
    members = {"toc.dat": b"toc", "3001.dat.gz": b"rows"}
    seen = {}
    lines = []
    for member, data in sorted(members.items()):
        (directory / member).write_bytes(data)
        seen[member] = hashlib.sha256(data).hexdigest()
        lines.append(f"{seen[member]}  crm.dump.d/{member}\n")
    manifest = tmp_path / "crm.dump.d.sha256"
    manifest.write_text("".join(lines))
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()
    source = BackupSource("crm.dump.d", "directory", "crm", expected_sha256=expected)
    monkeypatch.setattr(checksums, "sha256_file", no_second_read)
    files = BackupFiles(directory, manifest, None, members_seen=seen)
    assert verify_files(source, files).sha256 == expected
    seen["toc.dat"] = "0" * 64  # the bytes that arrived were not the manifest's
    with pytest.raises(RestoreError, match=r"toc\.dat: checksum mismatch"):
        verify_files(source, BackupFiles(directory, manifest, None, members_seen=seen))
