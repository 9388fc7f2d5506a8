"""Capacity: room for a dump before it starts, free space after a run, OSS usage, odd sizes.

- `room_for_dump` (before each dump): estimates the space the dump needs (the largest of this
  job's and database's recent successful backups of the same format, or pg_database_size for a
  first run) and refuses to start it when the local file system that receives it cannot hold it
  with the margin. Dumps running at the same time (parallel databases, other jobs, timer units,
  manual runs) reserve their estimate in `<state>/capacity/reservations/`, so two of them never
  count on the same free bytes; a reservation shrinks by what its dump has written so far.
- `after_run`: a file system the job writes to with little free space left is a `LOW_DISK`
  event, the bucket's usage (GetBucketStat) over `oss_usage_limit` an `OSS_USAGE` event; each
  is published while the condition holds and once (ok=True) when it clears.
- `hold_retention` (inside retention): a newest backup under `suspicious_ratio` of the previous
  one keeps every old backup, marks the report and publishes `SUSPICIOUS_SIZE`.

None of these ever turns a good backup into a failure: only a refused dump fails, and it fails
before pg_dump starts, leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from db_backup.config import CapacitySettings, Config, JobConfig
from db_backup.observe import events
from db_backup.postgres import tools as pg
from db_backup.reports import index as report_index
from db_backup.reports.model import SUCCESS, Report
from db_backup.storage import crypto
from db_backup.storage.base import StorageError
from db_backup.storage.local import TEMP_DIR_NAME, temp_name
from db_backup.util.fsutil import describe_os_error, disk_size, write_atomically
from db_backup.util.secrets import mask
from db_backup.util.units import format_size

if TYPE_CHECKING:
    from db_backup.storage.oss.target import BucketStat

log = structlog.get_logger("db_backup.backup.space")


class NotEnoughSpace(StorageError):
    """The local file system cannot hold the dump about to start; the message says the numbers."""


# --------------------------------------------------------------------------- before a dump


@dataclass(frozen=True)
class Estimate:
    """The space a dump is expected to take, and where that number comes from."""

    size: int
    source: str  # "history" | "pg_database_size"
    detail: str  # in words, for the error message


def dump_directory(config: Config, job: JobConfig, staging: Path) -> Path | None:
    """Returns the local directory a dump of `job` is written into, or None (streamed away)."""
    if job.mode in {"local", "both"}:
        return config.directories.data
    if job.dump.format == "directory":
        return staging  # pg_dump -Fd writes there before the upload
    return None


def _comparable(document: Mapping[str, Any], job: JobConfig, encrypted: bool) -> bool:
    """Returns whether a report's dump was made the way `job` dumps now (format, -Z, age)."""
    return (
        document.get("format", "custom") == job.dump.format
        and document.get("compression", job.dump.compression) == job.dump.compression
        and bool(document.get("encryption")) == encrypted
    )


def _successful_reports(
    config: Config, job: str, database: str, limit: int, exclude: str = ""
) -> list[dict[str, Any]]:
    """Returns up to `limit` newest SUCCESS report documents of `job` and `database`."""
    directories = config.directories
    with report_index.snapshot(
        directories.reports, report_index.default_path(directories.state)
    ) as snap:
        entries = snap.entries(
            "job = ? AND database = ? AND status = ?",
            (report_index.encode(job), report_index.encode(database), report_index.encode(SUCCESS)),
            limit=limit + 1,
        )
    documents = []
    for entry in entries:
        if entry.name == exclude:
            continue
        try:
            document = json.loads((directories.reports / entry.name).read_bytes())
        except (OSError, ValueError):
            continue  # gone or rewritten since the listing: the others still tell
        if isinstance(document, dict):
            documents.append(document)
    return documents[:limit]


