"""The small protocol every storage backend implements, for writing and for reading back.

The job runner knows only this module: a backend turns a stream of dump bytes into a stored
object (`open_stream`), stores small finished files next to it (`put_file`), and lists and deletes
what this program stored (`list_names`, `delete`) for retention. Restore, verify and drills read
through the same protocol (`head`, `get`, `list_objects`, `check_head`), each backend with the
integrity check it offers, so they never know which backend stored a backup. Adding a backend
never touches the job runner or the restore code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from db_backup.util.cancel import CancelToken

# Every temporary name a backend gives a file while it is being written starts with this, so
# that listings for retention can leave it out.
TEMP_PREFIX = ".tmp-"


class StorageError(Exception):
    """A backend could not store, list or delete; the message names the target and the cause."""


class ObjectMissing(StorageError):
    """The object is not stored there; the message names where it was looked for."""


@dataclass
class StoredObject:
    """Where one artefact ended up: a local path or a remote URL, with backend extras."""

    location: str
    size_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ObjectInfo:
    """What a target says of one stored object without reading it: size, integrity values.

    `hashes` holds the integrity values the backend offers, keyed by kind: "crc64" (OSS's
    `x-oss-hash-crc64ecma`), "sha256" (OSS's object tag, rclone's hashsum), "md5" (rclone).
    """

    name: str  # relative to the target's directory or prefix
    size: int
    hashes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    """One object's bytes as read: their size and sha256, and the backend's own check.

    `checked` names the backend's integrity check that held ("CRC-64", "size"; "" when there
    is none); `mismatch` says how it failed ("" when it held). The bytes were read once: the
    sha256 is of exactly what was handed on.
    """

    size: int
    sha256: str
    checked: str = ""
    mismatch: str = ""


class Writer(Protocol):
    """Where `Target.get` hands the bytes: a binary file or anything with `write`."""

    def write(self, data: bytes, /) -> object:
        """Takes the next bytes."""


class StreamSink(Protocol):
    """Receives one dump's bytes in order, then is either committed or aborted, never both."""

    def write(self, data: bytes) -> None:
        """Stores the next bytes; raises StorageError when this target can no longer continue."""

    def commit(self, sha256_hex: str) -> StoredObject:
        """Makes the object visible under its final name, only after every byte arrived."""

    def abort(self) -> None:
        """Removes everything written so far; never raises, safe to call twice."""


class Target(Protocol):
    """A place backups go: the local data directory, an OSS bucket, an rclone remote."""

    name: str  # "local", "oss", "rclone": the key in the report's per-target results

    def open_stream(self, filename: str, size_hint: int | None = None) -> StreamSink:
        """Starts storing a dump named `filename` from a stream.

        `size_hint` is a guess at the size (the database's size): remotes with a part limit
        size their parts from it; it is never trusted as the real size.
        """

    def put_file(self, path: Path, filename: str) -> StoredObject:
        """Stores a small finished file (globals, .sha256, report) as `filename`."""

    def delete(self, filenames: list[str]) -> list[str]:
        """Deletes these names if present and returns the locations it removed."""

    def list_names(self) -> list[str]:
        """Lists the file names this target holds under its directory or prefix."""

    # -- reading back (restore, verify, drills)

    def location(self, filename: str) -> str:
        """Returns where `filename` is, as reports and messages show it (path or URL)."""

    def head(self, filename: str, hashes: bool = True) -> ObjectInfo:
        """Returns size and integrity values of `filename` without reading its bytes.

        `hashes` False leaves out values that cost a request or a remote-side read (OSS's tag,
        rclone's hashsum). Raises ObjectMissing when it is not there, StorageError otherwise.
        """

    def get(
        self, filename: str, writer: Writer | None, cancel: CancelToken | None = None
    ) -> Received:
        """Reads `filename` once, handing every byte to `writer` (None: to nowhere).

        Hashes the bytes as they pass and runs the backend's integrity check; a failed check
        is `Received.mismatch`, not an exception, so that a caller can report it beside its own
        checks. Raises ObjectMissing when it is not there, StorageError when reading fails.
        """

    def list_objects(self, under: str = "") -> list[ObjectInfo]:
        """Lists the objects directly under the directory or prefix (or its `under` part)."""

    def check_head(
        self, info: ObjectInfo, sha256: str, recorded: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Returns (passed, problems): `info`'s integrity values against what was recorded.

        `sha256` is the report's checksum of the dump, `recorded` the report's entry of this
        target (what the backend returned when it stored the object). Pure: no request.
        """


# The only directory a name given to a target may have: a directory-format dump's members are
# stored remotely as `<stem>.dump.d/<file>`.
MEMBER_DIR_SUFFIX = ".dump.d"


def is_plain_name(name: object) -> bool:
    """Returns whether `name` is a plain file name: no directory part, not "." or ".."."""
    return (
        isinstance(name, str)
        and name not in {"", ".", ".."}
        and "/" not in name
        and "\0" not in name
    )


def split_member(name: object) -> tuple[str, str] | None:
    """Splits a directory dump member name `<x>.dump.d/<file>` into its two parts, else None."""
    if not isinstance(name, str) or name.count("/") != 1:
        return None
    directory, file = name.split("/")
    if not directory.endswith(MEMBER_DIR_SUFFIX) or directory == MEMBER_DIR_SUFFIX:
        return None
    if not is_plain_name(directory) or not is_plain_name(file):
        return None
    return directory, file
