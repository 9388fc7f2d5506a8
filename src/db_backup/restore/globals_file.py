"""A backup's roles file (`<stem>_globals.sql`): checked before it is used, then put back.

`check_roles_file` proves the stored bytes against the report's `globals.sha256` (older
encrypted reports: `encryption.globalsSha256`) and the `.sha256` beside the file, decrypts an
encrypted one (its plaintext's sha256 against the report), and reads it as statements
(restore.roles.parse_globals), which refuses a file that was cut short. `plan_on` asks the
server which roles and tablespaces it has and decides what runs (restore.roles.plan_roles);
`apply` runs that: the roles in one transaction, then the tablespaces. Restore, drill and
verify all check a roles file here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db_backup.postgres.server import Server, psql_script
from db_backup.restore.checksums import read_checksum_file, sha256_file
from db_backup.restore.roles import (
    GlobalsError,
    RolePlan,
    Statement,
    parse_globals,
    plan_roles,
    roles_sql,
    tablespaces_sql,
)
from db_backup.restore.source import RestoreError
from db_backup.storage import crypto
from db_backup.util.execute import CommandError


@dataclass(frozen=True)
class CheckedRoles:
    """A roles file that passed every check: its statements and what it was checked against."""

    name: str
    statements: list[Statement]
    checked: list[str]  # e.g. ["sha256 (report)", "sha256 (x.sha256)", "complete"]


def _globals_entry(report: Mapping[str, Any] | None, key: str, legacy: str) -> str:
    """Returns the report's `globals.<key>`, else `encryption.<legacy>`, else ""."""
    report = report or {}
    for block, name in (("globals", key), ("encryption", legacy)):
        value = report.get(block)
        if isinstance(value, dict) and isinstance(value.get(name), str) and value[name]:
            return str(value[name]).lower()
    return ""


def recorded_sha256(report: Mapping[str, Any] | None) -> str:
    """Returns the sha256 of the stored roles file the report records ("" when it has none)."""
    return _globals_entry(report, "sha256", "globalsSha256")


def recorded_plaintext_sha256(report: Mapping[str, Any] | None) -> str:
    """Returns the sha256 of an encrypted roles file's plaintext the report records, or ""."""
    return _globals_entry(report, "plaintextSha256", "globalsPlaintextSha256")


def checksum_file_of(path: Path) -> Path:
    """Returns where the `.sha256` of the roles file `path` is (beside it)."""
    return path.with_name(f"{path.name}.sha256")


def check_stored_bytes(path: Path, report: Mapping[str, Any] | None) -> list[str]:
    """Checks the stored roles file's sha256 against the report and its `.sha256` beside it.

    Returns what it was checked against; raises RestoreError on a mismatch. A backup made
    before roles files had checksums has neither: then nothing is said here and only the
    file's completeness (parse_globals) vouches for it.
    """
    checksum = checksum_file_of(path)
    expectations = []
    if expected := recorded_sha256(report):
        expectations.append((expected, "the report"))
    if checksum.is_file():
        expectations.append((read_checksum_file(checksum, path.name), checksum.name))
    if not expectations:
        return []
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise RestoreError(f"{path}: cannot read the roles file ({exc.strerror})") from None
    for expected, where in expectations:
        if actual != expected:
            raise RestoreError(
                f"{path}: roles file checksum mismatch: its sha256 is {actual}, {where} says "
                f"{expected}; the roles file is damaged or was changed"
            )
    return [f"sha256 ({where.removeprefix('the ')})" for _, where in expectations]


def read_roles_text(path: Path, report: Mapping[str, Any] | None, identity: Path | None) -> str:
    """Returns the roles file's text, decrypted with `identity` when the report says encrypted.

    The plaintext's sha256 is checked against the report's when it records one.
    """
    if not crypto.is_encrypted(report or {}):
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RestoreError(f"{path}: cannot read the roles file ({exc})") from None
    if identity is None:
        raise RestoreError(f"{path}: the roles file is encrypted and no age identity opens it")
    expected = recorded_plaintext_sha256(report) or None
    try:
        with (
            crypto.decrypted(path, identity, expected_sha256=expected, name=path.name) as stream,
            os.fdopen(stream.fd, "rb", closefd=False) as handle,
        ):
            data = handle.read()
    except crypto.EncryptionError as exc:
        raise RestoreError(str(exc)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RestoreError(f"{path}: the roles file is not UTF-8 ({exc})") from None


def check_roles_file(
    path: Path, report: Mapping[str, Any] | None, identity: Path | None = None
) -> CheckedRoles:
    """Returns the statements of a roles file that passed every check; raises RestoreError.

    The stored bytes against the report and the `.sha256` (check_stored_bytes), the plaintext
    of an encrypted file against the report, and the text must be whole (parse_globals).
    """
    checked = check_stored_bytes(path, report)
    text = read_roles_text(path, report, identity)
    if crypto.is_encrypted(report or {}) and recorded_plaintext_sha256(report):
        checked.append("plaintext sha256 (report)")
    try:
        statements = parse_globals(text)
    except GlobalsError as exc:
        raise RestoreError(f"{path}: the roles file is incomplete: {exc}") from None
    return CheckedRoles(path.name, statements, [*checked, "complete"])


def _names(server: Server, sql: str) -> set[str]:
    """Returns the names a one-column query returns (NUL-separated: names may hold anything)."""
    out = psql_script(server, "postgres", sql, nul_separated=True)
    return {name for name in out.split("\0") if name}


def plan_on(
    server: Server, roles: CheckedRoles, *, reset: bool = False, skip_tablespaces: bool = False
) -> RolePlan:
    """Returns what restoring `roles` does on `server` (which roles and tablespaces it has)."""
    try:
        existing = _names(server, "SELECT rolname FROM pg_roles;")
        spaces = _names(server, "SELECT spcname FROM pg_tablespace;")
    except CommandError as exc:
        raise RestoreError(f"{server.describe()}: cannot list its roles: {exc}") from None
    return plan_roles(
        roles.statements, existing, spaces, reset=reset, skip_tablespaces=skip_tablespaces
    )


def apply(server: Server, plan: RolePlan, name: str) -> None:
    """Runs `plan` on `server`: the roles in one transaction, then the tablespaces."""
    for script, what in ((roles_sql(plan), "roles"), (tablespaces_sql(plan), "tablespaces")):
        if not script:
            continue
        try:
            psql_script(server, "postgres", script)
        except CommandError as exc:
            raise RestoreError(f"restoring {what} from {name} failed: {exc}") from None
