"""The small protocol every storage backend implements.

The job runner knows only this module: a backend turns a stream of dump bytes into a stored
object (`open_stream`), stores small finished files next to it (`put_file`), and lists and deletes
what this program stored (`list_names`, `delete`) for retention. Adding a backend never touches
the job runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Every temporary name a backend gives a file while it is being written starts with this, so
# that listings for retention can leave it out.
TEMP_PREFIX = ".tmp-"


class StorageError(Exception):
    """A backend could not store, list or delete; the message names the target and the cause."""


@dataclass
class StoredObject:
    """Where one artefact ended up: a local path or a remote URL, with backend extras."""

    location: str
    size_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


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
