"""`OssTarget`: an OSS bucket and prefix behind the storage protocol, with retries."""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import oss2
import structlog

from db_backup.storage.base import (
    ObjectInfo,
    Received,
    StorageError,
    StoredObject,
    Writer,
    split_member,
)
from db_backup.storage.oss import reading
from db_backup.storage.oss.client import make_bucket
from db_backup.storage.oss.errors import describe_oss_error, is_retryable
from db_backup.storage.oss.pacer import Pacer
from db_backup.storage.oss.parts import traffic_limit_bits
from db_backup.storage.oss.settings import STORAGE_CLASSES, OssSettings
from db_backup.storage.oss.sink import OssSink
from db_backup.util.secrets import mask, register

if TYPE_CHECKING:
    from db_backup.util.cancel import CancelToken

log = structlog.get_logger("db_backup.storage.oss")

T = TypeVar("T")

# The names this program stores under the prefix: `<db>_<YYYYmmddTHHMMSSZ>_<host>` followed by
# the dump (custom, plain), the globals file, each maybe `.age` and maybe `.sha256`, or a
# member of a directory dump. The age-based sweep of stale uploads touches no other name.
OWN_UPLOAD_NAME = re.compile(
    r"[^/]+_\d{8}T\d{6}Z_[^/]+"
    r"(?:(?:\.dump|\.sql|_globals\.sql)(?:\.age)?(?:\.sha256)?|\.dump\.d/[^/]+)"
)

# Told of every multipart upload as it starts: (file name, object key, upload id).
UploadListener = Callable[[str, str, str], None]


@dataclass(frozen=True)
class BucketStat:
    """What GetBucketStat says of the whole bucket (OSS refreshes it about once an hour)."""

    storage_bytes: int
    object_count: int
    multipart_upload_count: int


