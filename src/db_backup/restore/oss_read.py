"""Reading back what the OSS target stored: download, head and hash checks for restore and verify.

Downloads stream to a temporary file in the destination directory while the sha256 and oss2's
CRC-64 are computed on the way; the file gets its final name only when the CRC-64 of the bytes
received equals the one OSS sent (`x-oss-hash-crc64ecma`). Nothing here trusts a key read from a
report: callers build keys from validated file names with `OssTarget.key`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import oss2

from db_backup.config import Config
from db_backup.storage import oss_settings
from db_backup.storage.base import StorageError, split_member
from db_backup.storage.local import describe_os_error
from db_backup.storage.oss import OssTarget
from db_backup.util.execute import Cancelled, CancelToken

CHUNK = 1024 * 1024


class ObjectMissing(StorageError):
    """The object does not exist in the bucket."""


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD (and the tag request) says about one object."""

    key: str
    size: int
    crc64: int | None
    sha256_tag: str | None


@dataclass(frozen=True)
class Downloaded:
    """One object's bytes as received: size, sha256 and CRC-64 (computed and sent)."""

    size: int
    sha256: str
    crc64: int | None
    server_crc64: int | None


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


def oss_target(config: Config) -> OssTarget:
    """Returns the configured OSS target (secrets resolved); raises StorageError if there is none."""
    if config.storage.tool != "oss2" or config.storage.oss is None:
        raise StorageError(
            "oss: reading from OSS needs a storage.oss section and storage.tool oss2 in the config"
        )
    return OssTarget(oss_settings(config))


def _missing(target: OssTarget, key: str) -> ObjectMissing:
    """Returns the error for an object that is not in the bucket."""
    return ObjectMissing(f"oss: object {target.url(key)} does not exist")


def head(target: OssTarget, key: str, with_tag: bool = True) -> ObjectInfo:
    """Returns size, CRC-64 and sha256 tag of `key` without downloading it."""

    def request() -> oss2.models.HeadObjectResult | None:
        try:
            return target.bucket.head_object(key)
        except oss2.exceptions.NotFound:
            return None

    result = target.call("read object metadata", key, request)
    if result is None:
        raise _missing(target, key)
    tag = None
    if with_tag:
        tags = target.call("read tags", key, lambda: target.bucket.get_object_tagging(key))
        tag = tags.tag_set.tagging_rule.get("sha256")
    crc = result.server_crc
    return ObjectInfo(key, int(result.content_length), int(crc) if crc is not None else None, tag)


def _stream(
    target: OssTarget, key: str, sink: object | None, cancel: CancelToken | None
) -> Downloaded:
    """Reads `key` once, writing to `sink` (a binary file) if given; returns what it saw."""
    try:
        result = target.bucket.get_object(key)
    except oss2.exceptions.NoSuchKey:
        raise _missing(target, key) from None
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
            if sink is not None:
                sink.write(chunk)  # type: ignore[attr-defined]
    finally:
        result.close()
    client = result.client_crc
    server = result.server_crc
    return Downloaded(
        size,
        digest.hexdigest(),
        int(client) if client is not None else None,
        int(server) if server is not None else None,
    )


def hash_object(target: OssTarget, key: str, cancel: CancelToken | None = None) -> Downloaded:
    """Downloads `key` without storing it and returns its size, sha256 and CRC-64s."""
    return _stream(target, key, None, cancel)


def download(
    target: OssTarget, key: str, destination: Path, cancel: CancelToken | None = None
) -> Downloaded:
    """Downloads `key` to `destination` (temp name, CRC-64 checked, renamed, mode 0600).

    Raises ObjectMissing when the object is not there and StorageError when the bytes received
    do not have the CRC-64 OSS sent; no file is left under `destination` then.
    """
    temp = destination.with_name(f".tmp-download.{destination.name}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create {describe_os_error(exc, temp)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                got = _stream(target, key, handle, cancel)
            except OSError as exc:
                raise StorageError(f"cannot write {describe_os_error(exc, temp)}") from None
        if got.server_crc64 is not None and got.crc64 != got.server_crc64:
            raise StorageError(
                f"oss: {target.url(key)}: CRC-64 of the downloaded bytes ({got.crc64}) is not "
                f"the one OSS sent ({got.server_crc64}); the download is corrupt"
            )
        os.replace(temp, destination)
    except (StorageError, Cancelled, OSError, KeyboardInterrupt):
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return got


def download_directory(
    target: OssTarget, dir_key: str, destination: Path, cancel: CancelToken | None = None
) -> None:
    """Downloads every object under `dir_key` ("<prefix><name>.dump.d/") into `destination`.

    Raises ObjectMissing when there is no object under it, StorageError for anything else.
    """
    prefix = target.settings.prefix
    if not dir_key.startswith(prefix):
        raise StorageError(f"{target.url(dir_key)}: not under the configured prefix {prefix!r}")
    under = dir_key[len(prefix) :]
    names = target.list_names(under)
    if not names:
        raise ObjectMissing(f"{target.url(dir_key)}: no objects (missing)")
    destination.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        member = split_member(name)
        if member is None:
            raise StorageError(f"{target.url(target.key(name))}: not a directory dump member")
        download(target, target.key(name), destination / member[1], cancel)
