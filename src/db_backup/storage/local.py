"""The local target: the data directory, written through a temporary name, fsynced, renamed.

Reading back (the storage protocol's `head`, `get`, `list_objects`): a stat gives the size, and a
read hashes the bytes as they pass; the file's size is checked again after the read, so a file
that changed while it was read is a mismatch. A local file has no integrity value of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from db_backup.storage.base import (
    ObjectInfo,
    ObjectMissing,
    Received,
    StorageError,
    StoredObject,
    Writer,
    is_plain_name,
    split_member,
)
from db_backup.util.cancel import CancelToken
from db_backup.util.fsutil import StatKey, describe_os_error, fsync_dir, stat_key

__all__ = ["LocalTarget", "is_plain_name"]

# Files being written live in this directory inside the data directory (same file system, so
# the final rename is atomic). No backup name can ever land there: backups are plain names in
# the data directory itself, so a database called ".tmp-x" can never look like a leftover.
TEMP_DIR_NAME = ".db-backup-tmp"
FILE_MODE = 0o600
CHUNK = 1024 * 1024


def temp_name(job: str, filename: str) -> str:
    """Returns the name, inside TEMP_DIR_NAME, a file of `job` has while it is being written."""
    return f"{job}.{filename}"  # "." cannot occur in a job name


class LocalSink:
    """Writes one dump to a temporary file; commit fsyncs and renames it to its final name."""

    def __init__(self, directory: Path, job: str, filename: str) -> None:
        self.final = directory / filename
        self.temp = directory / TEMP_DIR_NAME / temp_name(job, filename)
        self._written = 0
        try:
            self.temp.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot create {describe_os_error(exc, self.temp)}") from None
        self._file = os.fdopen(fd, "wb", buffering=0)

    def write(self, data: bytes) -> None:
        """Appends `data` to the temporary file."""
        try:
            view = memoryview(data)
            while view:
                n = self._file.write(view)
                view = view[n or 0 :]
            self._written += len(data)
        except OSError as exc:
            raise StorageError(f"cannot write {describe_os_error(exc, self.temp)}") from None

    def commit(self, sha256_hex: str) -> StoredObject:
        """fsyncs and renames the temporary file to its final name; returns its path."""
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.temp, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish {describe_os_error(exc, self.final)}") from None
        return StoredObject(str(self.final), self._written, {"sha256": sha256_hex})

    def abort(self) -> None:
        """Closes and removes the temporary file."""
        with contextlib.suppress(OSError):
            self._file.close()
        self.temp.unlink(missing_ok=True)


class LocalTarget:
    """The data directory of one job; never holds a partial file under a final name."""

    name = "local"

    def __init__(self, directory: Path, job: str) -> None:
        self.directory = directory
        self.job = job

    def open_stream(self, filename: str, size_hint: int | None = None) -> LocalSink:
        """Starts writing `filename` through a temporary name."""
        return LocalSink(self.directory, self.job, filename)

    def put_file(self, path: Path, filename: str) -> StoredObject:
        """Copies a finished file in atomically (temp, fsync, rename), mode 0600."""
        sink = self.open_stream(filename)
        try:
            with path.open("rb") as source:
                while chunk := source.read(1024 * 1024):
                    sink.write(chunk)
        except OSError as exc:
            sink.abort()
            raise StorageError(f"cannot read {describe_os_error(exc, path)}") from None
        except StorageError:
            sink.abort()
            raise
        return sink.commit("")

    def open_directory(self, dirname: str) -> LocalDirectorySink:
        """Starts a directory-format dump `dirname` in a temporary directory."""
        return LocalDirectorySink(self.directory, self.job, dirname)

    def delete(self, filenames: list[str]) -> list[str]:
        """Removes these files (or directory-format dumps) and returns their paths.

        Only plain names in the data directory itself are ever touched. Members of a directory
        dump stored remotely (`<x>.dump.d/<file>`) are skipped: the local directory dump goes by
        its own name. Anything else (another directory part, "..") is refused, whoever wrote it
        into a report.
        """
        removed = []
        for filename in filenames:
            if split_member(filename) is not None:
                continue
            if not is_plain_name(filename):
                raise StorageError(f"refusing to delete {filename!r}: not a plain file name")
            path = self.directory / filename
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot delete {describe_os_error(exc, path)}") from None
            removed.append(str(path))
        return removed

    def list_names(self) -> list[str]:
        """Lists the names in the data directory (temporary files excluded)."""
        try:
            return sorted(p.name for p in self.directory.iterdir() if p.name != TEMP_DIR_NAME)
        except FileNotFoundError:
            return []

    # -- reading back

    def path_of(self, filename: str) -> Path:
        """Returns the path of a stored name: a plain name, or a directory dump's member."""
        if not is_plain_name(filename) and split_member(filename) is None:
            raise StorageError(f"refusing to read {filename!r}: not a stored file name")
        return self.directory / filename

    def location(self, filename: str) -> str:
        """Returns the path of a file name in the data directory."""
        return str(self.directory / filename)

    def head(self, filename: str, hashes: bool = True) -> ObjectInfo:
        """Returns the size of a stored file (a stat; a local file has no integrity value)."""
        path = self.path_of(filename)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ObjectMissing(f"{path}: missing") from None
        except OSError as exc:
            raise StorageError(f"cannot read {describe_os_error(exc, path)}") from None
        if not os.path.isfile(path):
            raise ObjectMissing(f"{path}: not a file")
        return ObjectInfo(filename, stat.st_size)

    def get(
        self, filename: str, writer: Writer | None, cancel: CancelToken | None = None
    ) -> Received:
        """Reads a stored file once, hashing it; its size must not change while it is read."""
        path = self.path_of(filename)
        digest = hashlib.sha256()
        size = 0
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{path}: missing") from None
        except OSError as exc:
            raise StorageError(f"cannot read {describe_os_error(exc, path)}") from None
        with handle:
            before = os.fstat(handle.fileno()).st_size
            while True:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                try:
                    chunk = handle.read(CHUNK)
                except OSError as exc:
                    raise StorageError(f"cannot read {describe_os_error(exc, path)}") from None
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                if writer is not None:
                    writer.write(chunk)
            after = os.fstat(handle.fileno()).st_size
        if not before == size == after:
            mismatch = f"read {size} bytes of a file of {before} (now {after}): it changed"
            return Received(size, digest.hexdigest(), mismatch=mismatch)
        return Received(size, digest.hexdigest(), checked="size")

    def list_objects(self, under: str = "") -> list[ObjectInfo]:
        """Lists the files in the data directory (or in its directory dump `under`) with sizes."""
        directory = self.directory / under if under else self.directory
        if under and split_member(f"{under.rstrip('/')}/x") is None:
            raise StorageError(f"refusing to list {under!r}: not a directory dump")
        found = []
        try:
            for entry in os.scandir(directory):
                if entry.name != TEMP_DIR_NAME and entry.is_file(follow_symlinks=False):
                    found.append(ObjectInfo(under + entry.name, entry.stat().st_size))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {describe_os_error(exc, directory)}") from None
        return sorted(found, key=lambda o: o.name)

    def check_head(
        self, info: ObjectInfo, sha256: str, recorded: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Returns ([], []): a stat gives no integrity value; `get` hashes the bytes."""
        return [], []

    def remove_stale_temporaries(self) -> list[str]:
        """Deletes temporary files a killed run of this job left behind; returns their paths."""
        removed: list[str] = []
        try:
            entries = list((self.directory / TEMP_DIR_NAME).glob(temp_name(self.job, "*")))
        except OSError:
            return removed
        for path in entries:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed


class LocalDirectorySink:
    """A directory-format dump (pg_dump -Fd writes into `path`); commit fsyncs and renames it.

    The manifest has a `sha256  <dir>/<file>` line per file, so `sha256sum -c` run in the data
    directory checks it; the dump's checksum is the manifest's own sha256.
    """

    def __init__(self, directory: Path, job: str, dirname: str) -> None:
        self.final = directory / dirname
        self.path = directory / TEMP_DIR_NAME / temp_name(job, dirname)
        self.dirname = dirname
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(mode=0o700)  # pg_dump -Fd writes into an empty directory it finds
        except OSError as exc:
            raise StorageError(f"cannot create {describe_os_error(exc, self.path)}") from None

    def commit(
        self, known: dict[str, tuple[StatKey, str]] | None = None
    ) -> tuple[StoredObject, str]:
        """Checksums and fsyncs every file, renames the directory; returns it and its manifest.

        `known` maps a file to the stat and sha256 an upload saw while reading it: a file whose
        stat is still that one is not read again.
        """
        known = known or {}
        manifest: list[str] = []
        size = 0
        try:
            for path in sorted(self.path.rglob("*")):
                if not path.is_file():
                    continue
                relative = str(path.relative_to(self.path))
                seen = known.get(relative)
                with path.open("rb") as handle:
                    if seen is not None and seen[0] == stat_key(path):
                        sha256 = seen[1]
                    else:
                        digest = hashlib.sha256()
                        while block := handle.read(1024 * 1024):
                            digest.update(block)
                        sha256 = digest.hexdigest()
                    os.fsync(handle.fileno())
                size += path.stat().st_size
                manifest.append(f"{sha256}  {self.dirname}/{relative}\n")
            os.chmod(self.path, 0o700)
            fsync_dir(self.path)
            os.replace(self.path, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise StorageError(f"cannot finish {describe_os_error(exc, self.final)}") from None
        text = "".join(manifest)
        sha256 = hashlib.sha256(text.encode()).hexdigest()
        return StoredObject(str(self.final), size, {"manifestSha256": sha256}), text

    def abort(self) -> None:
        """Removes the temporary directory."""
        shutil.rmtree(self.path, ignore_errors=True)
