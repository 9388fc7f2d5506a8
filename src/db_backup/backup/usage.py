"""After a run: free space on the job's file systems and the bucket's usage, as alerts.

A file system the job writes to with little free space left is a `LOW_DISK` event, the
bucket's usage (GetBucketStat) over `capacity.oss_usage_limit` an `OSS_USAGE` event; each is
published while the condition holds and once (ok=True) when it clears. Never raises.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from db_backup.backup.conditions import publish_condition
from db_backup.config import CapacitySettings, Config, JobConfig
from db_backup.observe import events
from db_backup.util.fsutil import describe_os_error
from db_backup.util.secrets import mask
from db_backup.util.units import format_size

if TYPE_CHECKING:
    from db_backup.storage.oss.target import BucketStat

log = structlog.get_logger("db_backup.backup.usage")


def after_run(config: Config, job: JobConfig) -> None:
    """Checks free space on the job's file systems and the bucket's usage; never raises."""
    wanted = job.capacity
    try:
        check_free_space(config, job, wanted)
    except Exception as exc:  # a check must never turn a run into a failure
        log.error(
            "free space check failed", job=job.name, error=mask(f"{type(exc).__name__}: {exc}")
        )
    try:
        check_oss_usage(config, job, wanted)
    except Exception as exc:
        log.error(
            "OSS usage check failed", job=job.name, error=mask(f"{type(exc).__name__}: {exc}")
        )


def watched_directories(config: Config, job: JobConfig) -> list[Path]:
    """Returns one directory per file system the job writes to: data (if local), reports, state."""
    directories = config.directories
    candidates = [directories.reports, directories.state]
    if job.mode in {"local", "both"}:
        candidates.insert(0, directories.data)
    seen: set[int] = set()
    found = []
    for directory in candidates:
        try:
            device = directory.stat().st_dev
        except OSError:
            continue
        if device not in seen:
            seen.add(device)
            found.append(directory)
    return found


def check_free_space(config: Config, job: JobConfig, wanted: CapacitySettings) -> None:
    """Publishes LOW_DISK for each watched file system under a threshold (ok=True once clear)."""
    if wanted.warn_free_percent <= 0 and wanted.warn_free_size <= 0:
        return
    for directory in watched_directories(config, job):
        try:
            usage = shutil.disk_usage(directory)
        except OSError as exc:
            log.warning(
                "free space not read", job=job.name, error=describe_os_error(exc, directory)
            )
            continue
        percent = 100.0 * usage.free / usage.total if usage.total else 100.0
        low_percent = wanted.warn_free_percent > 0 and percent < wanted.warn_free_percent
        low_size = wanted.warn_free_size > 0 and usage.free < wanted.warn_free_size
        low = low_percent or low_size
        thresholds = " or ".join(
            t
            for t in (
                f"{wanted.warn_free_percent:g}%" if wanted.warn_free_percent > 0 else "",
                format_size(wanted.warn_free_size) if wanted.warn_free_size > 0 else "",
            )
            if t
        )
        free = f"{format_size(usage.free)} ({percent:.1f}% of {format_size(usage.total)})"
        message = (
            f"low disk space in {directory}: {free} free, under the threshold of {thresholds}"
            if low
            else f"disk space in {directory} is back above the threshold: {free} free"
        )
        if low:
            log.warning(
                "low disk space",
                job=job.name,
                directory=str(directory),
                free=usage.free,
                total=usage.total,
                free_percent=round(percent, 1),
            )
        _publish(
            config,
            job,
            events.LOW_DISK,
            f"low_disk:{job.name}:{directory}",
            low,
            message,
            {
                "directory": str(directory),
                "freeBytes": usage.free,
                "totalBytes": usage.total,
                "freePercent": round(percent, 2),
                "thresholdPercent": wanted.warn_free_percent,
                "thresholdBytes": wanted.warn_free_size,
            },
        )


def bucket_stat(config: Config) -> BucketStat:
    """Returns the configured bucket's GetBucketStat answer (raises StorageError)."""
    from db_backup.storage import oss_settings
    from db_backup.storage.oss import OssTarget

    return OssTarget(oss_settings(config)).bucket_stat()


def check_oss_usage(config: Config, job: JobConfig, wanted: CapacitySettings) -> None:
    """Publishes OSS_USAGE when the bucket's usage reaches the limit (or its warning level)."""
    limit = wanted.oss_usage_limit
    if limit is None or job.mode not in {"oss", "both"} or config.storage.tool != "oss2":
        return
    if config.storage.oss is None:
        return
    bucket = config.storage.oss.bucket
    try:
        stat = bucket_stat(config)
    except Exception as exc:  # StorageError, a secret that cannot be read, ...
        log.warning(
            "OSS usage not checked: GetBucketStat failed",
            job=job.name,
            bucket=bucket,
            error=mask(str(exc)),
        )
        return
    used = stat.storage_bytes
    percent = 100.0 * used / limit if limit else 100.0
    warn_at = wanted.oss_usage_warn_percent
    level = "ok"
    if used >= limit:
        level = "over"
    elif warn_at is not None and percent >= warn_at:
        level = "warning"
    raised = level != "ok"
    usage = f"{format_size(used)} ({used} bytes, {percent:.1f}% of the limit {format_size(limit)})"
    if level == "over":
        message = f"OSS bucket {bucket} uses {usage}: over capacity.oss_usage_limit"
    elif level == "warning":
        message = f"OSS bucket {bucket} uses {usage}: over the warning level of {warn_at:g}%"
    else:
        message = f"OSS bucket {bucket} usage is back under the limit: {usage}"
    (log.warning if raised else log.info)(
        "OSS usage", job=job.name, bucket=bucket, used=used, limit=limit, level=level
    )
    _publish(
        config,
        job,
        events.OSS_USAGE,
        f"oss_usage:{job.name}:{bucket}",
        raised,
        message,
        {
            "bucket": bucket,
            "usedBytes": used,
            "limitBytes": limit,
            "percent": round(percent, 2),
            "level": level,
            "warnPercent": warn_at,
            "objectCount": stat.object_count,
        },
    )


def _publish(
    config: Config,
    job: JobConfig,
    kind: str,
    key: str,
    raised: bool,
    message: str,
    details: dict[str, object],
) -> None:
    """Publishes the job's condition `key` of `kind` while raised, and once when it clears."""
    event = events.Event(kind=kind, job=job.name, ok=not raised, message=message, details=details)
    publish_condition(config, key, raised, event)
