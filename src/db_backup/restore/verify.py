"""`db-backup verify`: checks that what the reports promise is still stored, without restoring.

Local copies: the dump is there, has the reported size, its sha256 equals the report's and the
`.sha256` file's, and `pg_restore --list` reads its table of contents (a cheap structural check).
Remote copies (`--remote`), through the storage protocol of whichever target the report says
holds them: the object exists with the reported size and the integrity values the backend offers
match, without downloading it (OSS: HEAD's CRC-64 against the report's and the `sha256` tag;
rclone: the sha256/md5 the remote computes); `--deep` reads it (to nowhere, piece by piece) and
hashes it. File names come from the reports and are accepted only as plain names in the data
directory or under the configured prefix.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from db_backup.config import Config
from db_backup.reports.model import SUCCESS, StoredReport, load_reports
from db_backup.restore.checksums import (
    check_manifest,
    manifest_names,
    read_checksum_file,
    sha256_file,
    verify_directory_dump,
)
from db_backup.restore.remote import remote_holder
from db_backup.restore.source import (
    BackupSource,
    RestoreError,
    dump_format_of,
    safe_file_name,
    source_from_report,
)
from db_backup.restore.steps import explain_restore_error
from db_backup.restore.verify_roles import check_remote_roles, check_roles_copy, identity_ref
from db_backup.storage import reading_target
from db_backup.storage.base import ObjectMissing, StorageError, Target, split_member
from db_backup.storage.crypto import is_encrypted
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import CommandError, run
from db_backup.util.secrets import SecretError, mask


@dataclass
class Result:
    """The checks of one stored copy of one backup."""

    report: str
    job: str
    database: str
    target: str  # "local" | "oss" | "rclone"
    location: str
    passed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Returns True when every check passed."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """Returns the result as a JSON object."""
        return {**asdict(self), "ok": self.ok}


def verify(
    config: Config,
    *,
    job: str | None = None,
    database: str | None = None,
    latest: bool = False,
    remote: bool = False,
    deep: bool = False,
    cancel: CancelToken | None = None,
) -> list[Result]:
    """Returns a result per stored copy of every successful backup that matches the filters."""
    results: list[Result] = []
    # holder -> its reading target, or why it cannot be reached (no section, a secret that
    # cannot be resolved): tried once, then said for each copy it holds, never a traceback
    reachable: dict[str, Any] = {}
    for stored, has_local, holder in _copies(config, job, database, latest):
        doc = stored.document
        if has_local:
            results.append(_verify_local(config, stored.path, doc, deep))
        if (remote or deep) and holder is not None:
            if holder not in reachable:
                try:
                    reachable[holder] = reading_target(config, holder)
                except (StorageError, SecretError) as exc:
                    reachable[holder] = str(exc)
            target = reachable[holder]
            if isinstance(target, str):
                failed = _result(stored.path, doc, holder, "")
                failed.problems.append(f"not checked: {target}")
                results.append(failed)
                continue
            results.append(_verify_remote(config, target, stored.path, doc, deep, cancel))
    return results


def remote_only(
    config: Config, *, job: str | None = None, database: str | None = None, latest: bool = False
) -> int:
    """Returns how many matching backups have no local copy, only a remote one (plain `verify`
    skips them; `--remote` checks them)."""
    return sum(
        1 for _, local, holder in _copies(config, job, database, latest) if holder and not local
    )


def _copies(
    config: Config, job: str | None, database: str | None, latest: bool
) -> Iterator[tuple[StoredReport, bool, str | None]]:
    """Yields each successful backup that matches, newest first, whether it has a local copy,
    and which remote target holds a copy (None: none)."""
    reports, _ = load_reports(config.directories.reports)
    seen: set[tuple[str, str]] = set()
    for stored in reports:  # newest first
        doc = stored.document
        if doc["status"] != SUCCESS:
            continue
        if (job is not None and stored.job != job) or (
            database is not None and doc["database"] != database
        ):
            continue
        key = (stored.job, str(doc["database"]))
        if latest and key in seen:
            continue
        seen.add(key)
        raw_targets = doc.get("targets")
        targets: dict[str, Any] = raw_targets if isinstance(raw_targets, dict) else {}
        has_local = bool(doc["local"].get("file")) and (
            not targets or targets.get("local", {}).get("status") == SUCCESS
        )
        yield stored, has_local, (remote_holder(doc) if targets else None)


def _result(path: Path, doc: dict[str, Any], target: str, location: str) -> Result:
    return Result(path.name, str(doc.get("job", "")), str(doc["database"]), target, location)


def _verify_local(config: Config, path: Path, doc: dict[str, Any], deep: bool = False) -> Result:
    result = _result(path, doc, "local", "")
    try:
        source = source_from_report(config, doc, str(path))
    except RestoreError as exc:
        result.problems.append(str(exc))
        return result
    directory = config.directories.data
    dump = directory / source.dump_name
    result.location = str(dump)
    if not dump.exists():
        result.problems.append(f"{dump}: missing")
        return result
    checksum = directory / source.checksum_name
    try:
        if source.dump_format == "directory":
            verify_directory_dump(dump, checksum, source.expected_sha256)
            result.passed.append("sha256 of every file (manifest)")
        else:
            size = dump.stat().st_size
            expected_size = doc["local"]["sizeBytes"]
            if size != expected_size:
                result.problems.append(
                    f"size is {size} bytes, the report says {expected_size} (truncated?)"
                )
            else:
                result.passed.append("size")
            actual = sha256_file(dump)
            if actual != source.expected_sha256:
                result.problems.append(
                    f"sha256 is {actual}, the report says {source.expected_sha256}"
                )
            else:
                result.passed.append("sha256 (report)")
            if checksum.exists():
                recorded = read_checksum_file(checksum, source.dump_name)
                if recorded != actual:
                    result.problems.append(f"sha256 is {actual}, {checksum.name} says {recorded}")
                else:
                    result.passed.append(f"sha256 ({checksum.name})")
            else:
                result.problems.append(f"{checksum.name} is missing")
    except RestoreError as exc:
        result.problems.append(str(exc))
    except OSError as exc:
        result.problems.append(f"{dump}: cannot read ({exc.strerror})")
    if is_encrypted(doc):
        _encrypted_structure(config, result, dump, doc, deep)
    else:
        _structure(result, source.dump_format, dump, doc)
    if source.globals_name:
        roles = directory / safe_file_name(source.globals_name)
        _add(result, check_roles_copy(config, roles, doc, deep))
    return result


def _add(result: Result, checks: tuple[list[str], list[str]]) -> None:
    """Adds what a check found (passed, problems) to `result`."""
    result.passed += checks[0]
    result.problems += checks[1]


def _encrypted_structure(
    config: Config, result: Result, dump: Path, doc: dict[str, Any], deep: bool
) -> None:
    """Checks an age-encrypted dump: its header; with --deep, the whole decryption.

    `pg_restore --list` cannot read ciphertext. --deep decrypts every byte to nowhere with the
    job's `encryption.age.identity` (age authenticates each chunk) and compares the plaintext's
    sha256 with the report's `encryption.plaintextSha256`.
    """
    from db_backup.storage.crypto import HEADER, EncryptionError, identity_file, verify_decryption

    try:
        with dump.open("rb") as handle:
            head = handle.read(len(HEADER))
    except OSError as exc:
        result.problems.append(f"{dump}: cannot read ({exc.strerror})")
        return
    if not head.startswith(HEADER):
        result.problems.append("the report says encrypted, but the file has no age header")
        return
    result.passed.append("age header")
    if not deep:
        return
    ref = identity_ref(config, doc)
    expected = (doc.get("encryption") or {}).get("plaintextSha256")
    private = config.directories.state / "private" / f"verify-{os.getpid()}"
    try:
        with identity_file(ref, private) as identity:
            verify_decryption(dump, identity, expected_sha256=expected, name=dump.name)
    except (EncryptionError, SecretError) as exc:
        result.problems.append(f"decryption: {mask(str(exc))}")
        return
    result.passed.append("decrypts, plaintext sha256 (report)")


def _structure(result: Result, fmt: str, dump: Path, doc: dict[str, Any]) -> None:
    """Adds the cheap structural check: pg_restore --list, or the plain dump's header."""
    if fmt == "plain":
        try:
            with dump.open("rb") as handle:
                head = handle.read(4096)
        except OSError as exc:
            result.problems.append(f"{dump}: cannot read ({exc.strerror})")
            return
        if b"PostgreSQL database dump" in head:
            result.passed.append("plain dump header")
        else:
            result.problems.append("not a plain pg_dump file (no PostgreSQL dump header)")
        return
    try:
        out = run(["pg_restore", "--list", str(dump)], timeout=600)
    except CommandError as exc:
        stand_in = BackupSource(dump.name, fmt, str(doc["database"]), report=doc)
        result.problems.append(f"pg_restore --list: {explain_restore_error(str(exc), stand_in)}")
        return
    entries = sum(1 for line in out.splitlines() if line and not line.startswith(";"))
    result.passed.append(f"pg_restore --list ({entries} entries)")


