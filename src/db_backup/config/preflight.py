"""What `check-config` checks beyond the file itself: can every secret be read from here?

A config can be valid and still unusable where it is checked: an `{env:}` variable not set in this
environment, a `{file:}` the current user cannot read, a `{credential:}` that only exists inside
the unit, a sink DSN that is no connection string. Each reference is resolved the way a run
would resolve it; only where it came from and why it failed are reported, never a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from db_backup.config.model import Config, secret_refs
from db_backup.util.secrets import SecretError, resolve

RESOLVED = "resolved"
UNCHECKED = "cannot be checked here"
BROKEN = "broken"


@dataclass(frozen=True)
class SecretCheck:
    """The outcome of resolving one secret reference: RESOLVED, UNCHECKED or BROKEN."""

    place: str
    outcome: str
    message: str


def check_secrets(config: Config) -> list[SecretCheck]:
    """Returns one check per secret reference in `config`, in config order."""
    checks = []
    for place, ref in secret_refs(config):
        where = f"At '{place}'"
        if ref.kind == "credential" and not os.environ.get("CREDENTIALS_DIRECTORY"):
            # Not broken: systemd provides credentials only to the unit's own processes.
            checks.append(
                SecretCheck(
                    place,
                    UNCHECKED,
                    f"{where}: credential {ref.name!r} cannot be checked here: "
                    "$CREDENTIALS_DIRECTORY is not set (systemd sets it inside the unit from "
                    "LoadCredential=; `systemctl reload db-backup` checks it there)",
                )
            )
            continue
        try:
            value = resolve(ref, where)
        except SecretError as exc:
            checks.append(SecretCheck(place, BROKEN, str(exc)))
            continue
        problem = VALUE_CHECKS[place](value) if place in VALUE_CHECKS else None
        if problem:
            message = f"{where}: {ref.describe()} resolved, but {problem} (the value is not shown)"
            checks.append(SecretCheck(place, BROKEN, message))
        else:
            checks.append(SecretCheck(place, RESOLVED, f"{where}: {ref.describe()} resolved"))
    return checks


def dsn_problem(dsn: str) -> str | None:
    """Returns why libpq cannot use `dsn` as a connection string, None when it can."""
    import psycopg  # only check-config of a config with a sink needs the driver here
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's own message quotes the string, password and all.
        return (
            "it is not a libpq connection string (key=value pairs such as "
            "`host=pg.example dbname=platform user=db_backup`, or a postgresql:// URI)"
        )
    return None


# What a resolved secret must be, by its place (the schema only sees the reference).
VALUE_CHECKS: dict[str, Callable[[str], str | None]] = {"sink.dsn": dsn_problem}
