"""The loopback OSS server against the real oss2 SDK: protocol, signatures and fault knobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import oss2
import pytest
from oss2.models import BucketLifecycle, LifecycleExpiration, LifecycleRule, PartInfo

from tests.support import oss_fixtures
from tests.support.crc64 import CHECK_VALUE, crc64
from tests.support.oss_fixtures import (
    OSS_ACCESS_KEY_ID,
    OSS_ACCESS_KEY_SECRET,
    OSS_BUCKET,
    OSS_REGION,
    OssServerProcess,
)
from tests.support.oss_server import Credential, OssServer

# The fixtures, for running this module without the project conftest.
oss_server = oss_fixtures.oss_server
oss_bucket = oss_fixtures.oss_bucket
oss_server_process = oss_fixtures.oss_server_process

KEY = "postgres/backups/app_20261123T100000Z_db1.dump"


def _part(bucket: oss2.Bucket, upload_id: str, number: int, data: bytes) -> PartInfo:
    result = bucket.upload_part(KEY, upload_id, number, data)
    return PartInfo(number, result.etag, size=len(data), part_crc=result.crc)


def test_crc64_matches_the_ecma_check_value_and_oss2() -> None:
    assert crc64(b"123456789") == CHECK_VALUE == 0x995DC9BBDF1939FA
    data = os.urandom(5000)
    reference = oss2.utils.Crc64()
    reference.update(data)
    assert crc64(data) == reference.crc


def test_put_get_head_delete_round_trip_with_crc(
    oss_bucket: oss2.Bucket, oss_server: OssServer
) -> None:
    data = os.urandom(300_000)
    put = oss_bucket.put_object(
        KEY,
        data,
        headers={
            "x-oss-meta-sha256": "abc",
            "x-oss-server-side-encryption": "AES256",
            "x-oss-storage-class": "IA",
        },
    )
    assert put.crc == crc64(data)
    got = oss_bucket.get_object(KEY)
    assert got.read() == data  # oss2 checks the CRC of the whole body at the end
    assert got.server_crc == crc64(data)
    head = oss_bucket.head_object(KEY)
    assert head.content_length == len(data)
    assert head.headers["x-oss-meta-sha256"] == "abc"
    assert head.headers["x-oss-server-side-encryption"] == "AES256"
    assert head.headers["x-oss-storage-class"] == "IA"
    assert head.etag == put.etag
    assert abs(head.last_modified - time.time()) < 10
    assert oss_bucket.get_object(KEY, byte_range=(10, 19)).read() == data[10:20]
    oss_bucket.delete_object(KEY)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        oss_bucket.get_object(KEY)
    with pytest.raises(oss2.exceptions.NotFound):
        oss_bucket.head_object(KEY)
    assert oss_server.objects(OSS_BUCKET) == {}


def test_chunked_request_bodies_are_decoded(oss_bucket: oss2.Bucket) -> None:
    pieces = [os.urandom(70_000) for _ in range(3)]
    result = oss_bucket.put_object(KEY, iter(pieces))  # an iterator is sent chunked
    assert result.crc == crc64(b"".join(pieces))
    assert oss_bucket.get_object(KEY).read() == b"".join(pieces)


def test_multipart_upload_checks_combined_crc(
    oss_bucket: oss2.Bucket, oss_server: OssServer
) -> None:
    first, second, last = os.urandom(150_000), os.urandom(120_000), os.urandom(999)
    init = oss_bucket.init_multipart_upload(
        KEY,
        headers={
            "x-oss-server-side-encryption": "KMS",
            "x-oss-server-side-encryption-key-id": "key-1",
            "x-oss-storage-class": "Archive",
        },
    )
    assert [u.upload_id for u in oss_server.pending_uploads(OSS_BUCKET)] == [init.upload_id]
    listed = oss_bucket.list_multipart_uploads(prefix="postgres/")
    assert [u.key for u in listed.upload_list] == [KEY]
    parts = [
        _part(oss_bucket, init.upload_id, n, d) for n, d in enumerate([first, second, last], 1)
    ]
    result = oss_bucket.complete_multipart_upload(KEY, init.upload_id, parts)
    assert result.crc == crc64(first + second + last)
    assert result.etag.endswith("-3")
    assert oss_bucket.get_object(KEY).read() == first + second + last
    head = oss_bucket.head_object(KEY)
    assert head.headers["x-oss-server-side-encryption-key-id"] == "key-1"
    assert head.headers["x-oss-storage-class"] == "Archive"
    assert head.object_type == "Multipart"
    assert oss_server.pending_uploads(OSS_BUCKET) == []


def test_multipart_rejects_small_parts_and_storage_class_on_parts(oss_bucket: oss2.Bucket) -> None:
    init = oss_bucket.init_multipart_upload(KEY)
    parts = [
        _part(oss_bucket, init.upload_id, 1, b"x" * 1000),
        _part(oss_bucket, init.upload_id, 2, b"y"),
    ]
    with pytest.raises(oss2.exceptions.ServerError) as error:
        oss_bucket.complete_multipart_upload(KEY, init.upload_id, parts)
    assert error.value.code == "EntityTooSmall"
    with pytest.raises(oss2.exceptions.InvalidArgument):
        oss_bucket.upload_part(KEY, init.upload_id, 3, b"z", headers={"x-oss-storage-class": "IA"})
    with pytest.raises(oss2.exceptions.InvalidArgument):
        oss_bucket.complete_multipart_upload(
            KEY, init.upload_id, parts[:1], headers={"x-oss-storage-class": "IA"}
        )
    oss_bucket.abort_multipart_upload(KEY, init.upload_id)
    with pytest.raises(oss2.exceptions.NoSuchUpload):
        oss_bucket.abort_multipart_upload(KEY, init.upload_id)


def test_list_objects_v2_pages_and_groups(oss_bucket: oss2.Bucket) -> None:
    names = [f"postgres/backups/db_{n:02d}.dump" for n in range(7)] + ["postgres/other/x", "top"]
    for name in names:
        oss_bucket.put_object(name, b"1")
    page = oss_bucket.list_objects_v2(prefix="postgres/backups/", max_keys=3)
    assert [o.key for o in page.object_list] == names[:3]
    assert page.is_truncated
    every = [
        o.key for o in oss2.ObjectIteratorV2(oss_bucket, prefix="postgres/backups/", max_keys=2)
    ]
    assert every == names[:7]
    grouped = oss_bucket.list_objects_v2(prefix="postgres/", delimiter="/")
    assert grouped.prefix_list == ["postgres/backups/", "postgres/other/"]
    assert grouped.object_list == []
    tops = list(oss2.ObjectIteratorV2(oss_bucket, delimiter="/", max_keys=1))
    assert [o.key for o in tops] == ["postgres/", "top"]
    assert [o.key for o in oss2.ObjectIterator(oss_bucket, max_keys=4)] == sorted(names)


def test_batch_delete_removes_keys(oss_bucket: oss2.Bucket, oss_server: OssServer) -> None:
    for name in ("a/1", "a/2", "a/3"):
        oss_bucket.put_object(name, b"1")
    result = oss_bucket.batch_delete_objects(["a/1", "a/3"])
    assert sorted(result.deleted_keys) == ["a/1", "a/3"]
    assert list(oss_server.objects(OSS_BUCKET)) == ["a/2"]
    assert oss_server.requests_for("DeleteMultipleObjects")[0]["headers"]["content-md5"]


def test_wrong_secret_or_unknown_key_is_refused(oss_server: OssServer) -> None:
    wrong = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, "not-the-secret"), oss_server.endpoint, OSS_BUCKET
    )
    with pytest.raises(oss2.exceptions.ServerError) as error:
        wrong.put_object(KEY, b"1")
    assert (error.value.status, error.value.code) == (403, "SignatureDoesNotMatch")
    unknown = oss2.Bucket(
        oss2.Auth("nobody", OSS_ACCESS_KEY_SECRET), oss_server.endpoint, OSS_BUCKET
    )
    with pytest.raises(oss2.exceptions.ServerError) as error:
        unknown.get_object(KEY)
    assert (error.value.status, error.value.code) == (403, "InvalidAccessKeyId")
    with pytest.raises(oss2.exceptions.ServerError) as error:
        unknown.head_object(KEY)  # HEAD has no body: the error travels in x-oss-err
    assert error.value.code == "InvalidAccessKeyId"
    assert oss_server.objects(OSS_BUCKET) == {}


def test_v4_signatures_are_verified(oss_server: OssServer) -> None:
    good = oss2.Bucket(
        oss2.AuthV4(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET),
        oss_server.endpoint,
        OSS_BUCKET,
        region=OSS_REGION,
    )
    good.put_object("v4/a key with spaces+plus", b"v4", headers={"x-oss-meta-a": "b"})
    assert good.get_object("v4/a key with spaces+plus").read() == b"v4"
    assert [o.key for o in oss2.ObjectIteratorV2(good, prefix="v4/")] == [
        "v4/a key with spaces+plus"
    ]
    bad = oss2.Bucket(
        oss2.AuthV4(OSS_ACCESS_KEY_ID, "wrong"), oss_server.endpoint, OSS_BUCKET, region=OSS_REGION
    )
    with pytest.raises(oss2.exceptions.ServerError) as error:
        bad.put_object("v4/x", b"1")
    assert error.value.code == "SignatureDoesNotMatch"
    other_region = oss2.Bucket(
        oss2.AuthV4(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET),
        oss_server.endpoint,
        OSS_BUCKET,
        region="cn-elsewhere",
    )
    with pytest.raises(oss2.exceptions.ServerError):
        other_region.put_object("v4/x", b"1")


def test_sts_token_is_required_when_configured(tmp_path: Path) -> None:
    credential = Credential("STS.id", "sts-secret", security_token="token-123")
    with OssServer(tmp_path, [OSS_BUCKET], [credential]) as server:
        with_token = oss2.Bucket(
            oss2.StsAuth("STS.id", "sts-secret", "token-123"), server.endpoint, OSS_BUCKET
        )
        with_token.put_object("k", b"1")
        assert server.requests[-1]["headers"]["x-oss-security-token"] == "token-123"
        without = oss2.Bucket(oss2.Auth("STS.id", "sts-secret"), server.endpoint, OSS_BUCKET)
        with pytest.raises(oss2.exceptions.ServerError) as error:
            without.put_object("k", b"1")
        assert error.value.status == 403


def test_lifecycle_is_stored_and_returned(oss_bucket: oss2.Bucket, oss_server: OssServer) -> None:
    with pytest.raises(oss2.exceptions.NoSuchLifecycle):
        oss_bucket.get_bucket_lifecycle()
    rule = LifecycleRule(
        "expire", "postgres/", status=LifecycleRule.ENABLED, expiration=LifecycleExpiration(days=90)
    )
    oss_bucket.put_bucket_lifecycle(BucketLifecycle([rule]))
    rules = oss_bucket.get_bucket_lifecycle().rules
    assert [(r.id, r.prefix, r.expiration.days) for r in rules] == [("expire", "postgres/", 90)]
    assert b"<Days>90</Days>" in (oss_server.lifecycle(OSS_BUCKET) or b"")


def test_fail_fault_answers_the_nth_matching_request_with_503(
    oss_bucket: oss2.Bucket, oss_server: OssServer
) -> None:
    oss_server.fail_request(503, operation="PutObject", nth=2)
    oss_bucket.put_object("one", b"1")
    with pytest.raises(oss2.exceptions.ServerError) as error:
        oss_bucket.put_object("two", b"2" * 200_000)
    assert (error.value.status, error.value.code) == (503, "ServiceUnavailable")
    oss_bucket.put_object("three", b"3")
    assert sorted(oss_server.objects(OSS_BUCKET)) == ["one", "three"]
    oss_server.fail_request(500, times=2)
    for _ in range(2):
        with pytest.raises(oss2.exceptions.ServerError) as error:
            oss_bucket.head_object("one")
        assert error.value.status == 500
    assert oss_bucket.head_object("one").content_length == 1


def test_hang_fault_makes_the_client_time_out(oss_server: OssServer) -> None:
    impatient = oss2.Bucket(
        oss2.Auth(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET),
        oss_server.endpoint,
        OSS_BUCKET,
        connect_timeout=(5, 0.5),
    )
    oss_server.hang_request(3, operation="PutObject")
    with pytest.raises(oss2.exceptions.RequestError) as error:
        impatient.put_object("slow", b"1")
    assert "Read timed out" in str(error.value)
    impatient.put_object("fast", b"1")


def test_drop_fault_closes_the_connection_mid_body(
    oss_bucket: oss2.Bucket, oss_server: OssServer
) -> None:
    init = oss_bucket.init_multipart_upload(KEY)
    oss_server.drop_connection(operation="UploadPart", after_bytes=64 * 1024)
    with pytest.raises(oss2.exceptions.RequestError):
        oss_bucket.upload_part(KEY, init.upload_id, 1, os.urandom(512 * 1024))
    [upload] = oss_server.pending_uploads(OSS_BUCKET)
    assert upload.parts == {}
    assert oss_server.requests_for("UploadPart")[0]["status"] == "dropped"
    oss_bucket.upload_part(KEY, init.upload_id, 1, os.urandom(512 * 1024))


def test_bad_crc_fault_is_caught_by_oss2(oss_bucket: oss2.Bucket, oss_server: OssServer) -> None:
    init = oss_bucket.init_multipart_upload(KEY)
    oss_server.corrupt_crc(operation="UploadPart")
    with pytest.raises(oss2.exceptions.InconsistentError):
        oss_bucket.upload_part(KEY, init.upload_id, 1, os.urandom(1000))
    oss_bucket.upload_part(KEY, init.upload_id, 1, os.urandom(1000))


def test_bandwidth_limit_paces_request_bodies(
    oss_bucket: oss2.Bucket, oss_server: OssServer
) -> None:
    oss_server.set_bandwidth(1024 * 1024)
    started = time.monotonic()
    oss_bucket.put_object("paced", os.urandom(512 * 1024))
    assert time.monotonic() - started >= 0.35
    oss_server.set_bandwidth(None)
    oss_bucket.put_object("fast", os.urandom(512 * 1024))
    paced, fast = oss_server.requests_for("PutObject")
    assert paced["paced_seconds"] >= 0.35
    assert fast["paced_seconds"] == 0.0


def test_standalone_process_is_steered_through_control_endpoint(
    oss_server_process: OssServerProcess,
) -> None:
    bucket = oss2.Bucket(
        oss2.AuthV4(OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET),
        oss_server_process.endpoint,
        OSS_BUCKET,
        region=OSS_REGION,
    )
    bucket.put_object("a", b"1")
    state = oss_server_process.control(action="fail", status=503, operation="GetObject")
    assert state["faults"][0]["operation"] == "GetObject"
    with pytest.raises(oss2.exceptions.ServerError):
        bucket.get_object("a")
    assert bucket.get_object("a").read() == b"1"
    operations = [r["operation"] for r in oss_server_process.requests()]
    assert operations == ["PutObject", "GetObject", "GetObject"]
    assert (oss_server_process.root / OSS_BUCKET / "objects").is_dir()
