"""What `check-config` checks beyond the file itself: can every secret be read from here?

A config can be valid and still unusable where it is checked: an `{env:}` variable not set in this
environment, a `{file:}` the current user cannot read, a `{credential:}` the unit does not load
(outside the unit it is read from the unit's own sources, see `config.credentials`), a sink DSN
that is no connection string. Each reference is resolved the way a run would resolve it; only
where it came from and why it failed are reported, never a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from db_backup.config.credentials import UNCHECKABLE
from db_backup.config.model import Config, secret_refs
from db_backup.util.secrets import SecretError, credential_origin, resolve

RESOLVED = "resolved"
UNCHECKED = "cannot be checked here"
BROKEN = "broken"


@dataclass(frozen=True)
class SecretCheck:
    """The outcome of resolving one secret reference: RESOLVED, UNCHECKED or BROKEN."""

    place: str
    outcome: str
    message: str


def check_secrets(config: Config, *, credentials: bool = True) -> list[SecretCheck]:
    """Returns one check per secret reference in `config`, in config order.

    `credentials=False` leaves `{credential:}` references out (a unit's ExecReload= process
    cannot read them on systemd 252: its mount namespace hides /run/credentials).
    """
    checks = []
    outside = not os.environ.get("CREDENTIALS_DIRECTORY")
    for place, ref in secret_refs(config):
        if ref.kind == "credential" and not credentials:
            continue
        where = f"At '{place}'"
        try:
            value = resolve(ref, where)
        except SecretError as exc:
            # Outside the unit, a user other than root cannot read what the unit loads as root:
            # not broken, only not checkable here.
            unchecked = ref.kind == "credential" and outside and UNCHECKABLE in str(exc)
            checks.append(SecretCheck(place, UNCHECKED if unchecked else BROKEN, str(exc)))
            continue
        problem = VALUE_CHECKS[place](value) if place in VALUE_CHECKS else None
        if problem:
            message = f"{where}: {ref.describe()} resolved, but {problem} (the value is not shown)"
            checks.append(SecretCheck(place, BROKEN, message))
        else:
            origin = credential_origin(ref.name) if ref.kind == "credential" else None
            source = f" from {origin}" if origin else ""
            checks.append(SecretCheck(place, RESOLVED, f"{where}: {ref.describe()}{source}"))
    return checks


def job_secret_problems(config: Config, job_name: str) -> list[str]:
    """Returns why the secrets a run of `job_name` needs cannot be resolved (empty: they can).

    A run needs its connection password and, when it stores to OSS, the OSS keys; alert
    channels and the sink do not stop a backup.
    """
    index = next(i for i, j in enumerate(config.jobs) if j.name == job_name)
    job = config.jobs[index]
    needed = {f"jobs[{index}].connection.password"}
    if job.mode in {"oss", "both"}:
        needed |= {"storage.oss.access_key_id", "storage.oss.access_key_secret"}
        needed.add("storage.oss.security_token")
    problems = []
    for place, ref in secret_refs(config):
        if place not in needed:
            continue
        try:
            resolve(ref, f"At '{place}'")
        except SecretError as exc:
            problems.append(str(exc))
    return problems


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
