"""Storage backends behind one protocol (`base.Target`); `make_targets` picks them for a job."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from db_backup.config import Config, JobConfig, OssOptions
from db_backup.storage.base import StorageError, Target
from db_backup.storage.local import LocalTarget
from db_backup.util.secrets import mask, resolve

if TYPE_CHECKING:
    from db_backup.storage.oss import OssSettings

__all__ = [
    "StorageError",
    "Target",
    "delete_quietly",
    "make_targets",
    "oss_settings",
    "reading_target",
    "remote_target",
]

MIB = 1024 * 1024


def make_targets(config: Config, job: JobConfig) -> list[Target]:
    """Returns the targets of `job`'s storage mode: local first, then the remote one."""
    targets: list[Target] = []
    if job.mode in {"local", "both"}:
        targets.append(LocalTarget(config.directories.data, job.name))
    if job.mode in {"oss", "both"}:
        targets.append(remote_target(config))
    return targets


def delete_quietly(target: Target, names: list[str]) -> None:
    """Deletes `names` from `target`, logging (not raising) a failure; empties `names`."""
    if not names:
        return
    try:
        target.delete(list(names))
    except StorageError as exc:
        import structlog  # here: `status` imports this package and must stay free of structlog

        log = structlog.get_logger("db_backup.storage")
        log.error("could not remove partial files", target=target.name, error=mask(str(exc)))
    names.clear()


def remote_target(config: Config) -> Target:
    """Returns the configured remote target (oss2 or rclone) with its secrets resolved."""
    return reading_target(config, "rclone" if config.storage.tool == "rclone" else "oss")


def reading_target(config: Config, name: str, prefix: str | None = None) -> Target:
    """Returns the remote target called `name` in reports ("oss", "rclone"), to read from.

    The report says which target stored a backup; the config says how to reach it (its
    section, whichever `storage.tool` writes now). `prefix` replaces the configured one (an
    oss:// URL given by hand). Raises StorageError when the config cannot reach it.
    """
    storage = config.storage
    if name == "rclone":
        from db_backup.storage.rclone import RcloneSettings, RcloneTarget

        if storage.rclone is None:
            raise StorageError("storage.rclone is not configured")
        rc = storage.rclone
        return RcloneTarget(
            RcloneSettings(
                remote=rc.remote,
                prefix=rc.prefix if prefix is None else prefix,
                config_file=rc.config_file,
            )
        )
    if name != "oss":
        raise StorageError(f"no storage target called {name!r} to read from")
    from db_backup.storage.oss import OssTarget

    settings = oss_settings(config)
    if prefix is not None:
        settings = dataclasses.replace(settings, prefix=prefix)
    return OssTarget(settings)


def oss_settings(config: Config) -> OssSettings:
    """Returns the oss2 backend's settings with the referenced secrets resolved."""
    from db_backup.storage.oss import OssSettings

    oss = config.storage.oss
    if oss is None:
        raise StorageError("storage.oss is not configured")
    limit = oss.bandwidth_limit_mbps
    # The settings both inherit from OssOptions pass as they are; the secrets are resolved and
    # the sizes converted to the units the target works in.
    plain = {f.name: getattr(oss, f.name) for f in dataclasses.fields(OssOptions)}
    return OssSettings(
        **plain,
        access_key_id=resolve(oss.access_key_id, "storage.oss.access_key_id"),
        access_key_secret=resolve(oss.access_key_secret, "storage.oss.access_key_secret"),
        security_token=(
            resolve(oss.security_token, "storage.oss.security_token")
            if oss.security_token
            else None
        ),
        part_size=oss.part_size_mib * MIB,
        buffer_size=oss.buffer_mib * MIB,
        bandwidth_limit=int(limit * 1_000_000 / 8) if limit else None,
    )