def _local_size(document: Mapping[str, Any]) -> int | None:
    local = document.get("local")
    size = local.get("sizeBytes") if isinstance(local, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def estimate(
    config: Config,
    job: JobConfig,
    database: str,
    env: dict[str, str],
    *,
    encrypted: bool,
    history: int,
) -> Estimate | None:
    """Returns the expected size of the next dump of `database`, or None when unknown.

    The largest of the last `history` successful backups made the same way; without one (a
    first run, or the format changed), pg_database_size: an upper bound, as a compressed dump
    is usually several times smaller than the database.
    """
    sizes = []
    # Reports of another format do not count: read a few more to find `history` that do.
    for document in _successful_reports(config, job.name, database, history * 3):
        size = _local_size(document)
        if size is not None and _comparable(document, job, encrypted):
            sizes.append(size)
        if len(sizes) == history:
            break
    if sizes:
        many = f"the last {len(sizes)} successful backups" if len(sizes) > 1 else "the last one"
        return Estimate(max(sizes), "history", f"the largest of {many}")
    size = pg.database_size(job, env, database)
    if size is None:
        return None
    return Estimate(
        size,
        "pg_database_size",
        "pg_database_size (no earlier backup made this way; an upper bound, a compressed dump "
        "is usually much smaller)",
    )


def needed_bytes(size: int, margin_percent: float, margin_min: int) -> int:
    """Returns the estimate plus the margin (the larger of the percentage and the minimum)."""
    return size + max(int(size * margin_percent / 100), margin_min)


@contextlib.contextmanager
def room_for_dump(
    config: Config, job: JobConfig, env: dict[str, str], report: Report, staging: Path
) -> Iterator[None]:
    """Holds a reservation for the dump of `report.database` while the block runs.

    Raises NotEnoughSpace (before anything is written) when the file system that receives the
    dump cannot hold the estimate plus the margin next to what running dumps reserved. Records
    the numbers in `report.capacity["space"]`. Anything that keeps the check from being made
    (no estimate, statvfs failing) is logged and the dump goes ahead.
    """
    wanted = job.capacity
    directory = dump_directory(config, job, staging)
    if directory is None or not wanted.check_space:
        yield
        return
    encrypted = report.encryption is not None
    try:
        guess = estimate(
            config,
            job,
            report.database,
            env,
            encrypted=encrypted,
            history=wanted.estimate_from_last,
        )
    except Exception as exc:  # a fault of the check must not fail a backup that may fit
        log.error(
            "size estimate failed",
            job=job.name,
            database=report.database,
            error=mask(f"{type(exc).__name__}: {exc}"),
        )
        guess = None
    if guess is None:
        log.info(
            "no size estimate, dump not checked against the free space",
            job=job.name,
            database=report.database,
        )
        yield
        return
    needed = needed_bytes(guess.size, wanted.margin_percent, wanted.margin_min)
    dump_name = crypto.stored_name(f"{report.stem}{pg.extension(job.dump.format)}", encrypted)
    paths = [directory / TEMP_DIR_NAME / temp_name(job.name, dump_name), directory / dump_name]
    book = Reservations(config.directories.state)
    try:
        with book.locked():
            device = directory.stat().st_dev
            free = shutil.disk_usage(directory).free
            reserved = book.reserved(device)
            report.capacity = {
                **(report.capacity or {}),
                "space": {
                    "directory": str(directory),
                    "estimateBytes": guess.size,
                    "estimateSource": guess.source,
                    "neededBytes": needed,
                    "freeBytes": free,
                    "reservedBytes": reserved,
                },
            }
            if needed > free - reserved:
                raise NotEnoughSpace(
                    _refusal(directory, report.database, guess, needed, free, reserved, wanted)
                )
            token = book.reserve(device, needed, paths)
    except OSError as exc:
        log.warning(
            "free space not checked",
            job=job.name,
            database=report.database,
            error=describe_os_error(exc, exc.filename or directory),
        )
        yield
        return
    log.debug(
        "room reserved for the dump",
        job=job.name,
        database=report.database,
        directory=str(directory),
        needed=needed,
        free=free,
        reserved=reserved,
    )
    try:
        yield
    finally:
        book.release(token)


def _refusal(
    directory: Path,
    database: str,
    guess: Estimate,
    needed: int,
    free: int,
    reserved: int,
    wanted: CapacitySettings,
) -> str:
    """Returns the FAILED report's message of a refused dump: directory, estimate, free space."""
    others = (
        f", of which {format_size(reserved)} ({reserved} bytes) are reserved by dumps running "
        "on the same file system"
        if reserved
        else ""
    )
    margin = f"a {wanted.margin_percent:g}% margin"
    if wanted.margin_min:
        margin += f" (at least {format_size(wanted.margin_min)})"
    return (
        f"not enough free space in {directory} for the dump of {database}: it needs about "
        f"{format_size(needed)} ({needed} bytes), {format_size(free)} ({free} bytes) are "
        f"free{others}; the dump was not started. Estimate: {format_size(guess.size)} from "
        f"{guess.detail}, plus {margin}. Free space there, or adjust capacity.margin_percent "
        "(capacity.check_space: false turns the check off)"
    )


class Reservations:
    """Space that running dumps may still write, one small JSON file per dump.

    `<state>/capacity/reservations/<pid>-<thread>-<n>.json` holds the device, the bytes and the
    paths the dump writes; what it has written so far is taken off (it is already out of the
    free space). A file whose process is gone is ignored and removed.
    """

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, state: Path) -> None:
        self.directory = state / "capacity" / "reservations"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialises check-and-reserve across threads and processes (a flock)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory.parent / "reservations.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def reserved(self, device: int) -> int:
        """Returns the bytes live reservations on `device` may still write."""
        total = 0
        for path in self.directory.glob("*.json"):
            try:
                entry = json.loads(path.read_bytes())
                pid, dev, size = int(entry["pid"]), int(entry["device"]), int(entry["bytes"])
                written = [Path(p) for p in entry["paths"]]
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # not ours to understand: it reserves nothing
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            if dev == device:
                total += max(0, size - sum(disk_size(p) for p in written))
        return total

    def reserve(self, device: int, size: int, paths: list[Path]) -> Path:
        """Records a reservation; returns its token (its file) for `release`."""
        with Reservations._counter_lock:
            Reservations._counter += 1
            number = Reservations._counter
        token = self.directory / f"{os.getpid()}-{threading.get_ident()}-{number}.json"
        document = {
            "pid": os.getpid(),
            "device": device,
            "bytes": size,
            "paths": [str(p) for p in paths],
        }
        write_atomically(token, json.dumps(document).encode(), 0o640)
        return token

    def release(self, token: Path) -> None:
        """Removes a reservation (a failure is only logged: a dead pid frees it anyway)."""
        try:
            token.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("reservation not removed", error=describe_os_error(exc, token))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- conditions


