"""The `notifications` section as the alerts use it: typed by the config when the file loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from db_backup.config.features import (
    BACKUP_FAILED,
    BACKUP_SUCCEEDED,
    DEFAULT_SMTP_PORTS,
    DRILL_FAILED,
    LOW_DISK,
    OSS_USAGE,
    STALE,
    SUSPICIOUS_SIZE,
    ChannelSettings,
    NotifySettings,
)

if TYPE_CHECKING:
    from db_backup.config import Config

__all__ = [
    "BACKUP_FAILED",
    "BACKUP_SUCCEEDED",
    "DEFAULT_SMTP_PORTS",
    "DRILL_FAILED",
    "LOW_DISK",
    "OSS_USAGE",
    "STALE",
    "SUSPICIOUS_SIZE",
    "ChannelSettings",
    "NotifySettings",
    "from_config",
]


def from_config(config: Config) -> NotifySettings | None:
    """Returns the notification settings of `config`, or None when it has no channel."""
    settings = config.notifications
    return settings if settings.channels else None
