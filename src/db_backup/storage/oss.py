"""The Aliyun OSS target: dumps stream into a multipart upload through the oss2 SDK.

A dump arrives as a stream of unknown length, so `OssSink` cuts it into parts of `part_size`
bytes (growing with the part count so that any dump fits in 10,000 parts), uploads at most
`parallel_parts` of them at a time on a small thread pool, and completes the upload on commit.
Parts that are full wait in the pool's queue while the connections are busy, so the upload and
the dump are decoupled by a buffer of `buffer_size` bytes (never less than parallel_parts + 1
parts); `write()` blocks only when that buffer is full, which bounds memory whatever the dump
size. Small parts keep the pipeline short (a part starts uploading once it is full, so a small
part starts the upload early and leaves little to send after pg_dump ends); the buffer, not the
part size, decides how far the dump may run ahead of a slower link.
oss2 never retries puts, parts or complete; this module does,
with exponential backoff, and keeps oss2's CRC-64 checks on for every part and for the whole
object. The sha256 of the dump is attached to the object as the object tag `sha256` after
completion (see `SHA256_TAG`), because metadata can only be given at initiation, when the digest
is not known yet, and an in-place CopyObject to add it is limited to 1 GB and to restored objects
for Archive classes on real OSS.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import oss2
from oss2.credentials import StaticCredentialsProvider
from oss2.models import (
    BucketLifecycle,
    LifecycleExpiration,
    LifecycleRule,
    PartInfo,
    StorageTransition,
    Tagging,
    TaggingRule,
)

from db_backup.storage.base import StorageError, StoredObject
from db_backup.storage.crc64 import crc64_combine

log = logging.getLogger(__name__)

MIN_PART_SIZE = 100 * 1024  # OSS: every part but the last is at least 100 KB
MAX_PART_SIZE = 5 * 1024**3  # OSS: at most 5 GB per part
MAX_PARTS = 10_000  # OSS: at most 10,000 parts per upload
# Part sizes stay as configured for the first GROWTH_INTERVAL parts and double every
# GROWTH_INTERVAL parts after that (capped at 5 GB): 10,000 parts then hold 1,023,000 x the
# configured size (2 TiB at 2 MiB), and a 10 GB dump never has parts above 4 x the configured size,
# so memory stays near `buffer_size` for the dumps people take with pg_dump.
GROWTH_INTERVAL = 1_000
# With a size hint, parts are made big enough that the hinted size needs at most this many.
HINT_PART_BUDGET = 8_000
# OSS's x-oss-traffic-limit is in bit/s and must lie in this range.
TRAFFIC_LIMIT_MIN_BITS = 819_200
TRAFFIC_LIMIT_MAX_BITS = 838_860_800
SHA256_TAG = "sha256"
STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive")

T = TypeVar("T")


@dataclass(frozen=True)
class OssSettings:
    """Everything the OSS target needs; secrets are already resolved values."""

    endpoint: str
    bucket: str
    prefix: str = "postgres/backups/"
    region: str | None = None
    signature_version: str = "v4"  # "v1" | "v4"
    access_key_id: str = field(default="", repr=False)
    access_key_secret: str = field(default="", repr=False)
    security_token: str | None = field(default=None, repr=False)
    sse: str | None = None  # None | "AES256" | "KMS"
    kms_key_id: str | None = None
    storage_class: str | None = None  # Standard | IA | Archive | ColdArchive
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    retries: int = 5
    part_size: int = 2 * 1024 * 1024
    parallel_parts: int = 2
    buffer_size: int = 24 * 1024 * 1024  # parts filling, waiting and uploading, in bytes
    bandwidth_limit: int | None = None  # bytes/s for the whole upload


def choose_part_size(configured: int, expected_size: int | None, parts_so_far: int) -> int:
    """Returns the size of the next part, given how many parts this upload already has.

    Starts from `configured` (clamped to 100 KB..5 GB). Without a hint the size doubles every
    GROWTH_INTERVAL parts (capped at 5 GB), so that a stream of unknown length fits in 10,000
    parts up to about 1,000,000 x the configured size. An `expected_size` (the database's size)
    raises the size so that it needs at most HINT_PART_BUDGET parts and keeps it flat for those
    parts; the doubling after them leaves room for a dump bigger than the hint.
    """
    base = min(max(configured, MIN_PART_SIZE), MAX_PART_SIZE)
    flat = GROWTH_INTERVAL
    if expected_size is not None and expected_size > 0:
        base = max(base, min(math.ceil(expected_size / HINT_PART_BUDGET), MAX_PART_SIZE))
        flat = max(flat, min(math.ceil(expected_size / base), HINT_PART_BUDGET))
    doublings = max(parts_so_far - flat + GROWTH_INTERVAL, 0) // GROWTH_INTERVAL
    if doublings >= 40:  # 2**40 * 100 KB is far beyond the cap
        return MAX_PART_SIZE
    return min(base << doublings, MAX_PART_SIZE)


def buffer_capacity(buffer_size: int, part_size: int, parallel_parts: int) -> int:
    """Returns the bytes of parts a sink may hold: the buffer, but room for every connection."""
    return max(buffer_size, part_size * (max(parallel_parts, 1) + 1))


def traffic_limit_bits(bandwidth_limit: int | None, parallel_parts: int) -> int | None:
    """Returns the per-request x-oss-traffic-limit (bit/s) that keeps the total under the limit."""
    if not bandwidth_limit:
        return None
    per_request = bandwidth_limit * 8 // max(parallel_parts, 1)
    return min(max(per_request, TRAFFIC_LIMIT_MIN_BITS), TRAFFIC_LIMIT_MAX_BITS)


class _Pacer:
    """Keeps the average upload rate under a byte limit by sleeping between requests."""

    def __init__(self, bytes_per_second: int | None) -> None:
        self._rate = bytes_per_second
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, amount: int) -> None:
        """Reserves `amount` bytes of transfer and sleeps until the reservation starts."""
        if not self._rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + amount / self._rate
        if start > now:
            time.sleep(start - now)


def _crc_mismatch(
    expected: int, reported: object, request_id: str
) -> oss2.exceptions.InconsistentError:
    """Returns the error oss2's own whole-object check raises when the CRC-64s differ."""
    return oss2.exceptions.InconsistentError(
        f"InconsistentError: req_id: {request_id}, operation: multipart upload, CRC checksum "
        f"of client: {expected} is mismatch with oss: {reported}",
        request_id,
    )


def describe_oss_error(error: BaseException) -> str:
    """Returns a short human description of an oss2 exception (never containing credentials)."""
    if isinstance(error, oss2.exceptions.InconsistentError):
        return "CRC-64 mismatch between the uploaded data and what OSS stored"
    if isinstance(error, oss2.exceptions.RequestError):
        inner = getattr(error, "exception", None)
        reason = type(inner).__name__ if inner is not None else "request failed"
        if inner is not None and "timed out" in str(inner).lower():
            reason = "timed out"
        return f"network error ({reason})"
    if isinstance(error, oss2.exceptions.ClientError):
        return f"client error ({error.body or error})"
    if isinstance(error, oss2.exceptions.ServerError):
        code = error.code or "no error code"
        message = error.message or ""
        if error.status == 403:
            return f"access denied ({error.status} {code})"
        if error.code == "NoSuchBucket":
            return f"bucket does not exist ({error.status} {code})"
        text = f"{error.status} {code}"
        return f"server error ({text}: {message})" if message else f"server error ({text})"
    return f"{type(error).__name__}: {error}"


def is_retryable(error: BaseException) -> bool:
    """Returns whether repeating the request may help: network errors, 5xx, CRC mismatches."""
    if isinstance(error, oss2.exceptions.InconsistentError | oss2.exceptions.RequestError):
        return True
    if isinstance(error, oss2.exceptions.ServerError):
        return error.status >= 500 or error.status in (408, 429)
    return False


def make_bucket(settings: OssSettings, pool_size: int | None = None) -> oss2.Bucket:
    """Returns an oss2.Bucket for the settings: signature version, STS token, CRC on, timeouts."""
    token = settings.security_token or None
    if settings.signature_version == "v1":
        auth: Any
        if token:
            auth = oss2.StsAuth(settings.access_key_id, settings.access_key_secret, token)
        else:
            auth = oss2.Auth(settings.access_key_id, settings.access_key_secret)
    elif settings.signature_version == "v4":
        if not settings.region:
            raise StorageError(f"oss: signature v4 needs the region of bucket {settings.bucket}")
        provider = StaticCredentialsProvider(
            settings.access_key_id, settings.access_key_secret, token or ""
        )
        auth = oss2.ProviderAuthV4(provider)
    else:
        raise StorageError(f"oss: unknown signature version {settings.signature_version!r}")
    session = oss2.Session(pool_size=pool_size or max(settings.parallel_parts + 2, 4))
    return oss2.Bucket(
        auth,
        settings.endpoint,
        settings.bucket,
        session=session,
        connect_timeout=(settings.connect_timeout, settings.read_timeout),
        enable_crc=True,
        region=settings.region,
    )


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
            raise StorageError(f"oss: unknown storage class {settings.storage_class!r}")
        self.settings = settings
        self.retry_delay = retry_delay
        self.bucket = make_bucket(settings)
        self.pacer = _Pacer(settings.bandwidth_limit)

    def key(self, filename: str) -> str:
        """Returns the object key of a file name."""
        return f"{self.settings.prefix}{filename}"

    def url(self, key: str) -> str:
        """Returns the oss:// URL of a key, as reports show it."""
        return f"oss://{self.settings.bucket}/{key}"

    def object_headers(self) -> dict[str, str]:
        """Returns the headers a new object gets: SSE, KMS key id, storage class."""
        headers: dict[str, str] = {}
        if self.settings.sse:
            headers["x-oss-server-side-encryption"] = self.settings.sse
            if self.settings.sse == "KMS" and self.settings.kms_key_id:
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
        """Returns a StorageError naming the target, the object and the cause, without secrets."""
        where = (
            self.url(key)
            if key is not None
            else f"oss://{self.settings.bucket}/{self.settings.prefix}"
        )
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        text = f"oss: {what}: {describe_oss_error(error)}{tries} for {where}"
        for secret in (self.settings.access_key_secret, self.settings.security_token):
            if secret:
                text = text.replace(secret, "***")
        return StorageError(text)

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
                    "oss %s failed (%s), retrying in %.1f s", what, describe_oss_error(error), delay
                )
                time.sleep(delay)

    def open_stream(self, filename: str, size_hint: int | None = None) -> OssSink:
        """Starts a multipart upload of `filename`; returns the sink that feeds it."""
        return OssSink(self, self.key(filename), size_hint)

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

    def list_names(self) -> list[str]:
        """Lists the object names directly under the prefix (relative to it), sorted."""
        prefix = self.settings.prefix

        def listing() -> list[str]:
            names = []
            for info in oss2.ObjectIteratorV2(self.bucket, prefix=prefix, delimiter="/"):
                if not info.is_prefix() and info.key != prefix:
                    names.append(info.key[len(prefix) :])
            return sorted(names)

        return self.call("list", None, listing)

    def delete(self, filenames: list[str]) -> list[str]:
        """Deletes these names if present (batch delete) and returns the oss:// URLs removed."""
        present = set(self.list_names())
        keys = [self.key(name) for name in dict.fromkeys(filenames) if name in present]
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

    def sha256_of(self, filename: str) -> str | None:
        """Returns the sha256 tag the stream upload put on an object, or None."""
        key = self.key(filename)
        result = self.call("read tags", key, lambda: self.bucket.get_object_tagging(key))
        value: str | None = result.tag_set.tagging_rule.get(SHA256_TAG)
        return value


