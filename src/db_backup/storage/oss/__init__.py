"""The Aliyun OSS target: dumps stream into a multipart upload through the oss2 SDK.

One module per part: `settings` (what the target needs), `parts` (part-size maths), `pacer`
(bandwidth), `errors` (retry classification and messages), `client` (the oss2 Bucket), `target`
(`OssTarget`, behind the storage protocol), `sink` (`OssSink`, the multipart stream), `reading`
(HEAD, GET with the CRC-64 check, listing, oss:// URLs) and `lifecycle` (bucket lifecycle admin).
"""

from db_backup.storage.oss.errors import describe_oss_error, is_retryable
from db_backup.storage.oss.lifecycle import (
    apply_lifecycle,
    describe_lifecycle,
    get_lifecycle,
    lifecycle_rule,
)
from db_backup.storage.oss.parts import (
    GROWTH_INTERVAL,
    HINT_PART_BUDGET,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    buffer_capacity,
    choose_part_size,
    traffic_limit_bits,
)
from db_backup.storage.oss.reading import parse_oss_url
from db_backup.storage.oss.settings import STORAGE_CLASSES, OssSettings
from db_backup.storage.oss.sink import SHA256_TAG, OssSink, SinkState
from db_backup.storage.oss.target import OssTarget

__all__ = [
    "GROWTH_INTERVAL",
    "HINT_PART_BUDGET",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "SHA256_TAG",
    "STORAGE_CLASSES",
    "OssSettings",
    "OssSink",
    "OssTarget",
    "SinkState",
    "apply_lifecycle",
    "buffer_capacity",
    "choose_part_size",
    "describe_lifecycle",
    "describe_oss_error",
    "get_lifecycle",
    "is_retryable",
    "lifecycle_rule",
    "parse_oss_url",
    "traffic_limit_bits",
]
