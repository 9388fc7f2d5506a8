"""Client-side encryption with age: recipients, the identity file, streaming decryption.

Backups are encrypted by the Debian `age` binary (a child process through execute.py), never by
code of ours. Only public keys (recipients) are needed to back up; the identity (private key) is
needed to restore, verify deeply and drill, and reaches `age -d` only as a file in a private
0700 directory, never on a command line.

What restore, verify and drill use: `identity_file` (the identity as a private file),
`check_identity` (a wrong or missing identity is refused before any database is touched) and
`decrypted` (a readable pipe of the plaintext for `pg_restore`, its sha256 checked on the way).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from db_backup.config import AgeEncryption, Config, ConfigError, SecretRef
from db_backup.storage.keyfile import identity_file_problem, identity_warnings
from db_backup.util.cancel import CancelToken
from db_backup.util.execute import (
    F_SETPIPE_SZ,
    PIPE_SIZE,
    CommandError,
    FilterChild,
    child_env,
    run,
)
from db_backup.util.fsutil import private_file
from db_backup.util.secrets import SecretError, mask, register, resolve_text

AGE = "age"
AGE_KEYGEN = "age-keygen"
SUFFIX = ".age"
HEADER = b"age-encryption.org/v1\n"  # how every age file starts
PGDMP = b"PGDMP"  # how every custom-format dump starts
CHUNK_SIZE = 1024 * 1024
RECIPIENT_FORM = re.compile(r"age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}")
IDENTITY_FORM = re.compile(r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}")
FINGERPRINT_HEX = 16

log = structlog.get_logger("db_backup.storage.crypto")

# What age says, and what it means to the person reading the error.
_AGE_HINTS = (
    ("no identity matched", "the age identity does not match any recipient of this backup"),
    ("failed to decrypt and authenticate payload", "the file is damaged or was altered"),
    ("header", "the file is not an intact age file (damaged, altered or not encrypted)"),
    ("unexpected EOF", "the file is truncated"),
)


class EncryptionError(Exception):
    """Encryption or decryption cannot go on; the message names the file and the cause."""


def fingerprint(recipient: str) -> str:
    """Returns the name a report gives a recipient: `sha256:` + 16 hex digits of its sha256."""
    return "sha256:" + hashlib.sha256(recipient.encode("ascii")).hexdigest()[:FINGERPRINT_HEX]


def stored_name(name: str, encrypted: bool) -> str:
    """Returns the name a file is stored under: `name` + `.age` when encrypted."""
    return name + SUFFIX if encrypted else name


def recipients_of(encryption: AgeEncryption) -> list[str]:
    """Returns the recipients of `encryption` (the list, then the file's), without duplicates.

    Raises EncryptionError naming the file and line of anything that is not an age public key.
    """
    found = list(encryption.recipients)
    path = encryption.recipients_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            cause = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise EncryptionError(f"cannot read the recipients file {path}: {cause}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if IDENTITY_FORM.fullmatch(line.upper()):
                raise EncryptionError(
                    f"{path} line {number} is a private key (AGE-SECRET-KEY-...): the recipients "
                    "file must hold public keys only (age-keygen -y prints them); remove it"
                )
            if not RECIPIENT_FORM.fullmatch(line):
                raise EncryptionError(
                    f"{path} line {number} is not an age public key (age1 followed by 58 "
                    "lower-case letters and digits)"
                )
            found.append(line)
    if not found:
        raise EncryptionError("no age recipients: set recipients or a non-empty recipients_file")
    return list(dict.fromkeys(found))


def encrypt_argv(recipients: Iterable[str]) -> list[str]:
    """Returns the `age --encrypt` argv for `recipients` (public keys: fine on a command line)."""
    argv = [AGE, "--encrypt"]
    for recipient in recipients:
        argv += ["--recipient", recipient]
    return argv


def check_recipients(recipients: list[str]) -> None:
    """Has age encrypt nothing to `recipients`; raises EncryptionError if it refuses one."""
    try:
        run(encrypt_argv(recipients), env=child_env(), input_bytes=b"", timeout=30)
    except CommandError as exc:
        _raise_if_age_missing(exc, "it encrypts the backups")
        raise EncryptionError(f"age refuses the recipients: {exc.stderr_tail or exc}") from None


def _raise_if_age_missing(exc: CommandError, why: str) -> None:
    """Raises EncryptionError saying how to install age when `exc` is age not being there.

    The package only recommends age (encryption is optional), so a host may lack it.
    """
    if exc.returncode is None and shutil.which(exc.program) is None:
        raise EncryptionError(
            f"encryption is configured but the {exc.program} program is not installed "
            f"(apt install age); {why}"
        ) from None


def start_encryption(recipients: list[str]) -> FilterChild:
    """Starts `age --encrypt` to `recipients`, reading plaintext on stdin."""
    return FilterChild(encrypt_argv(recipients), env=child_env())


def recipient_problems(config: Config) -> list[str]:
    """Returns check-config's lines for recipients that age refuses or files it cannot read."""
    problems: list[str] = []
    checked: set[AgeEncryption] = set()  # jobs inheriting storage.encryption share one check
    for index, job in enumerate(config.jobs):
        if job.encryption is None or job.encryption in checked:
            continue
        checked.add(job.encryption)
        where = f"jobs[{index}].encryption.age" if job.own_encryption else "storage.encryption.age"
        try:
            check_recipients(recipients_of(job.encryption))
        except EncryptionError as exc:
            problems.append(f"At '{where}': {exc}")
    return problems


def check_config(config: Config) -> None:
    """Raises ConfigError (like a schema mistake) when age refuses a recipient of `config`.

    For check-config, the daemon's start and every reload: a key age refuses is a bad config.
    """
    problems = recipient_problems(config)
    if problems:
        raise ConfigError(config.source, problems)


def encryption_summary(recipients: list[str]) -> dict[str, Any]:
    """Returns the report's `encryption` block (without the plaintext checksums)."""
    return {"method": "age", "recipientFingerprints": [fingerprint(r) for r in recipients]}


# --- the identity -------------------------------------------------------------------------------


@contextlib.contextmanager
def identity_file(ref: SecretRef | None, private_dir: Path | None = None) -> Iterator[Path]:
    """Yields a 0600 file in a 0700 directory holding the age identity `ref` points to.

    `ref` may name an `age-keygen` key file (comments and the key), a systemd credential, or an
    environment variable holding `AGE-SECRET-KEY-1...`. Only the key lines are copied, and each
    is registered so no log line or message can show it. The directory is removed afterwards
    (`private_dir` under the state directory survives a SIGKILL only until the next use).
    """
    if ref is None:
        raise EncryptionError(
            "this backup is encrypted: give the age identity with `restore --identity FILE`, "
            "or set encryption.age.identity (a {file:} or {credential:} reference to the "
            "private key)"
        )
    problem = identity_file_problem(ref)
    if problem is not None:  # still used: refusing would leave the backups unrestorable
        log.warning("age identity file not private", path=ref.name, problem=problem)
    text = resolve_text(ref, "encryption.age.identity")
    keys = IDENTITY_FORM.findall(text)
    for key in keys:
        register(key)
    if not keys:
        raise EncryptionError(
            f"encryption.age.identity: {ref.describe()} holds no age identity "
            "(a line AGE-SECRET-KEY-1..., as written by age-keygen)"
        )
    text = "".join(f"{key}\n" for key in keys)
    with private_file(private_dir, "identity", text, "db-backup-age-") as path:
        yield path


def identity_recipients(identity: Path) -> list[str]:
    """Returns the recipients (public keys) of the identities in the file `identity`."""
    try:
        out = run([AGE_KEYGEN, "-y", str(identity)], env=child_env(), timeout=30)
    except CommandError as exc:
        _raise_if_age_missing(exc, "it decrypts encrypted backups")
        raise EncryptionError(f"age-keygen cannot read the identity: {exc.stderr_tail}") from None
    return [line.strip() for line in out.splitlines() if line.strip()]


def is_encrypted(report: Mapping[str, Any]) -> bool:
    """Returns whether the backup of `report` was encrypted."""
    encryption = report.get("encryption")
    return isinstance(encryption, Mapping) and encryption.get("method") == "age"


def check_identity(
    identity: Path | None,
    report: Mapping[str, Any],
    stored: Path | None = None,
    magic: bytes | None = PGDMP,
) -> None:
    """Raises EncryptionError unless `identity` can decrypt the backup of `report`.

    Meant to run before any database is touched. First the identity's public keys are compared
    (by fingerprint) with the recipients the report names; then, when the stored file is at
    hand, its first bytes are decrypted and must start with `magic` (PGDMP for a custom-format
    dump; None skips the content check). An unencrypted backup needs no identity.
    """
    if not is_encrypted(report):
        return
    name = _report_file_name(report)
    if identity is None:
        raise EncryptionError(
            f"{name} is encrypted with age: give the identity with `restore --identity FILE` "
            "or set encryption.age.identity to restore it"
        )
    expected = set(report["encryption"].get("recipientFingerprints", []))
    mine = {fingerprint(r) for r in identity_recipients(identity)}
    if not mine & expected:
        raise EncryptionError(
            f"the age identity does not match {name}: it was encrypted to "
            f"{', '.join(sorted(expected)) or 'unknown recipients'}; the identity is for "
            f"{', '.join(sorted(mine))}"
        )
    if stored is None:
        return
    argv = [AGE, "--decrypt", "--identity", str(identity), str(stored)]
    child = FilterChild(argv, env=child_env(), with_stdin=False)
    head = b""
    try:
        for chunk in child.output(CHUNK_SIZE):
            head += chunk
            if len(head) >= 64:
                break  # age releases a 64 KiB chunk only after authenticating it
        else:
            try:
                child.check()
            except CommandError as exc:
                raise EncryptionError(describe_age_failure(stored.name, exc.stderr_tail)) from None
    finally:
        child.terminate(grace=2.0)
    if magic is not None and not head.startswith(magic):
        raise EncryptionError(
            f"{stored.name} decrypts, but not to what was expected "
            f"(it does not start with {magic.decode()})"
        )


def _report_file_name(report: Mapping[str, Any]) -> str:
    local = report.get("local")
    if isinstance(local, Mapping) and local.get("file"):
        return Path(str(local["file"])).name
    urls = (report.get("remote") or {}).get("urls") or []
    return str(urls[0]).rsplit("/", 1)[-1] if urls else "the backup"


def describe_age_failure(name: str, stderr_tail: str) -> str:
    """Returns a message for a failed `age --decrypt` of `name`: what it means, then age's words."""
    said = stderr_tail.replace(
        " | age: report unexpected or unhelpful errors at https://filippo.io/age/report", ""
    )
    meaning = next((hint for key, hint in _AGE_HINTS if key in said), "decryption failed")
    return mask(f"cannot decrypt {name}: {meaning} ({said or 'age failed'})")


# --- streaming decryption -----------------------------------------------------------------------


@dataclass
class Decryption:
    """A running decryption: read the plaintext from `fd`; after the block, its sha256 and size."""

    fd: int
    sha256: str = ""
    size: int = 0
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def decrypted(
    source: Path | Iterable[bytes],
    identity: Path,
    *,
    expected_sha256: str | None = None,
    name: str = "",
    cancel: CancelToken | None = None,
) -> Iterator[Decryption]:
    """Yields a readable pipe of the plaintext of `source` (a stored file or its bytes).

    Hand `fd` to `pg_restore` as stdin (custom format needs no seekable file then, so no
    plaintext copy is ever written). The plaintext's sha256 is computed on the way; when the
    block ends, an age failure (wrong identity, damaged or altered file: age authenticates every
    64 KiB before releasing it) or a checksum other than `expected_sha256` raises
    EncryptionError. If the consumer stops reading early, the rest is still decrypted (and
    discarded) so the whole file is checked. An error inside the block that decryption caused
    is reported as the decryption error.
    """
    label = name or (source.name if isinstance(source, Path) else "the backup")
    argv = [AGE, "--decrypt", "--identity", str(identity)]
    if isinstance(source, Path):
        argv.append(str(source))
    child = FilterChild(argv, env=child_env(), with_stdin=not isinstance(source, Path))
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
    result = Decryption(read_fd)
    digest = hashlib.sha256()
    threads: list[threading.Thread] = []

    if not isinstance(source, Path):
        threads.append(
            threading.Thread(target=_feed, args=(child, source, result, label), daemon=True)
        )
    threads.append(
        threading.Thread(target=_drain, args=(child, write_fd, result, digest, cancel), daemon=True)
    )
    for thread in threads:
        thread.start()
    body_error: BaseException | None = None
    age_status = None
    try:
        yield result
    except BaseException as exc:
        body_error = exc
        # Did age fail first (the consumer then saw a short stream), or is it still fine?
        age_status = child.wait(timeout=1.0)
        if age_status is None:
            child.terminate(grace=2.0)
    finally:
        os.close(read_fd)
        for thread in threads:
            thread.join()
    if body_error is not None and not age_status:
        raise body_error
    problem = _decryption_problem(child, result, label, expected_sha256)
    result.sha256 = digest.hexdigest()
    if problem is None and expected_sha256 and result.sha256 != expected_sha256:
        problem = (
            f"{label}: the decrypted dump's sha256 is {result.sha256}, the report says "
            f"{expected_sha256}: it is not the backup the report describes"
        )
    if problem is not None:
        raise EncryptionError(problem) from body_error
    if body_error is not None:
        raise body_error


def _feed(child: FilterChild, chunks: Iterable[bytes], result: Decryption, label: str) -> None:
    """Writes `chunks` (the encrypted bytes) to age's stdin; a failing source stops age."""
    fd = child.stdin_fd
    os.set_blocking(fd, True)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass  # age stopped: its exit status says why
    except Exception as exc:  # the source failed (a download): age must not see an EOF
        result.errors.append(mask(f"reading {label} failed: {exc}"))
        child.terminate(grace=2.0)
    finally:
        child.close_stdin()


def _drain(
    child: FilterChild,
    write_fd: int,
    result: Decryption,
    digest: Any,
    cancel: CancelToken | None,
) -> None:
    """Copies age's plaintext to `write_fd`, hashing all of it even after the reader left."""
    consumer_gone = False
    try:
        for chunk in child.output(CHUNK_SIZE, cancel):
            digest.update(chunk)
            result.size += len(chunk)
            view = memoryview(chunk)
            while view and not consumer_gone:
                try:
                    view = view[os.write(write_fd, view) :]
                except BrokenPipeError:
                    consumer_gone = True
    except Exception as exc:
        result.errors.append(mask(str(exc)))
    finally:
        os.close(write_fd)


def _decryption_problem(
    child: FilterChild, result: Decryption, label: str, expected_sha256: str | None
) -> str | None:
    """Returns why a finished decryption failed, or None when age exited 0."""
    try:
        child.check()
    except CommandError as exc:
        if exc.returncode is not None and exc.returncode < 0:
            return result.errors[0] if result.errors else f"decrypting {label} was stopped"
        return describe_age_failure(label, exc.stderr_tail)
    if result.errors:
        return result.errors[0]
    return None


def verify_decryption(
    source: Path | Iterable[bytes],
    identity: Path,
    *,
    expected_sha256: str | None = None,
    name: str = "",
    cancel: CancelToken | None = None,
) -> tuple[str, int]:
    """Decrypts all of `source` to nowhere; returns the plaintext's (sha256, size).

    For `verify --deep`: proves the identity, every authenticated chunk and the checksum.
    Raises EncryptionError like `decrypted`.
    """
    with decrypted(
        source, identity, expected_sha256=expected_sha256, name=name, cancel=cancel
    ) as stream:
        while os.read(stream.fd, CHUNK_SIZE):
            pass
    return stream.sha256, stream.size


__all__ = [
    "HEADER",
    "PGDMP",
    "SUFFIX",
    "Decryption",
    "EncryptionError",
    "SecretError",
    "check_identity",
    "check_recipients",
    "decrypted",
    "encryption_summary",
    "fingerprint",
    "identity_file",
    "identity_recipients",
    "identity_warnings",
    "is_encrypted",
    "recipient_problems",
    "recipients_of",
    "start_encryption",
    "stored_name",
    "verify_decryption",
]
