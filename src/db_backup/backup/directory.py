"""Uploads a directory-format dump to the remote targets while pg_dump is still writing it.

pg_dump `-Fd -j N` writes one file per table from N workers. Each file a worker closes (an
inotify hint from `closed_files`) goes up at once, in a small thread pool, while the other
tables are still being dumped; after pg_dump exits, `finish` compares every file's stat with the
one its upload saw and sends again whatever changed or was never seen. So the result never
depends on the hints: without inotify, or with a lost event, a file is simply sent at the end.

Every member is recorded in the run's claim (`intend`) before its first byte goes up, so a run
killed mid-dump leaves nothing the next run cannot find. On any failure of the dump, `abort`
stops the uploads and deletes what they stored; a remote that fails is FAILED as a whole and
keeps nothing, the others go on. The sha256 of each file is taken while it is read for the
upload, so the local manifest (`<stem>.dump.d.sha256`) need not read the files again.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from db_backup.backup.closed_files import ClosedFiles
from db_backup.storage import delete_quietly
from db_backup.storage.base import StorageError, StoredObject, Target, is_plain_name
from db_backup.util.cancel import CancelToken
from db_backup.util.fsutil import StatKey, describe_os_error, stat_key
from db_backup.util.secrets import mask

log = structlog.get_logger("db_backup.backup.directory")

CHUNK_SIZE = 1024 * 1024
# Files of a directory dump up to this size go up with one PutObject; bigger ones multipart.
PUT_LIMIT = 1024 * 1024


@dataclass
class Sent:
    """One file as its last upload read it: its stat then (None: it changed meanwhile)."""

    key: StatKey | None
    sha256: str
    objects: dict[str, StoredObject] = field(default_factory=dict)


class DirectoryUpload:
    """Sends the files of `directory` to `remotes` as `<dump_name>/<file>` (see the module)."""

    def __init__(
        self,
        remotes: list[Target],
        directory: Path,
        dump_name: str,
        workers: int,
        cancel: CancelToken,
        intend: Callable[[dict[str, list[str]]], None],
        *,
        job: str,
        database: str,
    ) -> None:
        self.context = {"job": job, "database": database}
        self.remotes = remotes
        self.directory = directory
        self.dump_name = dump_name
        self.cancel = CancelToken(parent=cancel)
        self.intend = intend
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self.lock = threading.Lock()
        self.claimed: list[str] = []  # every file ever sent, in the order first seen
        self.sent: dict[str, Sent] = {}
        self.running: dict[str, Future[None]] = {}
        self.failed: dict[str, str] = {}  # remote -> why it failed
        self.errors: list[BaseException] = []  # of uploads a later one of the same file replaced
        self.during_dump = 0  # uploads finished while pg_dump was still running
        self.uploads = 0  # files sent, counting a file sent again
        self.dumping = True
        self.watcher = ClosedFiles(directory, self.submit, self.submit_all)
        self.watching = False

    def start(self) -> None:
        """Starts watching the directory (which must exist); pg_dump may start writing then."""
        self.watching = self.watcher.start()

    def member(self, file: str) -> str:
        """Returns the stored name of `file`."""
        return f"{self.dump_name}/{file}"

    def submit(self, files: Iterable[str]) -> None:
        """Sends each of `files` now, unless an upload of it is running or saw it as it is.

        The new members are claimed together (one write of the claim) before any goes up.
        """
        with self.lock:
            due = []
            for file in dict.fromkeys(files):
                if not is_plain_name(file):
                    continue
                running = self.running.get(file)
                if running is not None:
                    if not running.done():
                        continue  # `finish` looks at it again once every upload is over
                    if not running.cancelled() and running.exception() is not None:
                        self.errors.append(running.exception())  # type: ignore[arg-type]
                sent = self.sent.get(file)
                now = stat_key(self.directory / file)
                if sent is not None and now is not None and sent.key == now:
                    continue  # its upload saw it as it is
                due.append(file)
            new = [file for file in due if file not in self.claimed]
            if new:
                members = [self.member(f) for f in (*self.claimed, *new)]
                self.intend({remote.name: members for remote in self.remotes})
                self.claimed.extend(new)
            for file in due:
                self.running[file] = self.pool.submit(self._send, file)

    def submit_all(self) -> None:
        """Looks at every file again (the watcher lost events)."""
        self.submit(sorted(path.name for path in self.directory.iterdir() if path.is_file()))

    def _send(self, file: str) -> None:
        path = self.directory / file
        before = stat_key(path)
        sha256 = ""
        objects: dict[str, StoredObject] = {}
        for remote in self.remotes:
            if remote.name in self.failed:
                continue
            self.cancel.raise_if_cancelled()
            try:
                objects[remote.name], sha256 = self._put(remote, path, self.member(file))
            except StorageError as exc:
                self._fail(remote, str(exc))
        after = stat_key(path)
        with self.lock:
            self.sent[file] = Sent(before if before == after else None, sha256, objects)
            self.uploads += 1
            if self.dumping:
                self.during_dump += 1

    def _put(self, remote: Target, path: Path, name: str) -> tuple[StoredObject, str]:
        digest = hashlib.sha256()
        try:
            size = path.stat().st_size
            if size <= PUT_LIMIT:
                digest.update(path.read_bytes())
                return remote.put_file(path, name), digest.hexdigest()
            sink = remote.open_stream(name, size)
            try:
                with path.open("rb") as source:
                    while chunk := source.read(CHUNK_SIZE):
                        self.cancel.raise_if_cancelled()
                        digest.update(chunk)
                        sink.write(chunk)
                return sink.commit(digest.hexdigest()), digest.hexdigest()
            except BaseException:
                sink.abort()
                raise
        except OSError as exc:
            raise StorageError(f"cannot read {describe_os_error(exc, path)}") from None

    def _fail(self, remote: Target, error: str) -> None:
        with self.lock:
            if remote.name in self.failed:
                return
            self.failed[remote.name] = error
        log.error(
            "target failed during the upload",
            **self.context,
            target=remote.name,
            error=mask(error),
        )

    def _wait(self) -> None:
        while True:
            with self.lock:
                running = [f for f in self.running.values() if not f.done()]
                finished = list(self.running.values())
            if not running:
                for future in finished:
                    future.result()  # Cancelled, or a bug: the caller aborts
                if self.errors:
                    raise self.errors[0]
                return
            for future in running:
                future.result()

    def finish(self, files: list[str]) -> dict[str, StoredObject]:
        """After pg_dump exited: sends what is new or changed; returns each good remote's result.

        `files` is every file of the finished directory. A remote that failed, or that holds
        a file which changed while it was read, is left with nothing and named in `failed`.
        """
        self.watcher.stop()
        with self.lock:
            self.dumping = False
        self._wait()
        self.submit(files)
        self._wait()
        self.pool.shutdown(wait=True)
        for file in files:
            sent = self.sent.get(file)
            if sent is None or sent.key is None or sent.key != stat_key(self.directory / file):
                for remote in self.remotes:
                    self._fail(remote, f"{file} changed while it was being uploaded")
        present = set(files)
        gone = [self.member(f) for f in self.claimed if f not in present]
        results: dict[str, StoredObject] = {}
        for remote in self.remotes:
            if remote.name in self.failed:
                delete_quietly(remote, [self.member(f) for f in self.claimed])
                continue
            delete_quietly(remote, list(gone))
            objects = [self.sent[f].objects[remote.name] for f in files]
            urls = [obj.location for obj in objects]
            location = urls[0][: -len(files[0])] if files else ""
            size = sum(obj.size_bytes for obj in objects)
            results[remote.name] = StoredObject(location, size, {"objects": urls})
        log.info(
            "directory uploaded",
            **self.context,
            directory=self.dump_name,
            files=len(files),
            during_dump=self.during_dump,
            uploads=self.uploads,
            watched=self.watching,
        )
        return results

    def checksums(self) -> dict[str, tuple[StatKey, str]]:
        """Returns, per file, the stat and sha256 its upload saw (for the local manifest)."""
        return {
            file: (sent.key, sent.sha256)
            for file, sent in self.sent.items()
            if sent.key is not None and sent.sha256
        }

    def abort(self, reason: str) -> None:
        """Stops every upload and deletes whatever was stored (the dump failed)."""
        self.cancel.cancel(reason)
        self.watcher.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for remote in self.remotes:
            delete_quietly(remote, [self.member(f) for f in self.claimed])
