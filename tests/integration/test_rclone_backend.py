"""The rclone target against Debian's real rclone and a local-filesystem remote."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

from db_backup.storage.base import ObjectMissing, StorageError
from db_backup.storage.rclone import RcloneSettings, RcloneTarget

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone on PATH")

FILENAME = "app_20261123T100000Z_db1.dump"


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    """Returns the directory the test remote's prefix points at."""
    directory = tmp_path / "remote" / "postgres" / "backups"
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def target(tmp_path: Path, remote_dir: Path) -> RcloneTarget:
    """Returns an rclone target on a `type = local` remote defined in a test config file."""
    config = tmp_path / "rclone.conf"
    config.write_text("[localfs]\ntype = local\n")
    settings = RcloneSettings(
        remote="localfs", prefix=f"{remote_dir}/", config_file=str(config), extra_args=("-q",)
    )
    return RcloneTarget(settings)


def test_stream_is_stored_byte_identical_under_its_final_name(
    target: RcloneTarget, remote_dir: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 77)
    sink = target.open_stream(FILENAME)
    for start in range(0, len(data), 65536):
        sink.write(data[start : start + 65536])
    assert target.list_names() == []  # still a temporary name while streaming
    stored = sink.commit(hashlib.sha256(data).hexdigest())
    assert stored.location == f"localfs:{remote_dir}/{FILENAME}"
    assert stored.size_bytes == len(data)
    assert (remote_dir / FILENAME).read_bytes() == data
    assert sorted(p.name for p in remote_dir.iterdir()) == [FILENAME]
    assert target.list_names() == [FILENAME]


def test_abort_kills_rcat_and_leaves_nothing(target: RcloneTarget, remote_dir: Path) -> None:
    sink = target.open_stream(FILENAME)
    sink.write(os.urandom(1024 * 1024))
    sink.abort()
    sink.abort()
    assert list(remote_dir.iterdir()) == []
    with pytest.raises(StorageError):
        sink.write(b"more")


def test_failing_rcat_raises_with_stderr_tail(tmp_path: Path) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text("[localfs]\ntype = local\n")
    target = RcloneTarget(
        RcloneSettings(remote="nosuchremote", prefix="x/", config_file=str(config))
    )
    sink = target.open_stream(FILENAME)
    with pytest.raises(StorageError) as error:
        for _ in range(200):
            sink.write(b"x" * 65536)
        sink.commit("0" * 64)
    assert "rcat exited with status" in str(error.value)
    assert "nosuchremote" in str(error.value)
    sink.abort()


def test_put_list_delete(target: RcloneTarget, remote_dir: Path, tmp_path: Path) -> None:
    names = ["a.dump", "a.dump.sha256", "a_globals.sql"]
    for name in names:
        source = tmp_path / name
        source.write_text(name)
        stored = target.put_file(source, name)
        assert stored.location.endswith(f"/{name}")
        assert (remote_dir / name).read_text() == name
    (remote_dir / "nested").mkdir()
    (remote_dir / ".tmp-leftover.dump.123").write_bytes(b"")
    assert target.list_names() == sorted(names)
    removed = target.delete(["a.dump", "missing.dump"])
    assert removed == [f"localfs:{remote_dir}/a.dump"]
    assert target.list_names() == ["a.dump.sha256", "a_globals.sql"]


def test_list_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text("[localfs]\ntype = local\n")
    target = RcloneTarget(
        RcloneSettings(remote="localfs", prefix=f"{tmp_path}/absent/", config_file=str(config))
    )
    assert target.list_names() == []


def test_read_back_head_get_and_list(target: RcloneTarget, remote_dir: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    sink = target.open_stream(FILENAME)
    sink.write(data)
    stored = sink.commit(hashlib.sha256(data).hexdigest())
    assert stored.extra["md5"] == hashlib.md5(data).hexdigest()
    info = target.head(FILENAME)
    assert info.size == len(data)
    assert info.hashes == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    assert target.head(FILENAME, hashes=False).hashes == {}
    out = io.BytesIO()
    got = target.get(FILENAME, out)
    assert out.getvalue() == data and got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.checked == "size" and not got.mismatch
    assert [(o.name, o.size) for o in target.list_objects()] == [(FILENAME, len(data))]
    with pytest.raises(ObjectMissing, match="does not exist"):
        target.head("absent.dump")
    with pytest.raises(ObjectMissing, match="does not exist"):
        target.get("absent.dump", None)
    (remote_dir / "sub.dump.d").mkdir()
    (remote_dir / "sub.dump.d" / "toc.dat").write_bytes(b"toc")
    with pytest.raises(ObjectMissing, match="is a directory"):
        target.get("sub.dump.d", None)  # `rclone cat` of a directory would print its files
    assert [o.name for o in target.list_objects("sub.dump.d/")] == ["sub.dump.d/toc.dat"]
    assert target.list_objects("none.dump.d/") == []


def test_read_back_from_an_unreachable_remote_is_a_storage_error(tmp_path: Path) -> None:
    config = tmp_path / "rclone.conf"
    config.write_text("[localfs]\ntype = local\n")
    target = RcloneTarget(
        RcloneSettings(remote="nosuchremote", prefix="x/", config_file=str(config))
    )
    with pytest.raises(StorageError, match=r"lsjson failed for nosuchremote:x/a\.dump"):
        target.head("a.dump")
    with pytest.raises(StorageError, match="lsjson failed for nosuchremote:x/"):
        target.list_objects()
