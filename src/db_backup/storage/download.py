"""Reading a stored object back to local disk through any target: once, checked, atomically.

Restore and drills download a remote backup with these; the bytes are hashed on the way by the
target's `get`, so the caller never reads the file again just to hash it (the sha256 comes back
with the download). A file gets its final name only after the backend's own integrity check
held; a failed or stopped download leaves nothing under the destination.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from db_backup.storage.base import ObjectMissing, Received, StorageError, Target, split_member
from db_backup.util.cancel import CancelToken
from db_backup.util.fsutil import describe_os_error

__all__ = ["download", "download_directory"]


def download(
    target: Target, filename: str, destination: Path, cancel: CancelToken | None = None
) -> Received:
    """Downloads `filename` to `destination` (temp name, checked, renamed, mode 0600).

    Returns the size and sha256 of the bytes written. Raises ObjectMissing when the object is
    not there and StorageError when the backend's check fails (a corrupt download) or the file
    cannot be written; no file is left under `destination` then.
    """
    temp = destination.with_name(f".tmp-download.{destination.name}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create {describe_os_error(exc, temp)}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                got = target.get(filename, handle, cancel)
        except OSError as exc:
            raise StorageError(f"cannot write {describe_os_error(exc, temp)}") from None
        if got.mismatch:
            raise StorageError(
                f"{target.name}: {target.location(filename)}: {got.mismatch}; "
                "the download is corrupt"
            )
        os.replace(temp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    return got


def download_directory(
    target: Target, dirname: str, destination: Path, cancel: CancelToken | None = None
) -> dict[str, str]:
    """Downloads every member of the directory dump `dirname` into `destination`.

    Returns the sha256 of each member file as it was written (file name -> hex), so that the
    manifest check need not read the files again. Raises ObjectMissing when there is no member,
    StorageError for anything else.
    """
    objects = target.list_objects(f"{dirname}/")
    if not objects:
        raise ObjectMissing(f"{target.location(dirname + '/')}: no objects (missing)")
    destination.mkdir(mode=0o700, exist_ok=True)
    seen: dict[str, str] = {}
    for info in objects:
        member = split_member(info.name)
        if member is None or member[0] != dirname:
            raise StorageError(f"{target.location(info.name)}: not a directory dump member")
        seen[member[1]] = download(target, info.name, destination / member[1], cancel).sha256
    return seen
