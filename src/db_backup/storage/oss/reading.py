"""Reading back what the OSS target stored: HEAD, GET with the CRC-64 check, listing, URLs.

A GET streams the object once: oss2 computes the CRC-64 of the bytes received (its CRC check is
on for every request, see `client`), the sha256 is computed beside it, and the CRC-64 must equal
the one OSS sent (`x-oss-hash-crc64ecma`). HEAD gives the size and the CRC-64 without the bytes;
the sha256 the sink attached as the object tag `sha256` costs one more request.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import oss2

from db_backup.storage.base import ObjectInfo, ObjectMissing, Received, StorageError, Writer
from db_backup.storage.oss.sink import SHA256_TAG

if TYPE_CHECKING:
    from db_backup.storage.oss.target import OssTarget
    from db_backup.util.cancel import CancelToken

CHUNK = 1024 * 1024


def parse_oss_url(url: str) -> tuple[str, str]:
    """Returns (bucket, key) of `oss://bucket/key`; raises ValueError for anything else.

    The key may end with "/" only for a directory dump (`<name>.dump.d/`, its objects).
    """
    if not url.startswith("oss://"):
        raise ValueError(f"not an oss:// URL: {url!r}")
    bucket, _, key = url[len("oss://") :].partition("/")
    if not bucket or not key or (key.endswith("/") and not key.endswith(".dump.d/")):
        raise ValueError(f"an oss:// URL needs a bucket and an object key: {url!r}")
    return bucket, key


def missing(target: OssTarget, filename: str) -> ObjectMissing:
    """Returns the error for an object that is not in the bucket."""
    return ObjectMissing(f"oss: object {target.location(filename)} does not exist")


def head(target: OssTarget, filename: str, hashes: bool = True) -> ObjectInfo:
    """Returns size, CRC-64 and (with `hashes`) the sha256 tag of an object."""
    key = target.key(filename)

    def request() -> oss2.models.HeadObjectResult | None:
        try:
            return target.bucket.head_object(key)
        except oss2.exceptions.NotFound:
            return None

    result = target.call("read object metadata", key, request)
    if result is None:
        raise missing(target, filename)
    values: dict[str, str] = {}
    if result.server_crc is not None:
        values["crc64"] = str(int(result.server_crc))
    if hashes:
        tags = target.call("read tags", key, lambda: target.bucket.get_object_tagging(key))
        tag = tags.tag_set.tagging_rule.get(SHA256_TAG)
        if tag:
            values["sha256"] = str(tag)
    return ObjectInfo(filename, int(result.content_length), values)


def get(
    target: OssTarget, filename: str, writer: Writer | None, cancel: CancelToken | None
) -> Received:
    """Reads an object once, handing its bytes to `writer`; checks the CRC-64 OSS sent."""
    key = target.key(filename)
    try:
        result = target.bucket.get_object(key)
    except oss2.exceptions.NoSuchKey:
        raise missing(target, filename) from None
    except oss2.exceptions.OssError as exc:
        raise target.error("download", key, exc) from None
    digest = hashlib.sha256()
    size = 0
    try:
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled()
            try:
                chunk = result.read(CHUNK)
            except oss2.exceptions.OssError as exc:
                raise target.error("download", key, exc) from None
            except OSError as exc:  # the connection broke mid-body (requests raises OSErrors)
                raise StorageError(f"oss: download of {target.url(key)} broke: {exc}") from None
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            if writer is not None:
                writer.write(chunk)
    finally:
        result.close()
    client, server = result.client_crc, result.server_crc
    if server is None:
        return Received(size, digest.hexdigest())
    if client is None or int(client) != int(server):
        mismatch = f"CRC-64 of the downloaded bytes is {client}, OSS says {server}"
        return Received(size, digest.hexdigest(), mismatch=mismatch)
    return Received(size, digest.hexdigest(), checked="CRC-64")


def list_objects(target: OssTarget, under: str = "") -> list[ObjectInfo]:
    """Lists the objects directly under the prefix (or `prefix + under`) with their sizes."""
    prefix = target.settings.prefix
    scope = prefix + under

    def listing() -> list[ObjectInfo]:
        found = []
        for info in oss2.ObjectIteratorV2(target.bucket, prefix=scope, delimiter="/"):
            if not info.is_prefix() and info.key != scope:
                found.append(ObjectInfo(info.key[len(prefix) :], int(info.size)))
        return sorted(found, key=lambda o: o.name)

    return target.call("list", None, listing)


def check_head(
    info: ObjectInfo, sha256: str, recorded: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """Returns (passed, problems): the CRC-64 against the report's, the sha256 tag against its
    checksum ("": a directory dump's member, which has no tag). An object without a CRC-64 or
    without the tag is a problem: OSS always sends the one and the sink always writes the other
    for what this program uploads (`info` from a HEAD with `hashes`)."""
    passed: list[str] = []
    problems: list[str] = []
    crc = info.hashes.get("crc64")
    expected_crc = str(recorded.get("crc64", ""))
    if crc is None:
        problems.append("OSS sent no CRC-64 for the object")
    elif expected_crc and crc != expected_crc:
        problems.append(f"CRC-64 is {crc}, the report says {expected_crc}")
    elif expected_crc:
        passed.append("CRC-64")
    if not sha256:  # a member of a directory dump: no tag, its checksum is in the manifest
        return passed, problems
    tag = info.hashes.get("sha256")
    if tag is None:
        problems.append("the object has no sha256 tag")
    elif tag != sha256:
        problems.append(f"sha256 tag is {tag}, the report says {sha256}")
    else:
        passed.append("sha256 tag")
    return passed, problems
