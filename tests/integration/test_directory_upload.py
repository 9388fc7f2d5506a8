"""`DirectoryUpload` on its own: real files, the real oss2 SDK, the loopback OSS server.

What a run cannot show deterministically: a file that changed after its upload goes up again,
a file the watcher saw closed goes up before `finish`, and `abort` leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from db_backup.backup.directory import DirectoryUpload
from db_backup.storage.oss import OssTarget
from db_backup.util.cancel import CancelToken
from tests.support.oss_fixtures import OSS_BUCKET, target_settings
from tests.support.oss_server import OssServer

pytestmark = pytest.mark.integration

DUMP = "shop_20261124T000000Z_h.dump.d"
PREFIX = "postgres/backups/"


class Claims:
    """Records what the upload said it was about to create, as a run's claim would."""

    def __init__(self) -> None:
        self.intended: list[dict[str, list[str]]] = []

    def __call__(self, names: dict[str, list[str]]) -> None:
        self.intended.append(names)


def make_upload(server: OssServer, directory: Path, claims: Claims) -> DirectoryUpload:
    target = OssTarget(target_settings(server, part_size=256 * 1024), retry_delay=0.01)
    return DirectoryUpload(
        [target], directory, DUMP, 2, CancelToken(), claims, job="j", database="d"
    )


def stored(server: OssServer) -> dict[str, bytes]:
    return {
        key.removeprefix(f"{PREFIX}{DUMP}/"): obj.read_bytes()
        for key, obj in server.objects(OSS_BUCKET).items()
        if key.startswith(f"{PREFIX}{DUMP}/")
    }


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_file_changed_after_its_upload_goes_up_again_with_its_final_bytes(
    oss_server: OssServer, tmp_path: Path
) -> None:
    claims = Claims()
    upload = make_upload(oss_server, tmp_path, claims)  # no watcher: files are submitted here
    big, small = tmp_path / "3001.dat.gz", tmp_path / "toc.dat"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # multipart (over the 1 MiB put limit)
    small.write_bytes(b"toc")
    upload.submit([big.name])
    upload.submit([small.name])
    wait_until(lambda: len(upload.sent) == 2, "the first uploads")
    with big.open("ab") as handle:  # pg_dump appends; the stat tells the versions apart
        handle.write(b"the rest of the table")
    results = upload.finish(sorted([big.name, small.name]))
    assert upload.uploads == 3 and upload.failed == {}
    assert stored(oss_server) == {big.name: big.read_bytes(), small.name: b"toc"}
    assert not oss_server.pending_uploads(OSS_BUCKET)
    checksums = {file: sha for file, (_, sha) in upload.checksums().items()}
    assert checksums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (big, small)}
    [oss] = results.values()
    assert oss.size_bytes == big.stat().st_size + 3
    assert [url.rsplit("/", 1)[1] for url in oss.extra["objects"]] == sorted([big.name, small.name])
    # Each member was claimed before its first byte went up.
    assert claims.intended[-1] == {"oss": [f"{DUMP}/{big.name}", f"{DUMP}/{small.name}"]}


def test_a_closed_file_goes_up_before_finish_and_only_once(
    oss_server: OssServer, tmp_path: Path
) -> None:
    upload = make_upload(oss_server, tmp_path, Claims())
    upload.start()
    assert upload.watching
    path = tmp_path / "3002.dat.gz"
    with path.open("wb") as handle:
        handle.write(b"x" * 5000)
    wait_until(lambda: path.name in upload.sent, "the watcher's upload")
    # Reopened for writing and closed without a change (pg_dump's final fsync): not sent again.
    fd = os.open(path, os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    upload.finish([path.name])
    assert upload.uploads == 1 and upload.during_dump == 1
    assert stored(oss_server) == {path.name: b"x" * 5000}


def test_abort_deletes_every_member_already_up(oss_server: OssServer, tmp_path: Path) -> None:
    upload = make_upload(oss_server, tmp_path, Claims())
    upload.start()
    for n in range(3):
        (tmp_path / f"{n}.dat.gz").write_bytes(os.urandom(2 * 1024 * 1024 if n else 100))
    wait_until(lambda: len(stored(oss_server)) == 3, "three uploads")
    upload.abort("pg_dump failed")
    assert stored(oss_server) == {}
    assert not oss_server.pending_uploads(OSS_BUCKET)


def test_a_member_whose_file_is_gone_at_the_end_is_removed_from_the_remote(
    oss_server: OssServer, tmp_path: Path
) -> None:
    upload = make_upload(oss_server, tmp_path, Claims())
    gone, kept = tmp_path / "gone.dat", tmp_path / "toc.dat"
    gone.write_bytes(b"g")
    kept.write_bytes(b"k")
    upload.submit([gone.name])
    wait_until(lambda: gone.name in upload.sent, "the first upload")
    gone.unlink()
    upload.finish([kept.name])
    assert stored(oss_server) == {kept.name: b"k"}


def test_a_failing_remote_keeps_nothing_and_is_named(oss_server: OssServer, tmp_path: Path) -> None:
    upload = make_upload(oss_server, tmp_path, Claims())
    files = []
    for n in range(4):
        path = tmp_path / f"{n}.dat"
        path.write_bytes(b"d" * 100)
        files.append(path.name)
    upload.submit(files[:1])
    wait_until(lambda: files[0] in upload.sent, "the first upload")
    oss_server.fail_request(500, operation="PutObject", times=1000)
    results = upload.finish(files)
    assert results == {}
    assert "500" in upload.failed["oss"] or "Internal" in upload.failed["oss"]
    oss_server.clear_faults()
    assert stored(oss_server) == {}


def test_a_member_goes_up_only_after_its_claim_was_written(
    oss_server: OssServer, tmp_path: Path
) -> None:
    class FullDisk(Claims):
        def __call__(self, names: dict[str, list[str]]) -> None:
            if len(self.intended) == 1 and not getattr(self, "failed", False):
                self.failed = True
                raise OSError(28, "No space left on device")
            super().__call__(names)

    claims = FullDisk()
    upload = make_upload(oss_server, tmp_path, claims)
    (tmp_path / "a.dat").write_bytes(b"a")
    (tmp_path / "b.dat").write_bytes(b"b")
    upload.submit(["a.dat"])
    with pytest.raises(OSError):
        upload.submit(["b.dat"])  # the claim could not be written: b is not sent
    wait_until(lambda: "a.dat" in upload.sent, "the first upload")
    assert upload.claimed == ["a.dat"] and set(stored(oss_server)) == {"a.dat"}
    upload.finish(["a.dat", "b.dat"])  # the claim works again: b is claimed, then sent
    assert claims.intended[-1] == {"oss": [f"{DUMP}/a.dat", f"{DUMP}/b.dat"]}
    assert stored(oss_server) == {"a.dat": b"a", "b.dat": b"b"}
