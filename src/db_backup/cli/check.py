"""`db-backup check-config`: the config is valid and usable here, or every reason why not."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from db_backup.cli.command import Context
from db_backup.cli.output import EXIT_CONFIG, EXIT_OK, CommandError, warn

if TYPE_CHECKING:
    from db_backup.config import Config


def check_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the options of `check-config`."""
    parser.add_argument("--quiet", action="store_true", help="print nothing when it is valid")


def check_config(context: Context) -> int:
    """Checks what the schema cannot (age recipients, metrics.listen), then every secret."""
    from db_backup.config.preflight import RESOLVED, UNCHECKED, check_secrets
    from db_backup.observe.metrics import MetricsError
    from db_backup.observe.metrics import check_config as check_metrics
    from db_backup.storage.crypto import check_config as check_encryption
    from db_backup.storage.crypto import identity_warnings

    config = context.config
    check_encryption(config)  # age itself checks every recipient (checksum, key)
    for warning in identity_warnings(config):  # a private key others can read: not refused
        warn(warning)
    for warning in directory_warnings(config):
        warn(warning)
    try:  # a metrics.listen that is not loopback (without allow_remote) is refused
        check_metrics(config)
    except MetricsError as exc:
        raise CommandError(f"{config.source}: {exc}", EXIT_CONFIG) from None
    checks = check_secrets(config)
    failed = [c for c in checks if c.outcome != RESOLVED]
    if failed:
        unchecked = sum(c.outcome == UNCHECKED for c in failed)
        broken = len(failed) - unchecked
        summary = ", ".join(
            part
            for part in (
                f"{broken} secret(s) cannot be resolved" if broken else "",
                f"{unchecked} secret(s) cannot be checked here" if unchecked else "",
            )
            if part
        )
        lines = "\n".join(f"  {c.message}" for c in failed)
        raise CommandError(
            f"{context.path}: valid, but not usable here: {summary}:\n{lines}", EXIT_CONFIG
        )
    if not context.args.quiet:
        names = ", ".join(j.name for j in config.jobs)
        print(
            f"{context.path}: OK ({len(config.jobs)} job(s): {names}; "
            f"{len(checks)} secret(s) resolved)"
        )
    return EXIT_OK


def directory_warnings(config: Config) -> list[str]:
    """Returns a warning for each configured directory this user cannot write or create.

    A warning, not a refusal: check-config may run as another user than the service (root
    without `run_as`, an admin checking a copy), and the package creates its own directories.
    """
    directories = config.directories
    found = []
    for key in ("data", "reports", "state", "logs"):
        path = getattr(directories, key)
        if path is None:
            continue
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            found.append(f"directories.{key}: {path}: {existing} is not a directory")
        elif not os.access(existing, os.W_OK | os.X_OK):
            verb = "write in" if existing == path else f"create it ({existing} is not writable)"
            found.append(f"directories.{key}: {path}: this user cannot {verb}")
    return found