def _verify_remote(
    config: Config,
    target: Target,
    path: Path,
    doc: dict[str, Any],
    deep: bool,
    cancel: CancelToken | None,
) -> Result:
    """Checks the remote copy on `target`: size and the backend's integrity values (head);
    with `deep`, the sha256 of every byte read back; and the roles file beside it."""
    result = _result(path, doc, target.name, "")
    artefacts = doc.get("artefacts") or []
    members = [a for a in artefacts if split_member(a) is not None]
    if members:
        _verify_remote_directory(target, result, doc, members, deep, cancel)
    else:
        _verify_remote_file(target, result, doc, artefacts, deep, cancel)
    _add(result, check_remote_roles(config, target, doc, deep, cancel))
    return result


def _verify_remote_file(
    target: Target,
    result: Result,
    doc: dict[str, Any],
    artefacts: list[str],
    deep: bool,
    cancel: CancelToken | None,
) -> Result:
    """Checks a one-file dump on `target` (size, integrity values, sha256 with `deep`)."""
    try:
        name = safe_file_name(artefacts[0] if artefacts else "")
        dump_format_of(name)
    except RestoreError as exc:
        result.problems.append(str(exc))
        return result
    result.location = target.location(name)
    expected_sha = str(doc["local"]["checksumSha256"])
    expected_size = doc["local"]["sizeBytes"]
    recorded = doc.get("targets", {}).get(target.name, {})
    try:
        info = target.head(name)
    except ObjectMissing:
        result.problems.append("object missing")
        return result
    except StorageError as exc:
        result.problems.append(str(exc))
        return result
    if info.size != expected_size:
        result.problems.append(f"size is {info.size} bytes, the report says {expected_size}")
    else:
        result.passed.append("size")
    passed, problems = target.check_head(info, expected_sha, recorded)
    result.passed += passed
    result.problems += problems
    _check_checksum_object(result, target, name)
    if deep:
        try:
            got = target.get(name, None, cancel)
        except StorageError as exc:
            result.problems.append(str(exc))
            return result
        if got.sha256 != expected_sha:
            result.problems.append(
                f"downloaded sha256 is {got.sha256}, the report says {expected_sha}"
            )
        else:
            result.passed.append("sha256 (downloaded)")
        if got.mismatch:
            result.problems.append(got.mismatch)
        elif got.checked:
            result.passed.append(f"{got.checked} (downloaded)")
    return result


