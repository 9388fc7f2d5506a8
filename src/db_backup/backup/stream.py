"""One pg_dump's stdout fanned out to every target in one pass (custom and plain formats).

The stream is read once: each chunk goes to the sha256, to every target's sink (a local file
through its temporary name, an OSS multipart upload, rclone rcat) and to the progress callback.
A target that fails mid-stream is dropped (FAILED) while the others go on; with every target
gone, pg_dump is stopped. With age recipients the stream goes through `age --encrypt` first, so
the targets and the checksum see only ciphertext.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from db_backup.backup.context import ProgressCallback
from db_backup.config import JobConfig
from db_backup.postgres import tools as pg
from db_backup.storage import crypto
from db_backup.storage.base import StorageError, StoredObject, StreamSink, Target
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import StreamingChild
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.stream")

CHUNK_SIZE = 1024 * 1024


@dataclass
class StreamOutcome:
    """What one dump produced: its checksum and size, and per target the object or the error."""

    sha256: str
    size: int
    stored: dict[str, StoredObject] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    checksum_text: str = ""
    plaintext_sha256: str = ""  # when encrypted: of pg_dump's output (sha256/size: stored bytes)
    plaintext_size: int = 0
    # Per target, the names stored for the dump itself: the dump's name, or for a directory
    # dump on a remote every member (`<stem>.dump.d/<file>`). Empty: just the dump's name.
    names: dict[str, list[str]] = field(default_factory=dict)


class _Fanout:
    """The open sinks of one dump, and the targets that failed so far with their errors."""

    def __init__(self, job: str, database: str) -> None:
        self.job, self.database = job, database
        self.sinks: dict[str, StreamSink] = {}
        self.failed: dict[str, str] = {}

    def open(self, targets: list[Target], name: str, size_hint: int | None) -> None:
        """Opens a sink per target; raises StorageError when not one of them opens."""
        for target in targets:
            try:
                self.sinks[target.name] = target.open_stream(name, size_hint)
            except StorageError as exc:
                self.failed[target.name] = str(exc)
        self.raise_if_none_left()

    def raise_if_none_left(self) -> None:
        """Raises StorageError naming every target's error when no sink is left."""
        if not self.sinks:
            raise StorageError("; ".join(f"{n}: {e}" for n, e in self.failed.items()))

    def write(self, chunk: bytes) -> None:
        """Writes `chunk` to every sink; one that fails is aborted, dropped and logged."""
        for name, sink in list(self.sinks.items()):
            try:
                sink.write(chunk)
            except StorageError as exc:
                sink.abort()
                del self.sinks[name]
                self.failed[name] = str(exc)
                log.error(
                    "target failed during the dump",
                    job=self.job,
                    database=self.database,
                    target=name,
                    error=mask(str(exc)),
                )

    def commit(self, sha256: str, outcome: StreamOutcome) -> None:
        """Commits every sink at once (the local fsync overlaps the upload's last parts)."""
        with ThreadPoolExecutor(max_workers=len(self.sinks), thread_name_prefix="commit") as pool:
            futures = {name: pool.submit(s.commit, sha256) for name, s in self.sinks.items()}
        self.sinks.clear()
        for name, future in futures.items():
            try:
                outcome.stored[name] = future.result()
            except StorageError as exc:
                outcome.failed[name] = str(exc)

    def abort(self) -> None:
        """Aborts every sink still open (nothing of this dump stays on its target)."""
        for sink in self.sinks.values():
            sink.abort()
        self.sinks.clear()


class _Dump:
    """The children of one stream: pg_dump, and `age --encrypt` after it when encrypting."""

    def __init__(
        self,
        job: JobConfig,
        env: dict[str, str],
        database: str,
        snapshot: str | None,
        recipients: list[str] | None,
    ) -> None:
        self.encryptor = crypto.start_encryption(recipients) if recipients else None
        try:
            self.child = pg.start_dump(job, env, database, snapshot)
        except BaseException:
            if self.encryptor is not None:
                self.encryptor.terminate()
            raise
        self.plain = hashlib.sha256()  # of pg_dump's output, when it is encrypted on the way
        self.plain_size = 0

    def chunks(self, cancel: CancelToken) -> Iterator[bytes]:
        """Yields the bytes to store: pg_dump's output, or its ciphertext."""
        if self.encryptor is None:
            return self.child.chunks(CHUNK_SIZE, cancel)
        return self.encryptor.pump(self.child.stdout_fd, CHUNK_SIZE, cancel, self._observe)

    def _observe(self, data: bytes) -> None:
        self.plain.update(data)
        self.plain_size += len(data)

    def check(self) -> None:
        """Raises CommandError unless every child exited 0."""
        self.child.check()
        if self.encryptor is not None:
            self.encryptor.check()

    def terminate(self) -> None:
        """Stops every child."""
        self.child.terminate()
        if self.encryptor is not None:
            self.encryptor.terminate()


def stream_dump(
    job: JobConfig,
    env: dict[str, str],
    targets: list[Target],
    database: str,
    dump_name: str,
    cancel: CancelToken,
    progress: ProgressCallback | None,
    size_hint: int | None = None,
    snapshot: str | None = None,
    recipients: list[str] | None = None,
) -> StreamOutcome:
    """Feeds pg_dump's stdout to sha256 and every target's sink in one pass.

    With `recipients`, the stream goes through `age --encrypt` first: the sinks (and the
    checksum) see only ciphertext, and the plaintext's checksum is kept beside it.
    """
    fanout = _Fanout(job.name, database)
    try:
        fanout.open(targets, dump_name, size_hint)
        dump = _Dump(job, env, database, snapshot, recipients)
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in dump.chunks(cancel):
                digest.update(chunk)
                size += len(chunk)
                fanout.write(chunk)
                fanout.raise_if_none_left()  # every target gone: pg_dump is stopped below
                if progress is not None:
                    progress(job.name, database, size)
            dump.check()
        except BaseException:
            dump.terminate()
            raise
        log.debug("dump stream ended", job=job.name, database=database, bytes=size)
        sha256 = digest.hexdigest()
        outcome = StreamOutcome(
            sha256, size, failed=fanout.failed, checksum_text=f"{sha256}  {dump_name}\n"
        )
        if dump.encryptor is not None:
            outcome.plaintext_sha256 = dump.plain.hexdigest()
            outcome.plaintext_size = dump.plain_size
        fanout.commit(sha256, outcome)
        log.debug("targets committed", job=job.name, database=database)
        return outcome
    finally:
        fanout.abort()


def encrypt_to_file(
    child: StreamingChild, recipients: list[str], path: Path, cancel: CancelToken
) -> tuple[str, str]:
    """Encrypts `child`'s stdout with age into a new 0600 file; returns (plain, stored) sha256."""
    plain, stored = hashlib.sha256(), hashlib.sha256()
    encryptor = None
    try:
        encryptor = crypto.start_encryption(recipients)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in encryptor.pump(child.stdout_fd, CHUNK_SIZE, cancel, plain.update):
                stored.update(chunk)
                out.write(chunk)
        child.check()
        encryptor.check()
    except BaseException:
        child.terminate()
        if encryptor is not None:
            encryptor.terminate()
        path.unlink(missing_ok=True)
        raise
    return plain.hexdigest(), stored.hexdigest()
