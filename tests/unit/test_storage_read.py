"""Reading back through the storage protocol: the local backend, downloads, pure checks."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from db_backup.restore.remote import remote_holder
from db_backup.storage.base import ObjectInfo, ObjectMissing, StorageError
from db_backup.storage.download import download, download_directory
from db_backup.storage.local import TEMP_DIR_NAME, LocalTarget
from db_backup.storage.oss.reading import check_head as oss_check_head
from db_backup.storage.oss.reading import parse_oss_url
from db_backup.storage.rclone import RcloneSettings, RcloneTarget
from db_backup.util.cancel import Cancelled, CancelToken

NAME = "crm_20261201T020000Z_db1.dump"
SHA = "a" * 64


@pytest.fixture
def target(tmp_path: Path) -> LocalTarget:
    """A local target whose data directory holds one dump, its .sha256 and a directory dump."""
    data = tmp_path / "data"
    data.mkdir()
    (data / NAME).write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    (data / f"{NAME}.sha256").write_text(f"{SHA}  {NAME}\n")
    (data / "d.dump.d").mkdir()
    (data / "d.dump.d" / "toc.dat").write_bytes(b"toc")
    (data / "d.dump.d" / "3001.dat.gz").write_bytes(b"rows" * 1000)
    (data / TEMP_DIR_NAME).mkdir()
    (data / TEMP_DIR_NAME / "nightly.x.dump").write_bytes(b"half")
    return LocalTarget(data, "nightly")


def test_head_is_a_stat_with_no_integrity_value(target: LocalTarget) -> None:
    info = target.head(NAME)
    assert info == ObjectInfo(NAME, (target.directory / NAME).stat().st_size, {})
    assert target.head("d.dump.d/toc.dat").size == 3
    assert target.check_head(info, SHA, {"sha256": SHA}) == ([], [])
    assert target.location(NAME) == str(target.directory / NAME)


def test_head_and_get_of_a_missing_file_raise_object_missing(target: LocalTarget) -> None:
    with pytest.raises(ObjectMissing, match="missing"):
        target.head("gone.dump")
    with pytest.raises(ObjectMissing, match="missing"):
        target.get("gone.dump", None)
    with pytest.raises(ObjectMissing, match="not a file"):
        target.head("d.dump.d")


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b/c", "/abs", "..", "x/y"])
def test_names_outside_the_data_directory_are_refused(target: LocalTarget, name: str) -> None:
    with pytest.raises(StorageError, match="not a stored file name"):
        target.get(name, None)
    with pytest.raises(StorageError, match="not a stored file name"):
        target.head(name)


def test_get_hands_on_every_byte_once_and_hashes_them(target: LocalTarget) -> None:
    data = (target.directory / NAME).read_bytes()
    sink = io.BytesIO()
    got = target.get(NAME, sink)
    assert sink.getvalue() == data
    assert got.size == len(data) and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.checked == "size" and got.mismatch == ""
    assert target.get(NAME, None).sha256 == got.sha256  # to nowhere: hashed all the same


def test_a_file_that_grows_while_read_is_a_mismatch(target: LocalTarget) -> None:
    path = target.directory / NAME

    class Appender:
        """Appends to the file once, while the first chunk is handed on."""

        done = False

        def write(self, data: bytes) -> None:
            if not self.done:
                with path.open("ab") as handle:
                    handle.write(b"x")
                self.done = True

    got = target.get(NAME, Appender())
    assert "it changed" in got.mismatch and got.checked == ""


def test_get_stops_when_cancelled(target: LocalTarget) -> None:
    token = CancelToken()
    token.cancel("operator asked")
    with pytest.raises(Cancelled):
        target.get(NAME, None, token)


def test_list_objects_gives_sizes_and_leaves_out_temporaries(target: LocalTarget) -> None:
    listed = target.list_objects()
    assert [o.name for o in listed] == [NAME, f"{NAME}.sha256"]
    assert listed[0].size == (target.directory / NAME).stat().st_size
    members = target.list_objects("d.dump.d/")
    assert [(o.name, o.size) for o in members] == [
        ("d.dump.d/3001.dat.gz", 4000),
        ("d.dump.d/toc.dat", 3),
    ]
    assert target.list_objects("none.dump.d/") == []
    with pytest.raises(StorageError, match="not a directory dump"):
        target.list_objects("../")


def test_download_writes_the_file_private_and_returns_its_sha256(
    target: LocalTarget, tmp_path: Path
) -> None:
    destination = tmp_path / "out" / NAME
    destination.parent.mkdir()
    got = download(target, NAME, destination)
    assert destination.read_bytes() == (target.directory / NAME).read_bytes()
    assert destination.stat().st_mode & 0o777 == 0o600
    assert got.sha256 == hashlib.sha256(destination.read_bytes()).hexdigest()
    assert os.listdir(destination.parent) == [NAME]


def test_a_download_that_fails_its_check_leaves_nothing(
    target: LocalTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_get = LocalTarget.get

    def corrupt(self: LocalTarget, *args: Any, **kwargs: Any) -> Any:
        got = real_get(self, *args, **kwargs)
        return type(got)(got.size, got.sha256, mismatch="CRC-64 of the downloaded bytes is 1")

    monkeypatch.setattr(LocalTarget, "get", corrupt)
    with pytest.raises(StorageError, match="the download is corrupt"):
        download(target, NAME, tmp_path / NAME)
    assert list(tmp_path.iterdir()) == [target.directory]
    with pytest.raises(ObjectMissing):
        download(target, "gone.dump", tmp_path / "gone.dump")
    assert list(tmp_path.iterdir()) == [target.directory]


def test_a_download_into_a_missing_directory_names_it(target: LocalTarget, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"cannot create .*no/such"):
        download(target, NAME, tmp_path / "no" / "such" / NAME)


def test_download_directory_returns_each_members_sha256(
    target: LocalTarget, tmp_path: Path
) -> None:
    seen = download_directory(target, "d.dump.d", tmp_path / "d.dump.d")
    assert seen == {
        "3001.dat.gz": hashlib.sha256(b"rows" * 1000).hexdigest(),
        "toc.dat": hashlib.sha256(b"toc").hexdigest(),
    }
    assert (tmp_path / "d.dump.d" / "toc.dat").read_bytes() == b"toc"
    with pytest.raises(ObjectMissing, match="no objects"):
        download_directory(target, "none.dump.d", tmp_path / "none.dump.d")


def test_oss_head_check_compares_crc64_and_the_sha256_tag() -> None:
    good = ObjectInfo(NAME, 10, {"crc64": "123", "sha256": SHA})
    assert oss_check_head(good, SHA, {"crc64": "123"}) == (["CRC-64", "sha256 tag"], [])
    bad = ObjectInfo(NAME, 10, {"crc64": "124"})
    passed, problems = oss_check_head(bad, SHA, {"crc64": "123"})
    assert passed == []
    assert problems == ["CRC-64 is 124, the report says 123", "the object has no sha256 tag"]
    other = ObjectInfo(NAME, 10, {"sha256": "b" * 64})
    _, problems = oss_check_head(other, SHA, {})
    assert problems[0] == "OSS sent no CRC-64 for the object"
    assert problems[1].startswith("sha256 tag is bbbb")
    member = ObjectInfo("d.dump.d/toc.dat", 3, {"crc64": "9"})
    assert oss_check_head(member, "", {}) == ([], [])


def test_rclone_head_check_uses_the_hashes_the_remote_offers() -> None:
    target = RcloneTarget(RcloneSettings(remote="r", prefix="p/"))
    both = ObjectInfo(NAME, 10, {"sha256": SHA, "md5": "m"})
    assert target.check_head(both, SHA, {"md5": "m"}) == (["sha256 (rclone)", "md5 (rclone)"], [])
    _, problems = target.check_head(both, "c" * 64, {"md5": "n"})
    assert problems == [
        f"sha256 (rclone) is {SHA}, the report says {'c' * 64}",
        "md5 (rclone) is m, the report says n",
    ]
    # A remote without hashes (or a report without the md5): nothing to compare, no problem.
    assert target.check_head(ObjectInfo(NAME, 10), SHA, {}) == ([], [])
    assert target.location(NAME) == f"r:p/{NAME}"


def test_parse_oss_url() -> None:
    assert parse_oss_url("oss://b/p/x.dump") == ("b", "p/x.dump")
    assert parse_oss_url("oss://b/p/x.dump.d/") == ("b", "p/x.dump.d/")
    for bad in ("s3://b/x", "oss://b", "oss:///x", "oss://b/p/"):
        with pytest.raises(ValueError):
            parse_oss_url(bad)


def report(targets: dict[str, Any] | None, urls: list[str]) -> dict[str, Any]:
    document: dict[str, Any] = {"remote": {"urls": urls}}
    if targets is not None:
        document["targets"] = targets
    return document


def test_remote_holder_is_the_remote_target_the_report_names() -> None:
    ok = {"status": "SUCCESS", "files": [NAME]}
    assert remote_holder(report({"local": ok, "rclone": ok}, ["r:p/x"])) == "rclone"
    assert remote_holder(report({"local": ok, "oss": ok}, ["oss://b/x"])) == "oss"
    failed = {"status": "FAILED", "error": "x"}
    assert remote_holder(report({"local": ok, "oss": failed}, ["oss://b/x"])) is None
    gone = {"status": "SUCCESS", "files": []}  # retention deleted its files
    assert remote_holder(report({"oss": gone}, ["oss://b/x"])) is None
    assert remote_holder(report({"local": ok}, [])) is None
    # The seed's shell-script reports have only remote.urls.
    assert remote_holder(report(None, ["oss://b/p/x.dump"])) == "oss"
    assert remote_holder(report(None, ["store:p/x.dump"])) == "rclone"