def _check_checksum_object(result: Result, target: Target, name: str) -> None:
    """Records in `result` whether the `name.sha256` object stands next to the dump."""
    try:
        target.head(f"{name}.sha256", hashes=False)
        result.passed.append(f"{name}.sha256 present")
    except ObjectMissing:
        result.problems.append(f"{name}.sha256 object missing")
    except StorageError as exc:
        result.problems.append(str(exc))


def render(results: list[Result]) -> str:
    """Returns one line per checked copy and a summary line."""
    lines = []
    for r in results:
        status = "OK" if r.ok else "MISMATCH"
        what = "; ".join(r.problems) if r.problems else ", ".join(r.passed)
        lines.append(
            f"{status:<9}{r.job}/{r.database}  {r.target}  {r.location or r.report}  {what}"
        )
    bad = sum(1 for r in results if not r.ok)
    lines.append(f"{len(results)} stored copies checked, {bad} with problems")
    return "\n".join(lines)


def _verify_remote_directory(
    target: Target,
    result: Result,
    doc: dict[str, Any],
    members: list[str],
    deep: bool,
    cancel: CancelToken | None,
) -> Result:
    """Checks a remote directory dump: heads every member (size, integrity value) and its
    manifest; with `deep`, reads every member back through the backend's check."""
    directory = {member[0] for member in map(split_member, members) if member is not None}
    if len(directory) != 1:
        result.problems.append("the report names members of more than one directory dump")
        return result
    [name] = directory
    result.location = target.location(f"{name}/")
    expected_size = doc["local"]["sizeBytes"]
    total = 0
    missing = []
    checked: set[str] = set()
    hashes: dict[str, str] = {}  # --deep: member's name inside the directory -> sha256
    for member in members:
        try:
            info = target.head(member, hashes=False)
        except ObjectMissing:
            missing.append(member)
            continue
        except StorageError as exc:
            result.problems.append(str(exc))
            return result
        total += info.size
        _, problems = target.check_head(info, "", {})
        result.problems += [f"{member}: {problem}" for problem in problems]
        if deep:
            try:
                got = target.get(member, None, cancel)
            except StorageError as exc:
                result.problems.append(str(exc))
                continue
            if got.mismatch:
                result.problems.append(f"{member}: {got.mismatch}")
            checked.add(got.checked)
            hashes[member[len(name) + 1 :]] = got.sha256
    if missing:
        result.problems.append(f"objects missing: {', '.join(missing)}")
    elif total != expected_size:
        result.problems.append(f"the objects hold {total} bytes, the report says {expected_size}")
    else:
        result.passed.append(f"{len(members)} objects present, sizes")
        if deep and checked and "" not in checked:
            result.passed += [f"{check} (downloaded)" for check in sorted(checked)]
    _check_checksum_object(result, target, name)
    if deep and not missing and len(hashes) == len(members):
        _check_remote_manifest(target, result, doc, name, hashes, cancel)
    return result


