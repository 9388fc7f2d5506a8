"""Resolves secret references and remembers every secret so log output can mask it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

MASK = "***"
_known: set[str] = set()
_lock = threading.Lock()
# Credentials read from the unit's own sources (`unit_credentials`) by a command started outside
# the unit, before it dropped root: name -> value, and name -> why it could not be read.
_unit_values: dict[str, bytes] = {}
_unit_problems: dict[str, str] = {}
_unit_origins: dict[str, str] = {}


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is read from: an environment variable, a file or a systemd credential."""

    kind: str  # "env" | "file" | "credential"
    name: str

    def describe(self) -> str:
        """Returns where the secret comes from, for messages (never the secret)."""
        return f"{self.kind} {self.name!r}"


class SecretError(Exception):
    """A referenced secret could not be read; the message names the reference, not the value."""


def resolve(ref: SecretRef, purpose: str) -> str:
    """Returns the secret `ref` points to and registers it for masking; raises SecretError."""
    if ref.kind == "env":
        value = _environment(ref, purpose)
    elif ref.kind == "file":
        value = _first_line(Path(ref.name), purpose)
    elif ref.kind == "credential":
        value = _credential_first_line(ref, purpose)
    else:  # pragma: no cover - the schema allows only the three kinds
        raise SecretError(f"{purpose}: unknown secret kind {ref.kind!r}")
    if not value:
        raise SecretError(f"{purpose}: {ref.describe()} is empty")
    register(value)
    return value


def _environment(ref: SecretRef, purpose: str) -> str:
    """Returns the environment variable `ref` names; raises SecretError when it is not set."""
    value = os.environ.get(ref.name)
    if value is None:
        raise SecretError(f"{purpose}: environment variable {ref.name} is not set")
    return value


def provide_unit_credentials(
    values: dict[str, bytes], problems: dict[str, str], origins: dict[str, str]
) -> None:
    """Makes `{credential:}` references resolve from `values` outside the unit.

    `problems` says, per name, why it could not be read; `origins` where each value came from.
    Inside the unit ($CREDENTIALS_DIRECTORY set) these are never used.
    """
    with _lock:
        _unit_values.update(values)
        _unit_problems.update(problems)
        _unit_origins.update(origins)


def credential_origin(name: str) -> str | None:
    """Returns where credential `name` comes from (a directory or a unit setting), or None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        return f"$CREDENTIALS_DIRECTORY ({directory})"
    with _lock:
        return _unit_origins.get(name)


def _credential_text(ref: SecretRef, purpose: str) -> str | None:
    """Returns the unit-provided value of credential `ref` outside the unit, None inside it."""
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return None
    with _lock:
        value, problem = _unit_values.get(ref.name), _unit_problems.get(ref.name)
    if value is None:
        raise SecretError(
            f"{purpose}: credential {ref.name!r} {problem}"
            if problem
            else f"{purpose}: credential {ref.name!r} needs $CREDENTIALS_DIRECTORY "
            "(set LoadCredential= in the unit)"
        )
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError(
            f"{purpose}: credential {ref.name!r} is not UTF-8 text (byte offset {exc.start})"
        ) from None


def _credential_path(ref: SecretRef) -> Path:
    """Returns where systemd put the credential `ref` names (inside the unit)."""
    return Path(os.environ["CREDENTIALS_DIRECTORY"]) / ref.name


def _credential_first_line(ref: SecretRef, purpose: str) -> str:
    """Returns the first line of credential `ref`, from the unit's directory or its sources."""
    text = _credential_text(ref, purpose)
    if text is not None:
        return text.split("\n", 1)[0].rstrip("\r")
    path = _credential_path(ref)
    if not path.exists() and path.parent.is_dir():
        raise SecretError(
            f"{purpose}: credential {ref.name!r} is not in $CREDENTIALS_DIRECTORY ({path.parent}): "
            "systemd loads credentials when the service starts; after adding LoadCredential= "
            "run `systemctl restart db-backup`"
        )
    return _first_line(path, purpose)


def resolve_text(ref: SecretRef, purpose: str, max_bytes: int = 64 * 1024) -> str:
    """Returns the whole secret `ref` points to (every line of a file), registering nothing.

    For multi-line secrets (an age key file: comments, then the key); the caller registers
    the parts that are secret. Errors name the reference, never the content.
    """
    if ref.kind == "env":
        return _environment(ref, purpose)
    if ref.kind == "credential" and (text := _credential_text(ref, purpose)) is not None:
        return text
    path = _credential_path(ref) if ref.kind == "credential" else Path(ref.name)
    try:
        with path.open("rb") as handle:
            raw = handle.read(max_bytes)
    except OSError as exc:
        raise SecretError(f"{purpose}: cannot read {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretError(
            f"{purpose}: {path} is not UTF-8 text (invalid byte at offset {exc.start})"
        ) from None


def register(value: str) -> None:
    """Adds `value` to the strings that `mask` hides."""
    if len(value) >= 3:
        with _lock:
            _known.add(value)


def is_secret(value: str) -> bool:
    """Returns whether `value` is one of the secrets this process resolved."""
    with _lock:
        return value in _known


def mask(text: str) -> str:
    """Returns `text` with every registered secret replaced by ***."""
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _first_line(path: Path, purpose: str) -> str:
    """Returns the first line of a secret file; errors name the file, never its content."""
    try:
        with path.open("rb") as handle:
            raw = handle.readline()
    except OSError as exc:
        raise SecretError(f"{purpose}: cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The exception's own text and repr carry the bytes: never let them out.
        raise SecretError(
            f"{purpose}: {path} is not UTF-8 text (byte offset {exc.start}); "
            "write the secret as UTF-8"
        ) from None
    return text.rstrip("\r\n")
