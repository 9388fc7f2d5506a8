"""Whether the age identity file is private: a key every user can read decrypts every backup.

Not refused (a restore must still work with the key the operator has), but said: by
`check-config` and as a log event whenever the identity is used.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from db_backup.util.secrets import SecretRef

if TYPE_CHECKING:
    from db_backup.config import Config


def identity_mode_problem(path: str, mode: int) -> str | None:
    """Returns why an identity file of `mode` is not private enough (readable or writable by
    every user, writable by its group), None when it is; the text says what to do."""
    loose = [
        what
        for bit, what in (
            (stat.S_IROTH, "readable by every user"),
            (stat.S_IWOTH, "writable by every user"),
            (stat.S_IWGRP, "writable by its group"),
        )
        if mode & bit
    ]
    if not loose:
        return None
    return (
        f"the age identity {path} is {' and '.join(loose)} (mode {stat.S_IMODE(mode):04o}): "
        "it is the private key of every encrypted backup; "
        f"chmod 600 {path} (or 640 with the service's group)"
    )


def identity_file_problem(ref: SecretRef) -> str | None:
    """Returns the problem of the file `ref` names (after symlinks), None for other kinds of
    reference or a file that cannot be stat'ed (resolving it says why)."""
    if ref.kind != "file":
        return None
    try:
        mode = os.stat(ref.name).st_mode
    except OSError:
        return None
    return identity_mode_problem(ref.name, mode)


def identity_warnings(config: Config) -> list[str]:
    """Returns check-config's warnings about identity files others can read or change."""
    warnings: list[str] = []
    seen: set[SecretRef] = set()
    for index, job in enumerate(config.jobs):
        ref = job.encryption.identity if job.encryption is not None else None
        if ref is None or ref in seen:
            continue
        seen.add(ref)
        where = f"jobs[{index}].encryption.age" if job.own_encryption else "storage.encryption.age"
        problem = identity_file_problem(ref)
        if problem is not None:
            warnings.append(f"At '{where}.identity': {problem}")
    return warnings
