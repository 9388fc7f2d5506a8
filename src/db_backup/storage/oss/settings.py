"""What the OSS target needs to know: endpoint, bucket, credentials, transfer tuning."""

from __future__ import annotations

from dataclasses import dataclass, field

STORAGE_CLASSES = ("Standard", "IA", "Archive", "ColdArchive")


@dataclass(frozen=True)
class OssSettings:
    """Everything the OSS target needs; secrets are already resolved values.

    A field named like a key of `storage.oss` in the schema is filled from that key as it is
    (`db_backup.storage.oss_settings`); only the secrets and the fields in other units (bytes,
    bytes/s) are converted there by name. A new plain setting is a schema key, a field of
    `config.OssConfig` and a field here, with the same name.
    """

    endpoint: str
    bucket: str
    prefix: str = "postgres/backups/"
    region: str | None = None
    signature_version: str = "v4"  # "v1" | "v4"
    access_key_id: str = field(default="", repr=False)
    access_key_secret: str = field(default="", repr=False)
    security_token: str | None = field(default=None, repr=False)
    server_side_encryption: str | None = None  # None | "AES256" | "KMS"
    kms_key_id: str | None = None
    storage_class: str | None = None  # Standard | IA | Archive | ColdArchive
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 120.0
    retries: int = 5
    part_size: int = 2 * 1024 * 1024
    parallel_parts: int = 2
    buffer_size: int = 24 * 1024 * 1024  # parts filling, waiting and uploading, in bytes
    bandwidth_limit: int | None = None  # bytes/s for the whole upload
