"""The OSS target with the real oss2 SDK against the loopback OSS server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import oss2
import pytest

from db_backup.storage.base import StorageError
from db_backup.storage.oss import (
    SHA256_TAG,
    OssSettings,
    OssTarget,
    apply_lifecycle,
    describe_lifecycle,
    get_lifecycle,
    lifecycle_rule,
)
from tests.support import oss_fixtures
from tests.support.crc64 import crc64
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
    target_settings,
)
from tests.support.oss_server import Credential, OssServer

# The fixture, for running this module without the project conftest.
oss_server = oss_fixtures.oss_server

PART = 128 * 1024
FILENAME = "app_20261123T100000Z_db1.dump"
KEY = f"postgres/backups/{FILENAME}"


def _settings(server: OssServer, **overrides: object) -> OssSettings:
    defaults: dict[str, object] = {"part_size": PART, "retries": 3, "read_timeout_seconds": 5}
    return target_settings(server, **{**defaults, **overrides})


def _target(server: OssServer, **overrides: object) -> OssTarget:
    return OssTarget(_settings(server, **overrides), retry_delay=0.01)


def _stream(target: OssTarget, data: bytes, chunk: int = 50_000) -> tuple[object, str]:
    """Feeds `data` through a sink in pipe-sized pieces and commits; returns (stored, sha)."""
    sink = target.open_stream(FILENAME)
    for start in range(0, len(data), chunk):
        sink.write(data[start : start + chunk])
    sha = hashlib.sha256(data).hexdigest()
    return sink.commit(sha), sha


def _assert_nothing_left(server: OssServer) -> None:
    assert KEY not in server.objects(OSS_BUCKET)
    assert server.pending_uploads(OSS_BUCKET) == []


def test_stream_upload_round_trips_with_crc_and_sha256_tag(oss_server: OssServer) -> None:
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 12345)
    target = _target(oss_server)
    stored, sha = _stream(target, data)
    assert stored.location == f"oss://{OSS_BUCKET}/{KEY}"  # type: ignore[attr-defined]
    assert stored.size_bytes == len(data)  # type: ignore[attr-defined]
    extra = stored.extra  # type: ignore[attr-defined]
    assert extra["crc64"] == str(crc64(data))
    assert extra["parts"] == len(data) // PART + 1
    assert extra["partSize"] == PART
    assert oss_server.object_bytes(OSS_BUCKET, KEY) == data
    assert oss_server.objects(OSS_BUCKET)[KEY].tags == {SHA256_TAG: sha}
    assert oss_server.pending_uploads(OSS_BUCKET) == []
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    assert bucket.get_object(KEY).read() == data


def test_tiny_and_empty_dumps_become_one_part_objects(oss_server: OssServer) -> None:
    target = _target(oss_server)
    stored, _ = _stream(target, b"tiny")
    assert stored.extra["parts"] == 1  # type: ignore[attr-defined]
    assert oss_server.object_bytes(OSS_BUCKET, KEY) == b"tiny"
    stored, _ = _stream(target, b"")
    assert stored.size_bytes == 0  # type: ignore[attr-defined]
    assert oss_server.object_bytes(OSS_BUCKET, KEY) == b""


@pytest.mark.parametrize(
    "arm",
    [
        pytest.param(lambda s: s.fail_request(503, operation="UploadPart", nth=2), id="503-part"),
        pytest.param(
            lambda s: s.fail_request(500, operation="UploadPart", times=2), id="500-twice"
        ),
        pytest.param(
            lambda s: s.drop_connection(operation="UploadPart", after_bytes=4096), id="drop"
        ),
        pytest.param(lambda s: s.hang_request(3, operation="UploadPart", nth=3), id="hang"),
        pytest.param(lambda s: s.corrupt_crc(operation="UploadPart", nth=2), id="bad-crc"),
        pytest.param(
            lambda s: s.fail_request(503, operation="CompleteMultipartUpload"), id="503-complete"
        ),
        pytest.param(
            lambda s: s.fail_request(503, operation="InitiateMultipartUpload"), id="503-init"
        ),
    ],
)
def test_transient_faults_are_retried_and_the_upload_succeeds(
    oss_server: OssServer, arm: object
) -> None:
    data = os.urandom(5 * PART + 1000)
    target = _target(oss_server, read_timeout_seconds=1.0)
    arm(oss_server)  # type: ignore[operator]
    stored, _ = _stream(target, data)
    assert oss_server.object_bytes(OSS_BUCKET, KEY) == data
    assert stored.extra["crc64"] == str(crc64(data))  # type: ignore[attr-defined]
    assert all(f.hits == 1 or f.kind == "error" for f in oss_server.faults())
    assert sum(f.hits for f in oss_server.faults()) >= 1
    assert oss_server.pending_uploads(OSS_BUCKET) == []


def test_persistent_part_failure_raises_and_abort_leaves_nothing(oss_server: OssServer) -> None:
    target = _target(oss_server, retries=2)
    oss_server.fail_request(503, operation="UploadPart", times=1000)
    sink = target.open_stream(FILENAME)
    with pytest.raises(StorageError) as error:
        for _ in range(40):
            sink.write(os.urandom(PART // 2))
            time.sleep(0.01)
        sink.commit("0" * 64)
    message = str(error.value)
    assert f"oss://{OSS_BUCKET}/{KEY}" in message
    assert "503" in message and "after 3 attempts" in message
    sink.abort()
    sink.abort()  # safe twice
    _assert_nothing_left(oss_server)
    assert len(oss_server.requests_for("AbortMultipartUpload")) == 1


def _commit_fails(target: OssTarget, size: int, match: str) -> None:
    """Streams `size` random bytes, expects the commit to fail with `match`, then aborts."""
    sink = target.open_stream(FILENAME)
    sink.write(os.urandom(size))
    with pytest.raises(StorageError, match=match):
        sink.commit("0" * 64)
    sink.abort()


def test_persistent_crc_mismatch_raises_storage_error(oss_server: OssServer) -> None:
    target = _target(oss_server, retries=1)
    oss_server.corrupt_crc(operation="UploadPart", times=1000)
    _commit_fails(target, PART + 10, "CRC-64 mismatch")
    _assert_nothing_left(oss_server)


def test_object_crc_mismatch_on_complete_removes_the_object(oss_server: OssServer) -> None:
    # OSS makes the object but its CRC-64 (here: the answer's) differs from the parts' combined
    # CRC: the commit fails naming the mismatch, and the object it made is deleted.
    target = _target(oss_server, retries=1)
    oss_server.corrupt_crc(operation="CompleteMultipartUpload", times=10)
    oss_server.corrupt_crc(operation="HeadObject", times=10)
    _commit_fails(target, 3 * PART + 7, "CRC-64 mismatch")
    _assert_nothing_left(oss_server)
    assert oss_server.requests_for("DeleteObject")


def test_one_garbled_complete_answer_is_settled_by_the_objects_crc(oss_server: OssServer) -> None:
    target = _target(oss_server, retries=2)
    oss_server.corrupt_crc(operation="CompleteMultipartUpload", times=1)
    data = os.urandom(3 * PART + 7)
    sink = target.open_stream(FILENAME)
    sink.write(data)
    stored = sink.commit("0" * 64)
    assert stored.extra["crc64"] == str(crc64(data))
    assert oss_server.object_bytes(OSS_BUCKET, KEY) == data


def test_failed_complete_aborts_and_leaves_nothing(oss_server: OssServer) -> None:
    target = _target(oss_server, retries=1)
    oss_server.fail_request(503, operation="CompleteMultipartUpload", times=10)
    _commit_fails(target, 2 * PART + 5, "complete multipart upload")
    _assert_nothing_left(oss_server)


def test_failed_tagging_removes_the_completed_object(oss_server: OssServer) -> None:
    target = _target(oss_server, retries=0)
    oss_server.fail_request(503, operation="PutObjectTagging")
    sink = target.open_stream(FILENAME)
    sink.write(os.urandom(PART + 5))
    with pytest.raises(StorageError, match="tag sha256"):
        sink.commit("0" * 64)
    _assert_nothing_left(oss_server)


@pytest.mark.parametrize(
    "failing_part",
    [pytest.param(3, id="last-part-sent-by-commit"), pytest.param(1, id="first-part-before")],
)
def test_a_commit_that_fails_on_a_part_aborts_the_upload_itself(
    oss_server: OssServer, failing_part: int
) -> None:
    target = _target(oss_server, retries=0)
    oss_server.fail_request(503, operation="UploadPart", nth=failing_part, times=100)
    sink = target.open_stream(FILENAME)
    with contextlib.suppress(StorageError):  # an early failure may already show in write()
        sink.write(os.urandom(2 * PART + 5))  # two full parts; commit sends the last 5 bytes
    with pytest.raises(StorageError, match="upload part"):
        sink.commit("0" * 64)
    # No abort() from the caller: the failed commit must not leave parts to be billed.
    _assert_nothing_left(oss_server)
    assert oss_server.requests_for("AbortMultipartUpload")
    sink.abort()  # still safe, and nothing more to do
    assert len(oss_server.requests_for("AbortMultipartUpload")) == 1


def _start_upload(server: OssServer, key: str) -> str:
    """Starts a multipart upload from outside the target (as a killed run leaves one)."""
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), server.endpoint, OSS_BUCKET
    )
    upload_id: str = bucket.init_multipart_upload(key).upload_id
    bucket.upload_part(key, upload_id, 1, b"x" * 1000)
    return upload_id


def test_stale_uploads_of_this_program_are_aborted_and_nothing_else(
    oss_server: OssServer,
) -> None:
    target = _target(oss_server)
    ours = "postgres/backups/app_20261120T020000Z_db1.dump"
    deeper = "postgres/backups/archive/app_20261120T020000Z_db1.dump"
    elsewhere = "other/app_20261120T020000Z_db1.dump"
    for key in (ours, deeper, elsewhere):
        _start_upload(oss_server, key)
    assert target.abort_stale_uploads(timedelta(days=1)) == []  # all younger than a day
    assert len(oss_server.pending_uploads(OSS_BUCKET)) == 3

    two_days_later = datetime.now(UTC) + timedelta(days=2)
    aborted = target.abort_stale_uploads(timedelta(days=1), now=two_days_later)
    assert aborted == [f"oss://{OSS_BUCKET}/{ours}"]
    left = sorted(u.key for u in oss_server.pending_uploads(OSS_BUCKET))
    assert left == sorted([deeper, elsewhere])
    assert [r["status"] for r in oss_server.requests_for("AbortMultipartUpload")] == [204]


def test_abort_midway_removes_parts_and_upload(oss_server: OssServer) -> None:
    target = _target(oss_server)
    sink = target.open_stream(FILENAME)
    for _ in range(6):
        sink.write(os.urandom(PART))
    sink.abort()
    sink.abort()
    _assert_nothing_left(oss_server)
    with pytest.raises(StorageError):
        sink.write(b"more")


def test_wrong_secret_says_access_denied_without_the_secret(oss_server: OssServer) -> None:
    secret = "wrong-secret-value-1234"
    for version in ("v1", "v4"):
        target = _target(oss_server, access_key_secret=secret, signature_version=version)
        with pytest.raises(StorageError) as error:
            target.open_stream(FILENAME)
        message = str(error.value)
        assert "access denied" in message.lower()
        assert secret not in message
        assert f"oss://{OSS_BUCKET}/{KEY}" in message
        with pytest.raises(StorageError, match=r"(?i)access denied"):
            target.list_names()
    _assert_nothing_left(oss_server)
    assert oss_server.requests_for("InitiateMultipartUpload")[0]["status"] == 403


def test_sts_token_is_sent(tmp_path: Path) -> None:
    credential = Credential("STS.key", "sts-secret", security_token="sts-token-xyz")
    with OssServer(tmp_path, [OSS_BUCKET], [credential], region=OSS_REGION) as server:
        for version in ("v1", "v4"):
            target = _target(
                server,
                access_key_id="STS.key",
                access_key_secret="sts-secret",
                security_token="sts-token-xyz",
                signature_version=version,
            )
            _stream(target, os.urandom(1000))
        without = _target(
            server, access_key_id="STS.key", access_key_secret="sts-secret", security_token=None
        )
        with pytest.raises(StorageError, match="access denied"):
            without.list_names()


@pytest.mark.parametrize(
    ("sse", "kms_key_id", "storage_class"),
    [("AES256", None, "IA"), ("KMS", "kms-key-42", "Archive"), (None, None, None)],
)
def test_encryption_and_storage_class_are_set_at_initiation_only(
    oss_server: OssServer, sse: str | None, kms_key_id: str | None, storage_class: str | None
) -> None:
    target = _target(
        oss_server, server_side_encryption=sse, kms_key_id=kms_key_id, storage_class=storage_class
    )
    _stream(target, os.urandom(3 * PART))
    [init] = oss_server.requests_for("InitiateMultipartUpload")
    assert init["headers"].get("x-oss-server-side-encryption") == sse
    assert init["headers"].get("x-oss-server-side-encryption-key-id") == kms_key_id
    assert init["headers"].get("x-oss-storage-class") == storage_class
    for later in oss_server.requests_for("UploadPart") + oss_server.requests_for(
        "CompleteMultipartUpload"
    ):
        assert "x-oss-storage-class" not in later["headers"]
    stored = oss_server.objects(OSS_BUCKET)[KEY]
    assert stored.headers.get("x-oss-server-side-encryption") == sse
    assert stored.headers.get("x-oss-storage-class") == storage_class


def test_put_file_list_and_delete(oss_server: OssServer, tmp_path: Path) -> None:
    target = _target(oss_server, server_side_encryption="AES256", storage_class="IA")
    names = ["a.dump", "a.dump.sha256", "b_globals.sql"]
    for name in names:
        path = tmp_path / name
        path.write_bytes(name.encode() * 100)
        stored = target.put_file(path, name)
        assert stored.location == f"oss://{OSS_BUCKET}/postgres/backups/{name}"
        assert stored.extra["crc64"] == str(crc64(name.encode() * 100))
    put = oss_server.requests_for("PutObject")[0]
    assert put["headers"]["x-oss-server-side-encryption"] == "AES256"
    assert put["headers"]["x-oss-storage-class"] == "IA"
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    bucket.put_object("postgres/backups/nested/x", b"1")
    bucket.put_object("postgres/other", b"1")
    assert target.list_names() == sorted(names)
    removed = target.delete(["a.dump", "a.dump.sha256", "never-existed"])
    assert removed == [
        f"oss://{OSS_BUCKET}/postgres/backups/a.dump",
        f"oss://{OSS_BUCKET}/postgres/backups/a.dump.sha256",
    ]
    assert target.list_names() == ["b_globals.sql"]
    assert target.delete([]) == []


def test_list_names_pages_through_many_objects(oss_server: OssServer) -> None:
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    names = [f"db_{n:04d}.dump" for n in range(250)]
    for name in names:
        bucket.put_object(f"postgres/backups/{name}", b"")
    oss_server.fail_request(503, operation="ListObjectsV2", nth=2)
    target = _target(oss_server)
    assert target.list_names() == names


def test_bandwidth_limit_sets_traffic_limit_and_paces(oss_server: OssServer) -> None:
    target = _target(oss_server, bandwidth_limit=2 * 1024 * 1024, parallel_parts=2)
    started = time.monotonic()
    _stream(target, os.urandom(8 * PART))  # 1 MiB at 2 MiB/s
    assert time.monotonic() - started >= 0.4
    for part in oss_server.requests_for("UploadPart"):
        assert part["headers"]["x-oss-traffic-limit"] == str(2 * 1024 * 1024 * 8 // 2)


def test_lifecycle_is_applied_scoped_to_the_prefix(oss_server: OssServer) -> None:
    settings = _settings(oss_server)
    assert get_lifecycle(settings) == []
    assert describe_lifecycle([]) == "no lifecycle rules"
    bucket = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    other = oss2.models.LifecycleRule(
        "someone-else",
        "logs/",
        status="Enabled",
        expiration=oss2.models.LifecycleExpiration(days=3),
    )
    bucket.put_bucket_lifecycle(oss2.models.BucketLifecycle([other]))
    apply_lifecycle(settings)
    apply_lifecycle(settings)  # idempotent: replaces its own rule
    rules = get_lifecycle(settings)
    assert [r.id for r in rules] == ["someone-else", "db-backup-postgres/backups/"]
    ours = rules[1]
    assert ours.prefix == "postgres/backups/"
    assert ours.expiration.days == 90
    assert [(t.days, t.storage_class) for t in ours.storage_transitions] == [(30, "IA")]
    text = describe_lifecycle(rules)
    assert "db-backup-postgres/backups/ [Enabled] postgres/backups/: to IA after 30 days" in text
    assert "delete after 90 days" in text
    assert b"<Prefix>postgres/backups/</Prefix>" in (oss_server.lifecycle(OSS_BUCKET) or b"")
    with pytest.raises(ValueError):
        lifecycle_rule(settings, ia_after_days=100, expire_after_days=90)


class PartMeter:
    """Watches a sink from outside: wraps the bucket's upload_part to see parts come and go.

    `max_in_flight` is the most upload_part calls running at once; `max_outstanding` the most
    bytes the sink had accepted through write() and OSS had not yet acknowledged, sampled each
    time write() returns (the part being filled plus every part queued or uploading).
    """

    def __init__(self, target: OssTarget) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self.acknowledged = 0
        self.written = 0
        self.max_outstanding = 0
        upload_part = target.bucket.upload_part

        def measured(*args: object, **kwargs: object) -> object:
            data = args[3]
            assert isinstance(data, bytes)
            with self._lock:
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                return upload_part(*args, **kwargs)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self.acknowledged += len(data)

        target.bucket.upload_part = measured

    def wrote(self, amount: int) -> None:
        """Records that write() returned after taking `amount` more bytes."""
        with self._lock:
            self.written += amount
            self.max_outstanding = max(self.max_outstanding, self.written - self.acknowledged)


def _feed(target: OssTarget, total: int, part: int) -> tuple[PartMeter, object]:
    """Streams `total` bytes in 64 KiB writes, then commits; returns (meter, stored)."""
    meter = PartMeter(target)
    block = os.urandom(part)
    chunk = 64 * 1024
    sink = target.open_stream(FILENAME)
    for offset in range(0, total, chunk):
        start = offset % part
        piece = block[start : start + chunk]
        sink.write(piece)
        meter.wrote(len(piece))
    return meter, sink.commit("0" * 64)


def test_in_flight_parts_never_exceed_the_bound_for_200_mb(oss_server: OssServer) -> None:
    part = 1024 * 1024
    total = 200 * 1024 * 1024
    target = _target(oss_server, part_size=part, parallel_parts=2)
    meter, stored = _feed(target, total, part)
    assert stored.size_bytes == total  # type: ignore[attr-defined]
    assert stored.extra["parts"] == 200  # type: ignore[attr-defined]
    assert meter.max_in_flight == 2
    assert oss_server.objects(OSS_BUCKET)[KEY].size == total


def _peak_of_feed(target: OssTarget, total: int, part: int) -> tuple[PartMeter, int]:
    """Feeds `total` bytes under tracemalloc; returns (meter, peak traced bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        meter, stored = _feed(target, total, part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size_bytes == total  # type: ignore[attr-defined]
    return meter, peak


@pytest.mark.parametrize("buffer_parts", [3, 8])
def test_memory_peak_is_bounded_by_the_buffer(oss_server: OssServer, buffer_parts: int) -> None:
    part = 1024 * 1024
    target = _target(oss_server, part_size=part, parallel_parts=2, buffer_size=buffer_parts * part)
    meter, peak = _peak_of_feed(target, 32 * part, part)
    # The bytes not yet acknowledged (the part being filled, parts waiting and uploading) fit
    # in the buffer...
    assert meter.max_outstanding <= buffer_parts * part
    assert meter.max_in_flight <= 2
    # ...and the process's traced peak is that plus the test's 1 MiB block and oss2's buffers.
    assert peak < buffer_parts * part + 3 * part, f"peak {peak / part:.1f} MiB"


def test_a_buffer_smaller_than_the_connections_need_is_raised(oss_server: OssServer) -> None:
    part = 1024 * 1024
    target = _target(oss_server, part_size=part, parallel_parts=2, buffer_size=part)
    meter, peak = _peak_of_feed(target, 16 * part, part)
    assert meter.max_outstanding <= 3 * part  # room for both connections and the part filling
    assert meter.max_in_flight == 2
    assert peak < 3 * part + 3 * part, f"peak {peak / part:.1f} MiB"
