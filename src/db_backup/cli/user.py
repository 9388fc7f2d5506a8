"""`run_as`: a root process becomes the service's user before any command runs."""

from __future__ import annotations

import os
import pwd
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from db_backup.config import Config


def become_run_as_user(config: Config) -> str | None:
    """Makes a root process the config's `run_as` user; returns why it cannot, or None.

    Like `runuser -u USER`: supplementary groups, gid, then uid (the order that keeps the right
    to change the next one), HOME/USER/LOGNAME, and the service's umask, so that a manual
    `sudo db-backup run` uses the same peer authentication and ~/.pgpass as the service and
    leaves only files the service (User=postgres) can use. Any other user, and root with
    `run_as: null`, stays as it is.
    """
    if os.geteuid() != 0 or config.run_as is None:
        return None
    try:
        account = pwd.getpwnam(config.run_as)
    except KeyError:
        return (
            f"run_as: there is no user {config.run_as!r} on this host. Create it, run db-backup "
            f"as the user that owns the backups (runuser -u <user> -- db-backup ...), or set "
            f"run_as: null in {config.source} to run as root"
        )
    if account.pw_uid == 0:
        return None
    try:
        os.initgroups(account.pw_name, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
    except OSError as exc:
        return f"run_as: cannot become user {account.pw_name!r}: {exc.strerror}"
    if os.getuid() != account.pw_uid or os.geteuid() != account.pw_uid:  # pragma: no cover
        return f"run_as: still running as uid {os.geteuid()} after switching to {account.pw_name!r}"
    os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    os.umask(0o077)  # UMask= of the units: files made by hand match those the service makes
    # pg_dumpall finds pg_dump through the working directory, which must stay reachable
    # (sudo from /root leaves one the new user cannot enter).
    if not os.access(".", os.R_OK | os.X_OK):
        for directory in (account.pw_dir, "/"):
            try:
                os.chdir(directory)
                break
            except OSError:
                continue
    return None
