"""The rclone target: dumps stream into `rclone rcat`, then move to their final name.

`rclone rcat` uploads what arrives on its stdin to a temporary name (`.tmp-<name>.<random>`,
hidden from `list_names`); only commit moves it to the final name (`rclone moveto`), after
rcat exited 0 and the stored size matched, so a half-uploaded file never looks like a backup.
Every child is started through `db_backup.util.execute` (argv list, own session, stderr tail, the
same stop sequence as pg_dump's).

Reading back: `head` is `rclone lsjson --stat` (size; with `hashes`, the sha256 and md5 the
remote offers, which rclone's hashsum machinery computes or reads remote-side), `get` is
`rclone cat` with the sha256 computed on the way and the size checked against lsjson's, and
`list_objects` is `rclone lsjson`. The sink records the md5 of what it sent beside the sha256,
so a remote that offers only md5 (Drive, Azure Blob, ...) can still be checked without a
download.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from db_backup.storage.base import (
    TEMP_PREFIX,
    ObjectInfo,
    ObjectMissing,
    Received,
    StorageError,
    StoredObject,
    Writer,
)
from db_backup.util import execute
from db_backup.util.cancel import CancelToken

log = structlog.get_logger("db_backup.storage.rclone")

CHUNK = 1024 * 1024
# rclone's exit statuses for "directory not found" and "file not found".
NOT_FOUND_CODES = (3, 4)
# The hashes `head` asks for, when the remote has them: the report's sha256, the sink's md5.
HASH_TYPES = ("sha256", "md5")


@dataclass(frozen=True)
class RcloneSettings:
    """Where the rclone target stores: `<remote>:<prefix><file name>`."""

    remote: str
    prefix: str = "postgres/backups/"
    config_file: str | None = None
    extra_args: tuple[str, ...] = ()


# What rclone may inherit besides the common allow-list: its own settings (RCLONE_*, which is
# also how an operator passes RCLONE_CONFIG_PASS), proxies and CA bundles it needs to connect.
RCLONE_ENV_PREFIXES = ("RCLONE_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                       "https_proxy", "no_proxy", "SSL_CERT_")  # fmt: skip


def _rclone_env() -> dict[str, str]:
    """Returns the environment of an rclone child."""
    return execute.child_env(inherit_prefixes=RCLONE_ENV_PREFIXES)


class RcloneTarget:
    """An rclone remote and prefix; children are run through `db_backup.util.execute`."""

    name = "rclone"

    def __init__(self, settings: RcloneSettings, *, binary: str = "rclone") -> None:
        self.settings = settings
        self.binary = binary

    def path(self, filename: str) -> str:
        """Returns the rclone path of a file name: `remote:prefix/name`."""
        return f"{self.settings.remote}:{self.settings.prefix}{filename}"

    def argv(self, *args: str) -> list[str]:
        """Returns the argv of one rclone command with the config file and extra arguments."""
        argv = [self.binary]
        if self.settings.config_file:
            argv += ["--config", self.settings.config_file]
        return [*argv, *self.settings.extra_args, *args]

    def run(self, what: str, where: str, *args: str, timeout: float | None = 600) -> str:
        """Runs one rclone command to completion; raises StorageError naming `where`."""
        try:
            return execute.run(self.argv(*args), env=_rclone_env(), timeout=timeout)
        except execute.CommandError as error:
            raise StorageError(f"{what} failed for {where}: {error}") from None

    def open_stream(self, filename: str, size_hint: int | None = None) -> RcloneSink:
        """Starts `rclone rcat` to a temporary name next to `filename`."""
        return RcloneSink(self, filename)

    def put_file(self, path: Path, filename: str) -> StoredObject:
        """Copies a finished file with `rclone copyto` (rclone checks size and hash)."""
        destination = self.path(filename)
        self.run("copyto", destination, "copyto", str(path), destination)
        return StoredObject(destination, path.stat().st_size, {"tool": "rclone"})

    def list_names(self) -> list[str]:
        """Lists the file names directly under the prefix (temporary names excluded)."""
        return [name for name in self.list_all() if not name.startswith(TEMP_PREFIX)]

    def list_all(self) -> list[str]:
        """Lists every file name directly under the prefix, temporary ones included."""
        where = f"{self.settings.remote}:{self.settings.prefix}"
        try:
            out = execute.run(self.argv("lsf", "--files-only", where), env=_rclone_env())
        except execute.CommandError as error:
            if "directory not found" in str(error):
                return []
            raise StorageError(f"lsf failed for {where}: {error}") from None
        return sorted(line for line in out.splitlines() if line)

    def delete(self, filenames: list[str]) -> list[str]:
        """Deletes these names if present (`rclone deletefile`) and returns the paths removed."""
        present = set(self.list_names())
        removed = []
        for filename in dict.fromkeys(filenames):
            if filename in present:
                self.run("deletefile", self.path(filename), "deletefile", self.path(filename))
                removed.append(self.path(filename))
        return removed

    def size_of(self, filename: str) -> int:
        """Returns the stored size of one file (`rclone lsjson`)."""
        where = self.path(filename)
        out = self.run("lsjson", where, "lsjson", "--files-only", where)
        entries = json.loads(out or "[]")
        if len(entries) != 1:
            raise StorageError(f"{where} is missing after upload")
        return int(entries[0]["Size"])

    # -- reading back

    def location(self, filename: str) -> str:
        """Returns the rclone path of a file name, as reports show it."""
        return self.path(filename)

    def head(self, filename: str, hashes: bool = True) -> ObjectInfo:
        """Returns the size (`rclone lsjson --stat`) and, with `hashes`, the remote's sha256/md5.

        The remote computes or looks up the hashes it supports (on a local or SFTP remote that
        reads the file there, not here); one it does not support is left out.
        """
        where = self.path(filename)
        args = ["lsjson", "--stat", "--no-mimetype"]
        if hashes:
            args.append("--hash")
            for kind in HASH_TYPES:
                args += ["--hash-type", kind]
        try:
            # A remote-side hash of a big file takes as long as reading it: no timeout then.
            out = execute.run(
                self.argv(*args, where), env=_rclone_env(), timeout=None if hashes else 600
            )
        except execute.CommandError as error:
            if error.returncode in NOT_FOUND_CODES:
                raise ObjectMissing(f"rclone: {where} does not exist") from None
            raise StorageError(f"lsjson failed for {where}: {error}") from None
        try:
            entry = json.loads(out)
            if entry.get("IsDir"):
                raise ObjectMissing(f"rclone: {where} is a directory, not a stored file")
            size = int(entry["Size"])
            found = entry.get("Hashes") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StorageError(f"lsjson for {where} gave no usable answer: {out[:200]!r}") from None
        values = {kind: str(found[kind]).lower() for kind in HASH_TYPES if found.get(kind)}
        return ObjectInfo(filename, size, values)

    def get(
        self, filename: str, writer: Writer | None, cancel: CancelToken | None = None
    ) -> Received:
        """Reads a file once with `rclone cat`, hashing it; its size must be lsjson's.

        `rclone cat` of a directory would print every file in it, so the name is checked to be
        a file first (that lsjson also gives the size to check the stream against).
        """
        expected = self.head(filename, hashes=False).size
        where = self.path(filename)
        digest = hashlib.sha256()
        size = 0
        try:
            child = execute.StreamingChild(self.argv("cat", where), env=_rclone_env())
        except execute.CommandError as error:
            raise StorageError(f"cannot start rclone cat for {where}: {error}") from None
        try:
            for chunk in child.chunks(CHUNK, cancel):
                digest.update(chunk)
                size += len(chunk)
                if writer is not None:
                    writer.write(chunk)
            child.check()
        except execute.CommandError as error:
            if error.returncode in NOT_FOUND_CODES:
                raise ObjectMissing(f"rclone: {where} does not exist") from None
            raise StorageError(f"cat failed for {where}: {error}") from None
        finally:
            child.terminate()  # only does something when reading stopped early
            child.wait()
        if size != expected:
            mismatch = f"received {size} bytes, rclone lsjson says {expected}"
            return Received(size, digest.hexdigest(), mismatch=mismatch)
        return Received(size, digest.hexdigest(), checked="size")

    def list_objects(self, under: str = "") -> list[ObjectInfo]:
        """Lists the files directly under the prefix (or its `under` part) with their sizes."""
        where = f"{self.settings.remote}:{self.settings.prefix}{under}"
        try:
            out = execute.run(
                self.argv("lsjson", "--files-only", "--no-mimetype", where), env=_rclone_env()
            )
        except execute.CommandError as error:
            if error.returncode in NOT_FOUND_CODES:
                return []
            raise StorageError(f"lsjson failed for {where}: {error}") from None
        entries = json.loads(out or "[]")
        found = [ObjectInfo(under + str(e["Name"]), int(e["Size"])) for e in entries]
        return sorted(found, key=lambda o: o.name)

    def check_head(
        self, info: ObjectInfo, sha256: str, recorded: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Returns (passed, problems): the remote's sha256 against the report's checksum, its
        md5 against the one the sink recorded; a hash the remote does not offer is skipped."""
        passed: list[str] = []
        problems: list[str] = []
        wanted = {"sha256": sha256, "md5": str(recorded.get("md5", ""))}
        for kind in HASH_TYPES:
            actual, expected = info.hashes.get(kind), wanted[kind]
            if actual is None or not expected:
                continue
            if actual != expected:
                problems.append(f"{kind} (rclone) is {actual}, the report says {expected}")
            else:
                passed.append(f"{kind} (rclone)")
        return passed, problems


