"""The size guard of retention: a suspiciously small newest backup keeps every old one.

A newest backup under `capacity.suspicious_ratio` of the previous successful one of the same job
and database (same format and compression; sizes of pg_dump's output, before encryption; for a
directory dump, the sum of its files) holds retention: the report is marked (`retention.held`,
`capacity.suspicious`), a warning logged and SUSPICIOUS_SIZE published; the first backup of
normal size afterwards publishes its clearing. `check_size` decides; `hold_retention` acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from db_backup.backup.conditions import publish_condition
from db_backup.backup.history import JobHistory
from db_backup.backup.space import local_size
from db_backup.config import Config, JobConfig
from db_backup.observe import events
from db_backup.reports.model import Report
from db_backup.util.units import format_size

log = structlog.get_logger("db_backup.backup.sizeguard")


def dump_size(document: Mapping[str, Any]) -> int | None:
    """Returns the size of pg_dump's output a report records (before encryption), or None."""
    encryption = document.get("encryption")
    if isinstance(encryption, dict):
        plain = encryption.get("plaintextSizeBytes")
        return plain if isinstance(plain, int) and not isinstance(plain, bool) else None
    return local_size(document)


@dataclass(frozen=True)
class SizeCheck:
    """The size guard's verdict on the newest backup, with the numbers behind it."""

    size: int
    previous_size: int
    ratio: float  # size / previous_size
    hold: bool  # True: too small, retention must delete nothing


def check_size(
    current: Mapping[str, Any], previous: Mapping[str, Any] | None, *, threshold: float
) -> SizeCheck | None:
    """Returns the verdict on `current`'s size against `previous`, or None when none is due.

    None: the guard is off (`threshold` <= 0), there is no previous successful backup, a size is
    unknown or the previous one was 0, or the previous backup was made in another format or
    compression (its size says nothing of this one's).
    """
    if threshold <= 0 or previous is None:
        return None
    size, before = dump_size(current), dump_size(previous)
    if size is None or not before:
        return None
    same_kind = previous.get("format", "custom") == current.get("format") and previous.get(
        "compression", current.get("compression")
    ) == current.get("compression")
    if not same_kind:
        return None
    ratio = size / before
    return SizeCheck(size, before, ratio, hold=ratio < threshold)


def held_reason(check: SizeCheck, previous: Mapping[str, Any], threshold: float) -> str:
    """Returns the report's `retention.held` text (and the alert's message) for a held check."""
    size, before = check.size, check.previous_size
    return (
        f"the newest backup is suspiciously small: {format_size(size)} ({size} bytes), "
        f"{check.ratio:.0%} of the previous successful one ({format_size(before)}, {before} "
        f"bytes, started {previous.get('startedAt', '?')}), under capacity.suspicious_ratio "
        f"{threshold:g}; retention deleted nothing. Check the database and this dump; the next "
        "backup of normal size lets retention run again"
    )


def suspicious_record(
    check: SizeCheck, previous: Mapping[str, Any], threshold: float
) -> dict[str, Any]:
    """Returns the report's `capacity.suspicious` object for a held check."""
    local = previous.get("local")
    previous_file = str(local.get("file", "") if isinstance(local, dict) else "")
    return {
        "sizeBytes": check.size,
        "previousSizeBytes": check.previous_size,
        "previousReport": str(previous.get("id", "")),
        "previousStartedAt": previous.get("startedAt", ""),
        "previousFile": previous_file.rsplit("/", 1)[-1],
        "ratio": round(check.ratio, 4),
        "threshold": threshold,
    }


def hold_retention(config: Config, job: JobConfig, current: Report, history: JobHistory) -> bool:
    """Returns True (retention must delete nothing) when `current` looks too small.

    Then the report is marked, a warning logged and SUSPICIOUS_SIZE published; a backup of
    normal size publishes the condition's clearing (once, when it was raised before).
    """
    threshold = job.capacity.suspicious_ratio
    if threshold <= 0:
        return False  # off: not even the history is read
    document = current.to_json()
    key = f"{current.stem}.json"
    previous = next(iter(history.successful(current.database, 1, exclude=key)), None)
    check = check_size(document, previous, threshold=threshold)
    if check is None or previous is None:
        return False
    condition = f"suspicious_size:{job.name}:{current.database}"
    report_path = config.directories.reports / key
    if not check.hold:
        message = (
            f"the backup of {current.database} has a normal size again: "
            f"{format_size(check.size)}, {check.ratio:.0%} of the previous one"
        )
        cleared = _event(job, current, True, message, document, report_path)
        publish_condition(config, condition, False, cleared)
        return False
    reason = held_reason(check, previous, threshold)
    current.retention_held = reason
    current.capacity = {
        **(current.capacity or {}),
        "suspicious": suspicious_record(check, previous, threshold),
    }
    log.warning(
        "retention held: the newest backup is suspiciously small",
        job=job.name,
        database=current.database,
        bytes=check.size,
        previous_bytes=check.previous_size,
        ratio=round(check.ratio, 4),
    )
    details = {
        "sizeBytes": check.size,
        "previousSizeBytes": check.previous_size,
        "ratio": round(check.ratio, 4),
    }
    raised = _event(job, current, False, reason, current.to_json(), report_path, details)
    publish_condition(config, condition, True, raised)
    return True


def _event(
    job: JobConfig,
    current: Report,
    ok: bool,
    message: str,
    document: dict[str, Any],
    report_path: Path,
    details: dict[str, Any] | None = None,
) -> events.Event:
    """Returns the SUSPICIOUS_SIZE event of `current` (raised, or cleared when `ok`)."""
    return events.Event(
        kind=events.SUSPICIOUS_SIZE,
        job=job.name,
        database=current.database,
        ok=ok,
        message=message,
        report=document,
        report_path=report_path,
        details=details or {},
    )