def _check_remote_manifest(
    target: Target,
    result: Result,
    doc: dict[str, Any],
    name: str,
    hashes: dict[str, str],
    cancel: CancelToken | None,
) -> None:
    """--deep of a remote directory dump: the manifest against the report, every member read
    back against the manifest (checksums.check_manifest, as restore checks them)."""
    manifest_name = f"{name}.sha256"
    where = target.location(manifest_name)
    try:
        got = target.get(manifest_name, (buffer := io.BytesIO()), cancel)
        if got.mismatch:
            raise StorageError(f"{where}: {got.mismatch}")
        text = buffer.getvalue().decode("utf-8")
        expected = str(doc["local"].get("checksumSha256", "")).lower()

        def member_sha256(member: str) -> tuple[str, str] | None:
            found = hashes.get(member)
            return None if found is None else (target.location(f"{name}/{member}"), found)

        check_manifest(text, where, name, expected, member_sha256)
        listed = {member for _, member in manifest_names(text, where, name)}
    except (StorageError, RestoreError) as exc:
        result.problems.append(str(exc))
        return
    except UnicodeDecodeError as exc:
        result.problems.append(f"{where}: cannot read the manifest ({exc})")
        return
    unlisted = sorted(set(hashes) - listed)
    if unlisted:
        result.problems.append(f"objects the manifest does not list: {', '.join(unlisted)}")
    else:
        result.passed.append("sha256 of every object (manifest, report)")
