"""Resolves secret references and remembers every secret so log output can mask it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

MASK = "***"
_known: set[str] = set()
_lock = threading.Lock()


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
        value = _first_line(_credential_path(ref, purpose), purpose)
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


def _credential_path(ref: SecretRef, purpose: str) -> Path:
    """Returns where systemd put the credential `ref` names; raises SecretError outside a unit."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretError(
            f"{purpose}: credential {ref.name!r} needs $CREDENTIALS_DIRECTORY "
            "(set LoadCredential= in the unit)"
        )
    return Path(directory) / ref.name


def resolve_text(ref: SecretRef, purpose: str, max_bytes: int = 64 * 1024) -> str:
    """Returns the whole secret `ref` points to (every line of a file), registering nothing.

    For multi-line secrets (an age key file: comments, then the key); the caller registers
    the parts that are secret. Errors name the reference, never the content.
    """
    if ref.kind == "env":
        return _environment(ref, purpose)
    path = _credential_path(ref, purpose) if ref.kind == "credential" else Path(ref.name)
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
