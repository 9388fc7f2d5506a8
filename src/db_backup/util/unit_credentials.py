"""Where db-backup.service gets its systemd credentials, so a command run by hand can too.

systemd puts a credential into `$CREDENTIALS_DIRECTORY` only for the unit's own processes. A
command an operator starts as root (`sudo db-backup run nightly`) reads a `{credential: NAME}`
from the same source the unit loads it from: the unit's `LoadCredential=`,
`LoadCredentialEncrypted=`, `SetCredential=` and `SetCredentialEncrypted=` as the service manager
holds them, encrypted ones decrypted with `systemd-creds decrypt`. It asks with
`busctl --json=short get-property`, because `systemctl show -p LoadCredential` prints
`LoadCredential=[unprintable]` for all four on systemd 252 (checked on Debian 12's 252.39).

What `busctl` prints (one JSON line per property, in the order asked):

    {"type":"a(ss)","data":[["pgpass","/etc/db-backup/credentials/pgpass"],["oss","oss"]]}
    {"type":"a(ss)","data":[]}
    {"type":"a(say)","data":[["token",[104,105]]]}
    {"type":"a(say)","data":[]}

A `LoadCredential=` path that is not absolute is searched in the credential stores, as systemd
does; a directory loads each file in it as `ID_FILENAME`. `SetCredential=` is the fallback of a
`LoadCredential=` of the same name, as in systemd.
"""

from __future__ import annotations

import base64
import errno
import json
from dataclasses import dataclass
from pathlib import Path

from db_backup.util.execute import CommandError, child_env, run

UNIT = "db-backup.service"
SETTINGS = ("LoadCredential", "LoadCredentialEncrypted", "SetCredential", "SetCredentialEncrypted")
CREDSTORE = ("/etc/credstore", "/run/credstore", "/usr/lib/credstore")
CREDSTORE_ENCRYPTED = (
    "/etc/credstore.encrypted",
    "/run/credstore.encrypted",
    "/usr/lib/credstore.encrypted",
    *CREDSTORE,
)
MAX_BYTES = 1024 * 1024  # systemd's own limit for one credential
ROOT_HINT = "run the command as root: sudo db-backup ..."


class CredentialSourceError(Exception):
    """The unit's credentials cannot be listed or one cannot be read; names place and cause."""


@dataclass(frozen=True)
class Source:
    """One credential setting of the unit: `LoadCredential=ID:PATH`, `SetCredential=ID:DATA`..."""

    setting: str
    name: str
    path: str = ""  # Load*: an absolute path, or a name searched in the credential stores
    data: bytes = b""  # Set*: the value (SetCredentialEncrypted=: the encrypted credential)

    @property
    def encrypted(self) -> bool:
        """Returns whether systemd-creds must decrypt it."""
        return self.setting.endswith("Encrypted")

    def describe(self, unit: str = UNIT) -> str:
        """Returns e.g. `LoadCredential=pgpass:/etc/... of db-backup.service` (never a value)."""
        what = f"{self.name}:{self.path}" if self.setting.startswith("Load") else self.name
        return f"{self.setting}={what} of {unit}"


def object_path(unit: str) -> str:
    """Returns the service manager's D-Bus object path of `unit` (sd-bus label escaping)."""
    escaped = "".join(
        c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in unit
    )  # e.g. db-backup.service -> db_2dbackup_2eservice
    return f"/org/freedesktop/systemd1/unit/{escaped}"


def parse_properties(text: str) -> list[Source]:
    """Returns the sources in busctl's JSON lines for `SETTINGS`; ValueError if not that shape."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != len(SETTINGS):
        raise ValueError(f"expected {len(SETTINGS)} JSON lines, got {len(lines)}")
    sources: list[Source] = []
    for setting, line in zip(SETTINGS, lines, strict=True):
        value = json.loads(line)
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise ValueError(f"{setting}: not a busctl JSON value")
        for entry in value["data"]:
            name, second = entry
            if setting.startswith("Load"):
                sources.append(Source(setting, str(name), path=str(second)))
            else:
                sources.append(Source(setting, str(name), data=bytes(second)))
    return sources


def unit_sources(unit: str = UNIT) -> list[Source]:
    """Returns the credential settings of `unit` as systemd has them; CredentialSourceError."""
    argv = ["busctl", "--system", "--json=short", "get-property", "org.freedesktop.systemd1"]
    argv += [object_path(unit), "org.freedesktop.systemd1.Service", *SETTINGS]
    try:
        out = run(argv, env=child_env(), timeout=30)
    except CommandError as exc:
        raise CredentialSourceError(
            f"cannot ask systemd for the credentials of {unit}: {exc}"
        ) from None
    try:
        return parse_properties(out)
    except (ValueError, TypeError, KeyError) as exc:
        raise CredentialSourceError(
            f"cannot read the credentials of {unit} from busctl's answer: {exc}"
        ) from None


def candidates(sources: list[Source], name: str) -> list[tuple[Source, str]]:
    """Returns where `name` would be read from, in systemd's order: Load* first, then Set*.

    Each candidate is a source and, for a `LoadCredential=` of a directory, the file name in it.
    """
    found: list[tuple[Source, str]] = []
    for source in sources:
        if source.name == name:
            found.append((source, ""))
        elif source.setting.startswith("Load") and name.startswith(f"{source.name}_"):
            found.append((source, name[len(source.name) + 1 :]))  # a directory's file
    return sorted(found, key=lambda c: c[0].setting.startswith("Set"))


def load_path(source: Source) -> Path | None:
    """Returns the file or directory a `LoadCredential*=` reads, None when none exists."""
    if source.path.startswith("/"):
        return Path(source.path)
    stores = CREDSTORE_ENCRYPTED if source.encrypted else CREDSTORE
    for store in stores:
        path = Path(store) / (source.path or source.name)
        if path.exists():
            return path
    return None


def read(source: Source, name: str, member: str = "") -> bytes:
    """Returns the value of credential `name` from `source`; CredentialSourceError names why not.

    `member` is the file inside a `LoadCredential=` directory. Encrypted credentials are
    decrypted by `systemd-creds decrypt --name=NAME`, which checks the name they were made for.
    """
    where = source.describe()
    if source.setting.startswith("Set"):
        if not source.encrypted:
            return source.data
        return _decrypt(name, "-", _as_base64(source.data), where)
    path = load_path(source)
    if path is None:
        raise CredentialSourceError(f"{where}: no such file in {', '.join(CREDSTORE)}")
    if member:
        if not path.is_dir():
            raise CredentialSourceError(f"{where}: {path} is not a directory")
        path = path / member
    if source.encrypted:
        return _decrypt(name, str(path), None, where)
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_BYTES)
    except OSError as exc:
        hint = f" ({ROOT_HINT})" if exc.errno == errno.EACCES else ""
        raise CredentialSourceError(f"{where}: cannot read {path}: {exc.strerror}{hint}") from None


def _as_base64(data: bytes) -> bytes:
    """Returns `data` as systemd-creds reads it: base64 (the text itself when it already is)."""
    try:
        base64.b64decode(b"".join(data.split()), validate=True)
    except ValueError:
        return base64.b64encode(data)
    return data


def _decrypt(name: str, path: str, data: bytes | None, where: str) -> bytes:
    """Returns what `systemd-creds decrypt` makes of the credential at `path` (or `data`)."""
    argv = ["systemd-creds", "decrypt", f"--name={name}", path, "-"]
    try:
        return run(argv, env=child_env(), timeout=60, input_bytes=data).encode("utf-8")
    except CommandError as exc:
        raise CredentialSourceError(f"{where}: {exc}") from None