class Conditions:
    """Which conditions are raised now (`<state>/capacity/conditions.json`), to publish a clear.

    A condition is published (ok=False) every time it is found, so reminders work; its clearing
    (ok=True) only once, when it was raised before.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / "capacity" / "conditions.json"

    def update(self, key: str, raised: bool) -> bool:
        """Sets `key` to `raised`; returns whether it was raised before."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "conditions.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                current = json.loads(self.path.read_bytes())
            except (OSError, ValueError):
                current = {}
            if not isinstance(current, dict):
                current = {}
            before = bool(current.get(key))
            if raised:
                current[key] = True
            else:
                current.pop(key, None)
            if before != raised:
                write_atomically(self.path, json.dumps(current, sort_keys=True).encode(), 0o640)
        return before


def _publish_condition(
    config: Config,
    key: str,
    raised: bool,
    event: events.Event,
) -> None:
    """Publishes a raised condition, or its clearing when it was raised before."""
    try:
        before = Conditions(config.directories.state).update(key, raised)
    except OSError as exc:
        log.warning(
            "condition state not kept",
            condition=key,
            error=describe_os_error(exc, config.directories.state),
        )
        before = True  # unsure: a clear too many beats a clear never sent
    if raised or before:
        events.publish(config, event)


# --------------------------------------------------------------------------- after a run


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
        _publish_condition(
            config,
            f"low_disk:{job.name}:{directory}",
            low,
            events.Event(
                kind=events.LOW_DISK,
                job=job.name,
                ok=not low,
                message=message,
                details={
                    "directory": str(directory),
                    "freeBytes": usage.free,
                    "totalBytes": usage.total,
                    "freePercent": round(percent, 2),
                    "thresholdPercent": wanted.warn_free_percent,
                    "thresholdBytes": wanted.warn_free_size,
                },
            ),
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
    _publish_condition(
        config,
        f"oss_usage:{job.name}:{bucket}",
        raised,
        events.Event(
            kind=events.OSS_USAGE,
            job=job.name,
            ok=not raised,
            message=message,
            details={
                "bucket": bucket,
                "usedBytes": used,
                "limitBytes": limit,
                "percent": round(percent, 2),
                "level": level,
                "warnPercent": warn_at,
                "objectCount": stat.object_count,
            },
        ),
    )


# --------------------------------------------------------------------------- retention guard


def dump_size(document: Mapping[str, Any]) -> int | None:
    """Returns the size of pg_dump's output a report records (before encryption), or None."""
    encryption = document.get("encryption")
    if isinstance(encryption, dict):
        plain = encryption.get("plaintextSizeBytes")
        return plain if isinstance(plain, int) and not isinstance(plain, bool) else None
    return _local_size(document)


def hold_retention(config: Config, job: JobConfig, current: Report) -> bool:
    """Returns True (retention must delete nothing) when `current` looks too small.

    Too small: its dump is under `suspicious_ratio` of the previous successful backup's of the
    same job and database, both in the same format and compression (sizes of pg_dump's output,
    before encryption; for a directory dump, the sum of its files). The report is marked
    (`retention.held`, `capacity.suspicious`), a warning logged and SUSPICIOUS_SIZE published;
    the first backup of normal size afterwards publishes its clearing.
    """
    wanted = job.capacity
    if wanted.suspicious_ratio <= 0:
        return False
    document = current.to_json()
    size = dump_size(document)
    key = f"suspicious_size:{job.name}:{current.database}"
    previous = next(
        (
            d
            for d in _successful_reports(
                config, job.name, current.database, 1, exclude=f"{current.stem}.json"
            )
        ),
        None,
    )
    if previous is None or size is None:
        return False
    before = dump_size(previous)
    same_kind = (
        previous.get("format", "custom") == job.dump.format
        and previous.get("compression", job.dump.compression) == job.dump.compression
    )
    if not before or not same_kind:
        return False
    ratio = size / before
    report_path = config.directories.reports / f"{current.stem}.json"
    if ratio >= wanted.suspicious_ratio:
        _publish_condition(
            config,
            key,
            False,
            events.Event(
                kind=events.SUSPICIOUS_SIZE,
                job=job.name,
                database=current.database,
                ok=True,
                message=(
                    f"the backup of {current.database} has a normal size again: "
                    f"{format_size(size)}, {ratio:.0%} of the previous one"
                ),
                report=document,
                report_path=report_path,
            ),
        )
        return False
    previous_name = f"{previous.get('local', {}).get('file', '')}".rsplit("/", 1)[-1]
    reason = (
        f"the newest backup is suspiciously small: {format_size(size)} ({size} bytes), "
        f"{ratio:.0%} of the previous successful one ({format_size(before)}, {before} bytes, "
        f"started {previous.get('startedAt', '?')}), under capacity.suspicious_ratio "
        f"{wanted.suspicious_ratio:g}; retention deleted nothing. Check the database and this "
        "dump; the next backup of normal size lets retention run again"
    )
    current.retention_held = reason
    current.capacity = {
        **(current.capacity or {}),
        "suspicious": {
            "sizeBytes": size,
            "previousSizeBytes": before,
            "previousReport": str(previous.get("id", "")),
            "previousStartedAt": previous.get("startedAt", ""),
            "previousFile": previous_name,
            "ratio": round(ratio, 4),
            "threshold": wanted.suspicious_ratio,
        },
    }
    log.warning(
        "retention held: the newest backup is suspiciously small",
        job=job.name,
        database=current.database,
        bytes=size,
        previous_bytes=before,
        ratio=round(ratio, 4),
    )
    _publish_condition(
        config,
        key,
        True,
        events.Event(
            kind=events.SUSPICIOUS_SIZE,
            job=job.name,
            database=current.database,
            ok=False,
            message=reason,
            report=current.to_json(),
            report_path=report_path,
            details={"sizeBytes": size, "previousSizeBytes": before, "ratio": round(ratio, 4)},
        ),
    )
    return True