class RcloneSink:
    """Feeds one dump into `rclone rcat <temp>`; commit moves it, abort kills and deletes it."""

    def __init__(self, target: RcloneTarget, filename: str) -> None:
        self.target = target
        self.filename = filename
        self.temp_name = f"{TEMP_PREFIX}{filename}.{uuid.uuid4().hex[:12]}"
        self.temp_path = target.path(self.temp_name)
        self.final_path = target.path(filename)
        self._written = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._state = "open"
        try:
            self._rcat = execute.FeedingChild(
                target.argv("rcat", self.temp_path), env=_rclone_env()
            )
        except execute.CommandError as error:
            raise StorageError(f"cannot start rcat for {self.final_path}: {error}") from None

    def _failure(self, error: execute.CommandError) -> StorageError:
        code = error.returncode
        status = f"exited with status {code}" if code is not None else "failed"
        text = f"rcat {status} for {self.final_path}"
        return StorageError(f"{text}: {error.stderr_tail}" if error.stderr_tail else text)

    def write(self, data: bytes) -> None:
        """Passes `data` to rcat's stdin; raises StorageError when rcat has gone away."""
        if self._state != "open":
            raise StorageError(f"write after {self._state} for {self.final_path}")
        try:
            self._rcat.write(data)
        except execute.CommandError as error:
            self._state = "failed"
            raise self._failure(error) from None
        self._md5.update(data)
        self._written += len(data)

    def commit(self, sha256_hex: str) -> StoredObject:
        """Ends rcat's input, checks its exit and the stored size, then moves to the final name."""
        if self._state != "open":
            raise StorageError(f"commit after {self._state} for {self.final_path}")
        self._state = "committing"
        try:
            try:
                self._rcat.check()
            except execute.CommandError as error:
                raise self._failure(error) from None
            stored = self.target.size_of(self.temp_name)
            if stored != self._written:
                raise StorageError(
                    f"{self.temp_path} holds {stored} bytes, {self._written} were sent"
                )
            self.target.run(
                "moveto", self.final_path, "moveto", self.temp_path, self.final_path, timeout=None
            )
        except StorageError:
            self._state = "failed"
            self._delete_temp()
            raise
        self._state = "committed"
        extra = {"tool": "rclone", "sha256": sha256_hex, "md5": self._md5.hexdigest()}
        return StoredObject(self.final_path, self._written, extra)

    def abort(self) -> None:
        """Stops rcat and deletes the temporary file; never raises, safe to call twice."""
        if self._state in ("aborted", "committed"):
            return
        self._state = "aborted"
        try:
            self._rcat.terminate()
            self._delete_temp()
        except Exception as error:  # abort must never raise
            log.error("could not abort the rclone upload", path=self.temp_path, error=str(error))

    def _delete_temp(self) -> None:
        """Deletes the temporary file if it exists; logs instead of raising."""
        try:
            if self.temp_name in self.target.list_all():
                self.target.run("deletefile", self.temp_path, "deletefile", self.temp_path)
        except StorageError as error:
            log.error("could not delete the temporary file", path=self.temp_path, error=str(error))
