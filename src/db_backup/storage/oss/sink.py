"""`OssSink`: one dump streamed into an OSS multipart upload.

A dump arrives as a stream of unknown length, so the sink cuts it into parts of `part_size`
bytes (growing with the part count so that any dump fits in 10,000 parts), uploads at most
`parallel_parts` of them at a time on a small thread pool, and completes the upload on commit.
Parts that are full wait in the pool's queue while the connections are busy, so the upload and
the dump are decoupled by a buffer of `buffer_size` bytes (never less than parallel_parts + 1
parts); `write()` blocks only when that buffer is full, which bounds memory whatever the dump
size. Small parts keep the pipeline short (a part starts uploading once it is full, so a small
part starts the upload early and leaves little to send after pg_dump ends); the buffer, not the
part size, decides how far the dump may run ahead of a slower link.

oss2 never retries puts, parts or complete; the target's `call` does, with exponential backoff,
and oss2's CRC-64 checks stay on for every part and for the whole object. The sha256 of the dump
is attached to the object as the object tag `sha256` after completion (see `SHA256_TAG`), because
metadata can only be given at initiation, when the digest is not known yet, and an in-place
CopyObject to add it is limited to 1 GB and to restored objects for Archive classes on real OSS.

Every way out of the sink other than a successful commit aborts the multipart upload, so no
parts are left to be billed: a failed write (through `abort`), a failed commit (itself).
"""

from __future__ import annotations

import contextlib
import enum
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import oss2
import structlog
from oss2.models import PartInfo, Tagging, TaggingRule

from db_backup.storage.base import StorageError, StoredObject
from db_backup.storage.crc64 import crc64_combine
from db_backup.storage.oss.errors import crc_mismatch
from db_backup.storage.oss.parts import buffer_capacity, choose_part_size

if TYPE_CHECKING:
    from db_backup.storage.oss.target import OssTarget

log = structlog.get_logger("db_backup.storage.oss")

SHA256_TAG = "sha256"


class SinkState(enum.Enum):
    """Where a sink is in its life; only OPEN and COMMITTING let parts upload."""

    OPEN = "open"
    COMMITTING = "committing"  # the last parts are uploading
    COMPLETING = "completing"  # CompleteMultipartUpload sent: the object may exist
    COMPLETED = "completed"  # the object exists, its tag is not written yet
    COMMITTED = "committed"
    FAILED = "failed"  # a commit failed and cleaned up after itself
    ABORTED = "aborted"