@dataclass
class _Uploaded:
    """What the sink keeps of one finished part."""

    number: int
    etag: str
    size: int
    crc: int


class OssSink:
    """Streams one dump into an OSS multipart upload; see the module docstring."""

    def __init__(self, target: OssTarget, key: str, size_hint: int | None = None) -> None:
        self.target = target
        self.key = key
        self.size_hint = size_hint
        self._settings = target.settings
        # One reusable buffer per part size: filling it in place keeps memory flat (no list of
        # pipe-sized chunks to join, no heap fragmentation); each part is copied out once as bytes,
        # which oss2 needs (it treats anything else as a file object).
        self._buffer = bytearray()
        self._buffered = 0
        self._parts_started = 0
        self._size = 0
        self._part_sizes: list[int] = []
        self._futures: list[Future[_Uploaded]] = []
        self._error: StorageError | None = None
        self._state = "open"
        self._held = 0  # bytes of parts handed to the pool and not finished yet
        self._inflight = 0
        self.max_inflight_seen = 0  # for tests and metrics: never above parallel_parts
        self.max_held_seen = 0  # for tests and metrics: never above the buffer capacity
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        headers = {**target.object_headers(), "x-oss-meta-uploaded-by": "db-backup"}
        result = target.call(
            "start multipart upload",
            key,
            lambda: target.bucket.init_multipart_upload(key, headers=headers),
        )
        self.upload_id: str = result.upload_id
        self._pool = ThreadPoolExecutor(
            max_workers=max(self._settings.parallel_parts, 1), thread_name_prefix="oss-part"
        )

    @property
    def part_size(self) -> int:
        """Returns the size the part being filled now will have."""
        return choose_part_size(self._settings.part_size, self.size_hint, self._parts_started)

    def write(self, data: bytes) -> None:
        """Buffers `data` and hands every full part to the upload pool; blocks when it is busy."""
        self._raise_if_failed()
        if self._state != "open":
            raise StorageError(f"oss: write after {self._state} for {self.target.url(self.key)}")
        view = memoryview(data)
        while view:
            size = self.part_size
            if len(self._buffer) != size:
                self._buffer = bytearray(size)  # only ever empty here: parts grow between parts
            room = size - self._buffered
            piece = view[:room]
            self._buffer[self._buffered : self._buffered + len(piece)] = piece
            self._buffered += len(piece)
            view = view[len(piece) :]
            if self._buffered >= size:
                self._submit_part()
        self._raise_if_failed()

    def _submit_part(self) -> None:
        """Copies the filled buffer out as one part and queues it; waits while the buffer is full.

        The part being filled counts against the capacity too, so the sink never holds more
        than `buffer_capacity` bytes of dump. A part bigger than the room left still goes when
        nothing else is held, so progress never depends on the buffer setting.
        """
        size = self._buffered
        capacity = buffer_capacity(
            self._settings.buffer_size, self.part_size, self._settings.parallel_parts
        )
        with self._room:
            while self._held and self._held + size > capacity - self.part_size:
                if self._error is not None:
                    raise self._error
                self._room.wait(0.5)
        self._raise_if_failed()
        data = bytes(memoryview(self._buffer)[:size])
        self._buffered = 0
        self._parts_started += 1
        self._size += size
        self._part_sizes.append(size)
        with self._room:
            self._held += size
            self.max_held_seen = max(self.max_held_seen, self._held)
        self._futures.append(self._pool.submit(self._upload_part, self._parts_started, data))

    def _upload_part(self, number: int, data: bytes) -> _Uploaded:
        """Uploads one part with retries (runs on the pool); records the first failure."""
        with self._room:
            self._inflight += 1
            self.max_inflight_seen = max(self.max_inflight_seen, self._inflight)
        try:
            if self._state != "open" and self._state != "committing":
                raise StorageError("upload stopped")
            target = self.target
            headers = target.transfer_headers()
            target.pacer.take(len(data))
            result = target.call(
                f"upload part {number}",
                self.key,
                lambda: target.bucket.upload_part(
                    self.key, self.upload_id, number, data, headers=headers
                ),
            )
            if result.crc is None:
                raise StorageError(
                    f"oss: upload part {number}: OSS sent no CRC-64 for {target.url(self.key)}"
                )
            return _Uploaded(number, result.etag, len(data), int(result.crc))
        except StorageError as error:
            with self._lock:
                if self._error is None:
                    self._error = error
            raise
        finally:
            with self._room:
                self._inflight -= 1
                self._held -= len(data)
                self._room.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def commit(self, sha256_hex: str) -> StoredObject:
        """Uploads the last part, completes the upload (CRC verified) and tags the sha256."""
        self._raise_if_failed()
        if self._state != "open":
            raise StorageError(f"oss: commit after {self._state} for {self.target.url(self.key)}")
        self._state = "committing"
        target = self.target
        try:
            if self._buffered or not self._futures:
                self._submit_part()
            parts = [future.result() for future in self._futures]
        except StorageError:
            self._state = "failed"
            raise
        # The parts go without their CRCs: oss2 would combine them itself in pure Python at
        # about 6 ms a part (48 s for 8,000 parts); `_complete` makes the same whole-object
        # check with the cached combine of `crc64`.
        infos = [PartInfo(p.number, p.etag, size=p.size) for p in parts]
        expected_crc = 0
        for part in parts:
            expected_crc = crc64_combine(expected_crc, part.crc, part.size)
        try:
            self._state = "completing"
            crc, etag = target.call(
                "complete multipart upload", self.key, lambda: self._complete(infos, expected_crc)
            )
            self._state = "completed"
            tagging = Tagging(TaggingRule())
            tagging.tag_set.add(SHA256_TAG, sha256_hex)
            target.call(
                "tag sha256",
                self.key,
                lambda: target.bucket.put_object_tagging(self.key, tagging),
            )
        except StorageError:
            self._cleanup_after_failed_commit()
            raise
        self._state = "committed"
        self._pool.shutdown(wait=False)
        return StoredObject(
            target.url(self.key),
            self._size,
            {
                "crc64": str(crc if crc is not None else expected_crc),
                "etag": etag,
                "parts": len(parts),
                "partSize": max(self._part_sizes) if self._part_sizes else 0,
                "uploadId": self.upload_id,
                "sha256Tag": sha256_hex,
            },
        )

    def _complete(self, infos: list[PartInfo], expected_crc: int) -> tuple[int | None, str]:
        """Completes the upload and returns (CRC-64, ETag) of the object.

        The object's CRC-64 from OSS must equal the combined CRC of the parts, which oss2 checked
        one by one; a mismatch raises oss2's InconsistentError, as oss2's own check would. When
        a retry finds the upload gone, an earlier attempt succeeded without its answer arriving:
        the object's CRC says so.
        """
        bucket = self.target.bucket
        try:
            result = bucket.complete_multipart_upload(self.key, self.upload_id, infos)
            if result.crc is not None and int(result.crc) != expected_crc:
                raise _crc_mismatch(expected_crc, result.crc, result.request_id)
            return result.crc, result.etag
        except oss2.exceptions.NoSuchUpload:
            head = bucket.head_object(self.key)
            if head.server_crc is not None and int(head.server_crc) == expected_crc:
                return int(head.server_crc), head.etag
            if head.server_crc is not None:
                raise _crc_mismatch(expected_crc, head.server_crc, head.request_id) from None
            raise

    def _cleanup_after_failed_commit(self) -> None:
        """Removes what a failed commit left: the upload, or the object it completed.

        A Complete that failed may still have made the object (an answer lost, or a CRC that
        did not match); the key is this run's own, so whatever is under it goes.
        """
        if self._state in ("completed", "completing"):
            try:
                self.target.call(
                    "delete", self.key, lambda: self.target.bucket.delete_object(self.key)
                )
            except StorageError as error:
                log.error("%s", error)
        self._state = "failed"
        self._abort_upload()

    def abort(self) -> None:
        """Stops the upload and aborts it on OSS so no object and no parts remain; never raises."""
        if self._state in ("aborted", "committed"):
            return
        self._state = "aborted"
        self._buffer = bytearray()
        self._buffered = 0
        try:
            self._abort_upload()
        except Exception as error:  # abort must never raise
            log.error("oss: aborting %s failed: %s", self.target.url(self.key), error)

    def _abort_upload(self) -> None:
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        target = self.target

        def abort_call() -> None:
            # NoSuchUpload: already aborted, or completed and then deleted by the caller.
            with contextlib.suppress(oss2.exceptions.NoSuchUpload):
                target.bucket.abort_multipart_upload(self.key, self.upload_id)

        try:
            target.call("abort multipart upload", self.key, abort_call)
        except StorageError as error:
            log.error("%s", error)


