"""The `{credential:}` references of a config, read from the unit's sources outside the unit.

A command started by hand (`sudo db-backup run nightly`) has no `$CREDENTIALS_DIRECTORY`; before
it drops root (`run_as`), `load_from_unit` reads every credential the config names from where
db-backup.service loads it (`util.unit_credentials`) and hands the values to `util.secrets`, so
the references resolve as they do inside the unit. Nothing changes inside the unit.
"""

from __future__ import annotations

import os

from db_backup.config.model import Config, secret_refs
from db_backup.util import unit_credentials
from db_backup.util.secrets import SecretRef, provide_unit_credentials

# How a problem starts when it is this place that cannot check, not the config that is wrong.
UNCHECKABLE = "cannot be checked here"


def credential_refs(config: Config) -> list[tuple[str, SecretRef]]:
    """Returns every `{credential:}` reference of `config` (age identities too), with its place."""
    refs = list(secret_refs(config))
    for index, job in enumerate(config.jobs):
        if job.encryption is not None and job.encryption.identity is not None:
            refs.append((f"jobs[{index}].encryption.age.identity", job.encryption.identity))
    return [(place, ref) for place, ref in refs if ref.kind == "credential"]


def load_from_unit(config: Config, unit: str = unit_credentials.UNIT) -> None:
    """Reads the config's credentials from `unit`'s sources when outside a unit; never raises.

    What cannot be read is remembered with its reason: the reference fails with it when (and
    only if) a command resolves it.
    """
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return
    names = sorted({ref.name for _place, ref in credential_refs(config)})
    if not names:
        return
    values: dict[str, bytes] = {}
    problems: dict[str, str] = {}
    origins: dict[str, str] = {}
    try:
        sources = unit_credentials.unit_sources(unit)
    except unit_credentials.CredentialSourceError as exc:  # no service manager to ask
        reason = f"{UNCHECKABLE}: $CREDENTIALS_DIRECTORY is not set, and {exc}"
        provide_unit_credentials({}, dict.fromkeys(names, reason), {})
        return
    for name in names:
        found = unit_credentials.candidates(sources, name)
        if not found:
            problems[name] = (
                f"is not loaded by {unit} (no LoadCredential={name}:..., SetCredential= or "
                f"their Encrypted forms): add one with `systemctl edit {unit}`"
            )
            continue
        errors = []
        for source, member in found:  # systemd's order: the first that can be read wins
            try:
                values[name] = unit_credentials.read(source, name, member)
            except unit_credentials.CredentialSourceError as exc:
                errors.append(str(exc))
                continue
            origins[name] = source.describe(unit)
            break
        else:
            unreadable = all(unit_credentials.ROOT_HINT in e for e in errors)
            problems[name] = f"{UNCHECKABLE if unreadable else 'cannot be read'}: " + "; ".join(
                errors
            )
    provide_unit_credentials(values, problems, origins)