class OssTarget:
    """An OSS bucket and prefix; objects are `<prefix><file name>`."""

    name = "oss"

    def __init__(
        self,
        settings: OssSettings,
        *,
        retry_delay: float = 0.5,
    ) -> None:
        if settings.storage_class is not None and settings.storage_class not in STORAGE_CLASSES:
            raise StorageError(f"unknown OSS storage class {settings.storage_class!r}")
        for secret in (settings.access_key_secret, settings.security_token):
            if secret:
                register(secret)  # masked wherever it might show up, however it was given
        self.settings = settings
        self.retry_delay = retry_delay
        self.bucket = make_bucket(settings)
        self.pacer = Pacer(settings.bandwidth_limit)
        self.upload_listener: UploadListener | None = None

    def key(self, filename: str) -> str:
        """Returns the object key of a file name."""
        return f"{self.settings.prefix}{filename}"

    def url(self, key: str) -> str:
        """Returns the oss:// URL of a key, as reports show it."""
        return f"oss://{self.settings.bucket}/{key}"

    def object_headers(self) -> dict[str, str]:
        """Returns the headers a new object gets: SSE, KMS key id, storage class."""
        headers: dict[str, str] = {}
        sse = self.settings.server_side_encryption
        if sse:
            headers["x-oss-server-side-encryption"] = sse
            if sse == "KMS" and self.settings.kms_key_id:
                headers["x-oss-server-side-encryption-key-id"] = self.settings.kms_key_id
        if self.settings.storage_class:
            headers["x-oss-storage-class"] = self.settings.storage_class
        return headers

    def transfer_headers(self) -> dict[str, str]:
        """Returns the headers for requests carrying data: the traffic limit, if any."""
        bits = traffic_limit_bits(self.settings.bandwidth_limit, self.settings.parallel_parts)
        return {"x-oss-traffic-limit": str(bits)} if bits else {}

    def error(
        self, what: str, key: str | None, error: BaseException, attempts: int = 1
    ) -> StorageError:
        """Returns a StorageError naming the operation, the object and the cause, without secrets.

        The message does not start with the target's name: whoever collects the errors of
        several targets puts it in front (the report keys them by name).
        """
        where = (
            self.url(key)
            if key is not None
            else f"oss://{self.settings.bucket}/{self.settings.prefix}"
        )
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return StorageError(mask(f"{what}: {describe_oss_error(error)}{tries} for {where}"))

    def call(
        self, what: str, key: str | None, function: Callable[[], T], retries: int | None = None
    ) -> T:
        """Runs one SDK call with retries on retryable errors; raises StorageError at the end."""
        limit = self.settings.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            try:
                return function()
            except oss2.exceptions.OssError as error:
                if not is_retryable(error) or attempt > limit:
                    raise self.error(what, key, error, attempt) from None
                delay = min(self.retry_delay * 2 ** (attempt - 1), 30.0)
                delay *= random.uniform(0.8, 1.2)
                log.warning(
                    "oss request failed, retrying",
                    request=what,
                    error=describe_oss_error(error),
                    retry_in_s=round(delay, 1),
                )
                time.sleep(delay)

    def open_stream(self, filename: str, size_hint: int | None = None) -> OssSink:
        """Starts a multipart upload of `filename`; returns the sink that feeds it."""
        return OssSink(self, self.key(filename), size_hint)

    def upload_started(self, key: str, upload_id: str) -> None:
        """Tells the listener (the run's claim) of a multipart upload that has just started."""
        if self.upload_listener is not None:
            self.upload_listener(key[len(self.settings.prefix) :], key, upload_id)

    def abort_upload(self, key: str, upload_id: str) -> bool:
        """Aborts one recorded multipart upload under the prefix; returns False for another key.

        One already gone (completed, or aborted by a lifecycle rule) counts as aborted.
        """
        if not key.startswith(self.settings.prefix):
            return False
        self.call(
            "abort interrupted multipart upload",
            key,
            lambda: _abort_if_present(self.bucket, key, upload_id),
        )
        return True

    def put_file(self, path: Path, filename: str) -> StoredObject:
        """Uploads a small finished file with one PutObject (CRC checked by oss2)."""
        key = self.key(filename)
        headers = {**self.object_headers(), **self.transfer_headers()}
        size = path.stat().st_size
        self.pacer.take(size)
        result = self.call(
            "upload", key, lambda: self.bucket.put_object_from_file(key, str(path), headers=headers)
        )
        return StoredObject(self.url(key), size, {"crc64": str(result.crc), "etag": result.etag})

    def list_names(self, under: str = "") -> list[str]:
        """Lists the object names directly under the prefix, or under `prefix + under`.

        Names stay relative to the prefix (`x.dump.d/toc.dat`), sorted.
        """
        prefix = self.settings.prefix
        scope = prefix + under

        def listing() -> list[str]:
            names = []
            for info in oss2.ObjectIteratorV2(self.bucket, prefix=scope, delimiter="/"):
                if not info.is_prefix() and info.key != scope:
                    names.append(info.key[len(prefix) :])
            return sorted(names)

        return self.call("list", None, listing)

    def location(self, filename: str) -> str:
        """Returns the oss:// URL of a file name."""
        return self.url(self.key(filename))

    def head(self, filename: str, hashes: bool = True) -> ObjectInfo:
        """Returns size and CRC-64 (HEAD) and, with `hashes`, the sha256 tag of an object."""
        return reading.head(self, filename, hashes)

    def get(
        self, filename: str, writer: Writer | None, cancel: CancelToken | None = None
    ) -> Received:
        """Reads an object once (GET), sha256 and CRC-64 computed on the way and checked."""
        return reading.get(self, filename, writer, cancel)

    def list_objects(self, under: str = "") -> list[ObjectInfo]:
        """Lists the objects directly under the prefix (or `prefix + under`) with sizes."""
        return reading.list_objects(self, under)

    def check_head(
        self, info: ObjectInfo, sha256: str, recorded: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Returns (passed, problems): CRC-64 and sha256 tag against the report."""
        return reading.check_head(info, sha256, recorded)

    def delete(self, filenames: list[str]) -> list[str]:
        """Deletes these names if present (batch delete) and returns the oss:// URLs removed."""
        wanted = list(dict.fromkeys(filenames))
        present = set(self.list_names())
        for directory in dict.fromkeys(
            member[0] for member in map(split_member, wanted) if member is not None
        ):
            present.update(self.list_names(f"{directory}/"))
        keys = [self.key(name) for name in wanted if name in present]
        removed: list[str] = []
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            removed.extend(self.url(key) for key in self._delete_batch(batch))
        return removed

    def _delete_batch(self, keys: list[str]) -> list[str]:
        """Deletes up to 1000 keys with one request; returns the keys OSS reports deleted."""
        result = self.call("delete", None, lambda: self.bucket.batch_delete_objects(keys))
        deleted: list[str] = result.deleted_keys
        return deleted

    def bucket_stat(self) -> BucketStat:
        """Returns the bucket's usage from GetBucketStat (raises StorageError)."""
        result = self.call("get bucket stat", None, self.bucket.get_bucket_stat)
        return BucketStat(
            storage_bytes=int(result.storage_size_in_bytes),
            object_count=int(result.object_count),
            multipart_upload_count=int(result.multi_part_upload_count or 0),
        )

    def abort_stale_uploads(
        self, older_than: timedelta = timedelta(days=1), now: datetime | None = None
    ) -> list[str]:
        """Aborts multipart uploads of this program's that were left open; returns their URLs.

        Only uploads of keys under the prefix (checked here, whatever the server's listing
        returns) whose name is one this program gives (OWN_UPLOAD_NAME) and that were
        initiated more than `older_than` before `now` are aborted: a run's claim names its
        own uploads, so this is the fallback for one whose claim was lost.
        """
        prefix = self.settings.prefix
        cutoff = (now or datetime.now(UTC)) - older_than

        def stale() -> list[tuple[str, str]]:
            found = []
            for upload in oss2.MultipartUploadIterator(self.bucket, prefix=prefix):
                if not upload.key.startswith(prefix):
                    continue  # a server that ignores the prefix filter lists others' uploads
                name = upload.key[len(prefix) :]
                initiated = datetime.fromtimestamp(upload.initiation_date, UTC)
                if OWN_UPLOAD_NAME.fullmatch(name) and initiated < cutoff:
                    found.append((upload.key, upload.upload_id))
            return found

        aborted = []
        for key, upload_id in self.call("list multipart uploads", None, stale):
            self.call(
                "abort stale multipart upload",
                key,
                lambda: _abort_if_present(self.bucket, key, upload_id),  # noqa: B023
            )
            aborted.append(self.url(key))
        return aborted


def _abort_if_present(bucket: oss2.Bucket, key: str, upload_id: str) -> None:
    """Aborts one multipart upload; one that is already gone counts as aborted."""
    with contextlib.suppress(oss2.exceptions.NoSuchUpload):
        bucket.abort_multipart_upload(key, upload_id)
