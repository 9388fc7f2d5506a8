"""Getting a backup's files to local disk, verified: what restore and drill do first.

A local backup is found in its directory; a remote one is downloaded through the storage
protocol from whichever target the report says holds it (OSS: CRC-64 checked; rclone: size
checked) into a private directory. Either way, the dump's sha256 is verified against the report
and the `.sha256` file before anything uses it. A download hashes the bytes as they arrive, and
that sha256 is the one verified: a downloaded dump is never read a second time just to hash it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from db_backup.config import Config
from db_backup.restore.checksums import read_checksum_file, sha256_file, verify_directory_dump
from db_backup.restore.remote import open_remote
from db_backup.restore.source import BackupSource, RestoreError
from db_backup.storage.base import ObjectMissing, StorageError, Target
from db_backup.storage.download import download, download_directory
from db_backup.util.cancel import CancelToken


@dataclass(frozen=True)
class BackupFiles:
    """Where a backup's files are on local disk, before their checksums are verified."""

    dump: Path
    checksum: Path | None
    globals_file: Path | None
    # The sha256 of the dump as it was downloaded ("": read it to know); of a directory dump,
    # of each member file by name.
    sha256_seen: str = ""
    members_seen: dict[str, str] = field(default_factory=dict)


@dataclass
class Fetched:
    """The backup's files on local disk, checksum verified."""

    dump: Path
    globals_file: Path | None
    sha256: str


def fetch(
    config: Config,
    source: BackupSource,
    workdir: Path,
    cancel: CancelToken | None = None,
    want_globals: bool = True,
) -> Fetched:
    """Makes the backup available on local disk and verifies its sha256; raises RestoreError.

    A remote dump is downloaded into `workdir` (CRC-64 checked); see verify_files for the checks.
    """
    if source.local_dir is not None:
        files = local_files(source, want_globals)
    else:
        files = download_files(config, source, workdir, cancel, want_globals)
    return verify_files(source, files, cancel)


def local_files(source: BackupSource, want_globals: bool) -> BackupFiles:
    """Returns the files of a backup in a local directory; raises RestoreError without its dump."""
    assert source.local_dir is not None
    dump = source.local_dir / source.dump_name
    globals_path = None
    if source.globals_name and want_globals:
        candidate = source.local_dir / source.globals_name
        globals_path = candidate if candidate.is_file() else None
    if not dump.exists():
        raise RestoreError(f"{dump}: the dump is not there")
    return BackupFiles(dump, source.local_dir / source.checksum_name, globals_path)


def verify_files(
    source: BackupSource, files: BackupFiles, cancel: CancelToken | None = None
) -> Fetched:
    """Verifies the dump's sha256; returns it with the files. Raises RestoreError on a mismatch.

    The sha256 must match the report and the `.sha256` file, whichever exist (both when both
    do); a dump with neither is refused. A directory dump is checked file by file against its
    manifest, and the manifest against the report.
    """
    dump = files.dump
    checksum_path = files.checksum
    if checksum_path is not None and not checksum_path.exists():
        checksum_path = None
    if source.dump_format == "directory":
        if checksum_path is None:
            raise RestoreError(f"{dump}: no {source.checksum_name} manifest to verify it against")
        sha = verify_directory_dump(dump, checksum_path, source.expected_sha256, files.members_seen)
        return Fetched(dump, files.globals_file, sha)
    expectations = []
    if source.expected_sha256:
        expectations.append((source.expected_sha256, f"the report {source.report_file}".strip()))
    if checksum_path is not None:
        expectations.append(
            (read_checksum_file(checksum_path, source.dump_name), str(checksum_path))
        )
    if not expectations:
        raise RestoreError(
            f"{source.description}: no report and no {source.checksum_name} to verify it "
            "against; refusing to restore an unverified dump"
        )
    actual = files.sha256_seen or sha256_file(dump, cancel)
    for expected, where in expectations:
        if actual != expected:
            raise RestoreError(
                f"{source.description}: checksum mismatch: sha256 of the dump is {actual}, "
                f"{where} says {expected}. The backup is damaged or was changed; "
                "nothing was restored"
            )
    return Fetched(dump, files.globals_file, actual)


def download_files(
    config: Config,
    source: BackupSource,
    workdir: Path,
    cancel: CancelToken | None,
    want_globals: bool,
) -> BackupFiles:
    """Downloads a remote backup's dump, `.sha256` and globals file (and its `.sha256`) into
    `workdir`.

    Returns them with the sha256 seen while downloading. A missing dump raises RestoreError; a
    missing `.sha256` or globals file is left out.
    """
    keys = source.remote_keys
    try:
        target = open_remote(config, source)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dump = workdir / source.dump_name
        seen, members = "", {}
        if source.dump_format == "directory":
            members = download_directory(target, keys["dump"], dump, cancel)
        else:
            seen = download(target, keys["dump"], dump, cancel).sha256
        checksum = _optional(target, keys.get("checksum"), workdir / source.checksum_name, cancel)
        globals_path = None
        if want_globals and source.globals_name:
            globals_path = _optional(
                target, keys.get("globals"), workdir / source.globals_name, cancel
            )
            if globals_path is not None and keys.get("globals"):  # its .sha256, beside it
                sums = globals_path.with_name(f"{globals_path.name}.sha256")
                _optional(target, keys["globals"] + ".sha256", sums, cancel)
    except ObjectMissing as exc:
        raise RestoreError(f"{exc}: nothing to restore") from None
    except StorageError as exc:
        raise RestoreError(str(exc)) from None
    return BackupFiles(dump, checksum, globals_path, seen, members)


def _optional(
    target: Target, name: str | None, destination: Path, cancel: CancelToken | None
) -> Path | None:
    """Downloads a companion file; returns None when there is none."""
    if name is None:
        return None
    try:
        download(target, name, destination, cancel)
    except ObjectMissing:
        return None
    return destination
