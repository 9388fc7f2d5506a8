"""`db-backup verify` of a backup's roles file, local and remote: the checks restore makes.

A local copy, or the remote copy (OSS, rclone) fetched with its `.sha256` (a roles file is a few kilobytes, so
`--remote` fetches it whole): the stored bytes against the report and the `.sha256`, and the
text whole (restore.globals_file). An encrypted roles file is decrypted only with `--deep`
(with the job's age identity), its plaintext checked against the report's sha256.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from db_backup.config import Config, SecretRef
from db_backup.restore.globals_file import (
    check_roles_file,
    check_stored_bytes,
    checksum_file_of,
    recorded_sha256,
)
from db_backup.restore.source import RestoreError, safe_file_name
from db_backup.storage.base import ObjectMissing, StorageError, Target
from db_backup.storage.crypto import EncryptionError, identity_file, is_encrypted
from db_backup.storage.download import download
from db_backup.util.cancel import CancelToken
from db_backup.util.secrets import SecretError, mask

GLOBALS_SUFFIXES = ("_globals.sql", "_globals.sql.age")
Checks = tuple[list[str], list[str]]  # what passed, what is wrong


def roles_file_name(doc: dict[str, Any]) -> str:
    """Returns the name of the roles file a report lists ("" when it has none)."""
    names = [a for a in doc.get("artefacts") or [] if str(a).endswith(GLOBALS_SUFFIXES)]
    return safe_file_name(names[0]) if names else ""


def identity_ref(config: Config, doc: dict[str, Any]) -> SecretRef | None:
    """Returns the age identity of the job that made the backup of `doc` (None: none)."""
    return next(
        (j.encryption.identity for j in config.jobs if j.name == doc.get("job") and j.encryption),
        None,
    )


@contextlib.contextmanager
def private_dir(config: Config, label: str) -> Iterator[Path]:
    """Yields a 0700 directory under the state directory (else the system's temporary
    directory, for a user who may not write there), removed afterwards."""
    parent = config.directories.state / "private"
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = Path(tempfile.mkdtemp(prefix=f"{label}-{os.getpid()}-", dir=parent))
    except OSError:
        path = Path(tempfile.mkdtemp(prefix=f"db-backup-{label}-"))  # 0700 as well
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_roles_copy(config: Config, path: Path, doc: dict[str, Any], deep: bool) -> Checks:
    """Returns what passed and what is wrong with the roles file at `path` (its `.sha256`
    beside it)."""
    if not path.is_file():
        return [], [f"{path}: missing"]
    problems = []
    if recorded_sha256(doc) and not checksum_file_of(path).is_file():
        problems.append(f"{checksum_file_of(path).name} is missing")
    try:
        if not is_encrypted(doc):
            checked = check_roles_file(path, doc).checked
        elif not deep:
            checked = check_stored_bytes(path, doc) or ["present"]
        else:
            with config_identity(config, doc) as identity:
                checked = check_roles_file(path, doc, identity).checked
    except RestoreError as exc:
        return [], [*problems, str(exc)]
    except (EncryptionError, SecretError) as exc:
        return [], [*problems, f"roles file decryption: {mask(str(exc))}"]
    return [f"roles file {', '.join(checked)}"], problems


@contextlib.contextmanager
def config_identity(config: Config, doc: dict[str, Any]) -> Iterator[Path]:
    """Yields the job's age identity as a private file (SecretError when it has none)."""
    with (
        private_dir(config, "verify-identity") as private,
        identity_file(identity_ref(config, doc), private) as identity,
    ):
        yield identity


def check_remote_roles(
    config: Config, target: Target, doc: dict[str, Any], deep: bool, cancel: CancelToken | None
) -> Checks:
    """Returns what passed and what is wrong with the remote copy of the report's roles file."""
    try:
        name = roles_file_name(doc)
    except RestoreError as exc:
        return [], [str(exc)]
    if not name:
        return [], []
    with private_dir(config, "verify-roles") as workdir:
        path = workdir / name
        try:
            download(target, name, path, cancel)
        except ObjectMissing:
            return [], [f"{name} object missing"]
        except StorageError as exc:
            return [], [str(exc)]
        try:
            download(target, f"{name}.sha256", checksum_file_of(path), cancel)
        except ObjectMissing:
            pass  # check_roles_copy says so when the report records a checksum
        except StorageError as exc:
            return [], [str(exc)]
        passed, problems = check_roles_copy(config, path, doc, deep)
        # Messages name the object, not the private copy.
        where = target.location(name)
        return passed, [p.replace(str(path), where) for p in problems]
