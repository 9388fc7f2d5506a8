"""The names a backup's files are stored under, from its stem (`reports.model.stem`)."""

from __future__ import annotations

from db_backup.postgres import tools as pg
from db_backup.storage import crypto


def dump_name(stem: str, dump_format: str, encrypted: bool) -> str:
    """Returns the stored name of the dump of `stem`: `<stem>.dump` (`.sql`, `.dump.d`), `.age`
    added when it is encrypted."""
    return crypto.stored_name(f"{stem}{pg.extension(dump_format)}", encrypted)


def globals_name(stem: str, encrypted: bool) -> str:
    """Returns the stored name of the globals file of `stem` (`.age` added when encrypted)."""
    return crypto.stored_name(f"{stem}_globals.sql", encrypted)


def checksum_name(dump: str) -> str:
    """Returns the name of the `sha256sum -c` file stored beside the dump named `dump`."""
    return f"{dump}.sha256"
