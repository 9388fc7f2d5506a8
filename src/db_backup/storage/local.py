"""The local target: the data directory, written through a temporary name, fsynced, renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from db_backup.fsutil import describe_os_error, fsync_dir
from db_backup.storage.base import TEMP_PREFIX, StorageError, StoredObject

FILE_MODE = 0o600


def temp_name(job: str, filename: str) -> str:
    """Returns the hidden temporary name a file of `job` has while it is being written."""
    return f"{TEMP_PREFIX}{job}.{filename}"  # "." cannot occur in a job name


class LocalSink:
    """Writes one dump to a temporary file; commit fsyncs and renames it to its final name."""

    def __init__(self, directory: Path, job: str, filename: str) -> None:
        self.final = directory / filename
        self.temp = directory / temp_name(job, filename)
        self._written = 0
        try:
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

    def delete(self, filenames: list[str]) -> list[str]:
        """Removes these files (or directory-format dumps) and returns their paths."""
        removed = []
        for filename in filenames:
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
            return sorted(p.name for p in self.directory.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def remove_stale_temporaries(self) -> list[str]:
        """Deletes temporary files a killed run of this job left behind; returns their paths."""
        removed: list[str] = []
        try:
            entries = list(self.directory.glob(temp_name(self.job, "*")))
        except OSError:
            return removed
        for path in entries:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(str(path))
        return removed