# --------------------------------------------------------------------------- lifecycle


def lifecycle_rule_id(settings: OssSettings) -> str:
    """Returns the id of the lifecycle rule this program manages for the prefix."""
    return f"db-backup-{settings.prefix}"


def lifecycle_rule(
    settings: OssSettings,
    ia_after_days: int = 30,
    expire_after_days: int = 90,
    standard_days: int = 7,
) -> LifecycleRule:
    """Returns the rule: Standard at first, IA after `ia_after_days`, deleted after `expire...`.

    `standard_days` is the minimum time in Standard the seed promises (the newest week); it only
    constrains `ia_after_days`. Stale multipart uploads under the prefix are aborted after a week.
    """
    if not 0 < standard_days <= ia_after_days < expire_after_days:
        raise ValueError(
            "lifecycle needs 0 < standard_days <= ia_after_days < expire_after_days, got "
            f"{standard_days}, {ia_after_days}, {expire_after_days}"
        )
    return LifecycleRule(
        lifecycle_rule_id(settings),
        settings.prefix,
        status=LifecycleRule.ENABLED,
        expiration=LifecycleExpiration(days=expire_after_days),
        storage_transitions=[
            StorageTransition(days=ia_after_days, storage_class=oss2.BUCKET_STORAGE_CLASS_IA)
        ],
        abort_multipart_upload=oss2.models.AbortMultipartUpload(days=7),
    )


