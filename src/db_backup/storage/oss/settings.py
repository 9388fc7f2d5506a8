"""What the OSS target needs to know: endpoint, bucket, credentials, transfer tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

from db_backup.config import OssOptions

STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive")


@dataclass(frozen=True, kw_only=True)
class OssSettings(OssOptions):
    """Everything the OSS target needs; secrets are already resolved values.

    The settings that come from the config as they are inherit from `config.OssOptions` and
    are declared there once; only the resolved secrets and the sizes in bytes are its own
    (`db_backup.storage.oss_settings` converts them).
    """

    access_key_id: str = field(default="", repr=False)
    access_key_secret: str = field(default="", repr=False)
    security_token: str | None = field(default=None, repr=False)
    part_size: int = 2 * 1024 * 1024
    buffer_size: int = 24 * 1024 * 1024  # parts filling, waiting and uploading, in bytes
    bandwidth_limit: int | None = None  # bytes/s for the whole upload
