"""What `check-config` checks beyond the file itself: can every secret be read from here?

A config can be valid and still unusable where it is checked: an `{env:}` variable not set in this
environment, a `{file:}` the current user cannot read, a `{credential:}` that only exists inside
the unit. Each reference is resolved the way a run would resolve it; only where it came from and
why it failed are reported, never a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from db_backup.config import Config, secret_refs
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
            resolve(ref, where)
        except SecretError as exc:
            checks.append(SecretCheck(place, BROKEN, str(exc)))
        else:
            checks.append(SecretCheck(place, RESOLVED, f"{where}: {ref.describe()} resolved"))
    return checks
