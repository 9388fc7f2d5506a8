"""Checking a backup's bytes: the `.sha256` file, a file's sha256, a directory dump's manifest."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from db_backup.restore.source import SHA256_RE, RestoreError
from db_backup.util.cancel import CancelToken


def read_checksum_file(path: Path, dump_name: str) -> str:
    """Returns the sha256 a one-file `.sha256` names for `dump_name`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{path}: cannot read the checksum file ({exc})") from None
    for line in text.splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if name == dump_name and SHA256_RE.match(digest.lower()):
            return digest.lower()
    raise RestoreError(f"{path}: holds no sha256 line for {dump_name}")


def sha256_file(path: Path, cancel: CancelToken | None = None) -> str:
    """Returns the hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            if cancel is not None:
                cancel.raise_if_cancelled()
            digest.update(block)
    return digest.hexdigest()


def verify_directory_dump(
    directory: Path, manifest: Path, expected: str = "", seen: dict[str, str] | None = None
) -> str:
    """Checks a directory-format dump against its manifest; returns the manifest's sha256.

    Every manifest line must name a file inside the directory whose sha256 matches, and the
    manifest's own sha256 must be `expected` when given (the report's checksum). `seen` holds
    the sha256 of files hashed as they were downloaded (by file name): those are not read again.
    """
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RestoreError(f"{manifest}: cannot read the checksum manifest ({exc})") from None
    root = directory.resolve()

    def member_sha256(name: str) -> tuple[str, str] | None:
        path = (directory / name).resolve()
        if root not in path.parents or not path.is_file():
            return None
        return str(path), (seen or {}).get(name) or sha256_file(path)

    return check_manifest(text, str(manifest), directory.name, expected, member_sha256)


def manifest_names(text: str, label: str, directory_name: str) -> list[tuple[str, str]]:
    """Returns (sha256, member name inside the directory) of each line of a manifest."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise RestoreError(f"{label}: the checksum manifest is empty")
    prefix = f"{directory_name}/"
    found = []
    for line in lines:
        digest, _, name = line.partition("  ")
        if not name.startswith(prefix):
            raise RestoreError(f"{label}: line for a file outside {directory_name}: {name!r}")
        found.append((digest.lower(), name[len(prefix) :]))
    return found


def check_manifest(
    text: str,
    label: str,
    directory_name: str,
    expected: str,
    member_sha256: Callable[[str], tuple[str, str] | None],
) -> str:
    """Checks a directory dump's manifest `text` and every member it names; returns its sha256.

    The manifest's own sha256 must be `expected` when given (the report's). `member_sha256`
    gives a member's place (for messages) and sha256, or None when it is not there; local
    files and stored objects are checked alike. Raises RestoreError naming the first problem.
    """
    own = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if expected and own != expected:
        raise RestoreError(
            f"{label}: checksum mismatch: the manifest's sha256 is {own}, the report says "
            f"{expected}; the backup was changed after it was made"
        )
    for digest, name in manifest_names(text, label, directory_name):
        found = member_sha256(name)
        if found is None:
            raise RestoreError(
                f"{label}: {directory_name + '/' + name!r} is not a file of this dump"
            )
        place, actual = found
        if actual != digest:
            raise RestoreError(
                f"{place}: checksum mismatch (sha256 {actual}, expected {digest}); "
                "the backup is damaged and was not restored"
            )
    return own