def lifecycle_rule_xml(
    settings: OssSettings,
    ia_after_days: int = 30,
    expire_after_days: int = 90,
    standard_days: int = 7,
) -> str:
    """Returns the LifecycleConfiguration XML holding only this program's rule (for review)."""
    rule = lifecycle_rule(settings, ia_after_days, expire_after_days, standard_days)
    xml: bytes = oss2.xml_utils.to_put_bucket_lifecycle(BucketLifecycle([rule]))
    return xml.decode("utf-8")


def get_lifecycle(settings: OssSettings) -> list[LifecycleRule]:
    """Returns the bucket's lifecycle rules ([] when it has none)."""
    target = OssTarget(settings)

    def fetch() -> list[LifecycleRule]:
        try:
            rules: list[LifecycleRule] = target.bucket.get_bucket_lifecycle().rules
            return rules
        except oss2.exceptions.NoSuchLifecycle:
            return []

    return target.call("read lifecycle", None, fetch)


def apply_lifecycle(
    settings: OssSettings,
    ia_after_days: int = 30,
    expire_after_days: int = 90,
    standard_days: int = 7,
) -> list[LifecycleRule]:
    """Puts this program's rule into the bucket lifecycle, keeping other rules; returns all."""
    rule = lifecycle_rule(settings, ia_after_days, expire_after_days, standard_days)
    others = [r for r in get_lifecycle(settings) if r.id != rule.id]
    rules = [*others, rule]
    target = OssTarget(settings)
    target.call(
        "write lifecycle", None, lambda: target.bucket.put_bucket_lifecycle(BucketLifecycle(rules))
    )
    return rules


def describe_lifecycle(rules: list[LifecycleRule]) -> str:
    """Returns one human-readable line per lifecycle rule, e.g. for `db-backup check-oss`."""
    if not rules:
        return "no lifecycle rules"
    lines = []
    for rule in rules:
        steps = []
        for transition in rule.storage_transitions or []:
            when = f"after {transition.days} days" if transition.days is not None else "on a date"
            steps.append(f"to {transition.storage_class} {when}")
        if rule.expiration is not None:
            if rule.expiration.days is not None:
                steps.append(f"delete after {rule.expiration.days} days")
            elif rule.expiration.created_before_date is not None:
                steps.append(f"delete if created before {rule.expiration.created_before_date}")
        if rule.abort_multipart_upload is not None and rule.abort_multipart_upload.days:
            steps.append(f"abort stale uploads after {rule.abort_multipart_upload.days} days")
        prefix = rule.prefix or "(whole bucket)"
        lines.append(f"{rule.id} [{rule.status}] {prefix}: {', '.join(steps) or 'no actions'}")
    return "\n".join(lines)