_UPLOADING = frozenset({SinkState.OPEN, SinkState.COMMITTING})
_FINISHED = frozenset({SinkState.COMMITTED, SinkState.FAILED, SinkState.ABORTED})


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
        # Guards what the pool threads share with the writer: state, first error, bytes held.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._state = SinkState.OPEN
        self._error: StorageError | None = None
        self._held = 0  # bytes of parts handed to the pool and not finished yet
        headers = {**target.object_headers(), "x-oss-meta-uploaded-by": "db-backup"}
        result = target.call(
            "start multipart upload",
            key,
            lambda: target.bucket.init_multipart_upload(key, headers=headers),
        )
        self.upload_id: str = result.upload_id
        try:
            target.upload_started(key, self.upload_id)  # the claim names it before any part
        except BaseException:
            with contextlib.suppress(oss2.exceptions.OssError):
                target.bucket.abort_multipart_upload(key, self.upload_id)
            raise
        self._pool = ThreadPoolExecutor(
            max_workers=max(self._settings.parallel_parts, 1), thread_name_prefix="oss-part"
        )

    @property
    def state(self) -> SinkState:
        """Returns where the sink is in its life."""
        with self._lock:
            return self._state

    def _set_state(self, state: SinkState) -> None:
        with self._lock:
            self._state = state

    @property
    def part_size(self) -> int:
        """Returns the size the part being filled now will have."""
        return choose_part_size(self._settings.part_size, self.size_hint, self._parts_started)

    def write(self, data: bytes) -> None:
        """Buffers `data` and hands every full part to the upload pool; blocks when it is busy."""
        self._raise_if_failed()
        state = self.state
        if state is not SinkState.OPEN:
            raise StorageError(f"write after {state.value} for {self.target.url(self.key)}")
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
        self._futures.append(self._pool.submit(self._upload_part, self._parts_started, data))

    def _upload_part(self, number: int, data: bytes) -> _Uploaded:
        """Uploads one part with retries (runs on the pool); records the first failure."""
        try:
            if self.state not in _UPLOADING:
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
                    f"upload part {number}: OSS sent no CRC-64 for {target.url(self.key)}"
                )
            return _Uploaded(number, result.etag, len(data), int(result.crc))
        except StorageError as error:
            with self._lock:
                if self._error is None:
                    self._error = error
            raise
        finally:
            with self._room:
                self._held -= len(data)
                self._room.notify_all()

    def _raise_if_failed(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    def commit(self, sha256_hex: str) -> StoredObject:
        """Uploads the last part, completes the upload (CRC verified) and tags the sha256.

        On any failure the upload is aborted (and an object the Complete made is deleted)
        before the error is raised; a later `abort` has nothing left to do.
        """
        state = self.state
        if state is not SinkState.OPEN:
            raise StorageError(f"commit after {state.value} for {self.target.url(self.key)}")
        self._set_state(SinkState.COMMITTING)
        target = self.target
        try:
            self._raise_if_failed()
            if self._buffered or not self._futures:
                self._submit_part()
            parts = [future.result() for future in self._futures]
            # The parts go without their CRCs: oss2 would combine them itself in pure Python at
            # about 6 ms a part (48 s for 8,000 parts); `_complete` makes the same whole-object
            # check with the cached combine of `crc64`.
            infos = [PartInfo(p.number, p.etag, size=p.size) for p in parts]
            expected_crc = 0
            for part in parts:
                expected_crc = crc64_combine(expected_crc, part.crc, part.size)
            self._set_state(SinkState.COMPLETING)
            crc, etag = target.call(
                "complete multipart upload", self.key, lambda: self._complete(infos, expected_crc)
            )
            self._set_state(SinkState.COMPLETED)
            tagging = Tagging(TaggingRule())
            tagging.tag_set.add(SHA256_TAG, sha256_hex)
            target.call(
                "tag sha256",
                self.key,
                lambda: target.bucket.put_object_tagging(self.key, tagging),
            )
        except BaseException:
            self._cleanup_after_failed_commit()
            raise
        self._set_state(SinkState.COMMITTED)
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
                raise crc_mismatch(expected_crc, result.crc, result.request_id)
            return result.crc, result.etag
        except oss2.exceptions.NoSuchUpload:
            head = bucket.head_object(self.key)
            if head.server_crc is not None and int(head.server_crc) == expected_crc:
                return int(head.server_crc), head.etag
            if head.server_crc is not None:
                raise crc_mismatch(expected_crc, head.server_crc, head.request_id) from None
            raise

    def _cleanup_after_failed_commit(self) -> None:
        """Removes what a failed commit left: the upload, or the object it completed.

        A Complete that failed may still have made the object (an answer lost, or a CRC that
        did not match); the key is this run's own, so whatever is under it goes. Never raises.
        """
        if self.state in (SinkState.COMPLETED, SinkState.COMPLETING):
            try:
                self.target.call(
                    "delete", self.key, lambda: self.target.bucket.delete_object(self.key)
                )
            except StorageError as error:
                log.error("could not delete the object of a failed commit", error=str(error))
        self._set_state(SinkState.FAILED)
        self._abort_upload()

    def abort(self) -> None:
        """Stops the upload and aborts it on OSS so no object and no parts remain; never raises."""
        with self._lock:
            if self._state in _FINISHED:
                return
            self._state = SinkState.ABORTED
        self._buffer = bytearray()
        self._buffered = 0
        self._abort_upload()

    def _abort_upload(self) -> None:
        """Stops the pool and aborts the multipart upload on OSS; logs instead of raising."""
        try:
            for future in self._futures:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            target = self.target

            def abort_call() -> None:
                # NoSuchUpload: already aborted, or completed and then deleted by the caller.
                with contextlib.suppress(oss2.exceptions.NoSuchUpload):
                    target.bucket.abort_multipart_upload(self.key, self.upload_id)

            target.call("abort multipart upload", self.key, abort_call)
        except Exception as error:  # aborting must never raise
            log.error("could not abort the multipart upload", upload=self.key, error=str(error))
