"""Builds the oss2 client: signature version, STS token, CRC checks on, timeouts, pool size."""

from __future__ import annotations

from typing import Any

import oss2
from oss2.credentials import StaticCredentialsProvider

from db_backup.storage.base import StorageError
from db_backup.storage.oss.settings import OssSettings


def make_bucket(settings: OssSettings, pool_size: int | None = None) -> oss2.Bucket:
    """Returns an oss2.Bucket for the settings: signature version, STS token, CRC on, timeouts."""
    token = settings.security_token or None
    if settings.signature_version == "v1":
        auth: Any
        if token:
            auth = oss2.StsAuth(settings.access_key_id, settings.access_key_secret, token)
        else:
            auth = oss2.Auth(settings.access_key_id, settings.access_key_secret)
    elif settings.signature_version == "v4":
        if not settings.region:
            raise StorageError(f"signature v4 needs the region of bucket {settings.bucket}")
        provider = StaticCredentialsProvider(
            settings.access_key_id, settings.access_key_secret, token or ""
        )
        auth = oss2.ProviderAuthV4(provider)
    else:
        raise StorageError(f"unknown OSS signature version {settings.signature_version!r}")
    session = oss2.Session(pool_size=pool_size or max(settings.parallel_parts + 2, 4))
    return oss2.Bucket(
        auth,
        settings.endpoint,
        settings.bucket,
        session=session,
        connect_timeout=(settings.connect_timeout_seconds, settings.read_timeout_seconds),
        enable_crc=True,
        region=settings.region,
    )
